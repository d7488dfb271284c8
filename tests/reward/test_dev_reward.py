"""The dev reward, r = 2·q/Q − max(LAAL, 0)/|X|: a fixed yardstick, on hand-computed cases."""
from __future__ import annotations

import inspect

import pytest

from orchestration.training.dev_eval import evaluate_dev
from orchestration.training.dev_instances import sentence_records
from reward import dev_reward as dev_module
from reward.dev_reward import DEV_FLOOR, DEV_LAMBDA, DEV_LATENCY, dev_latency, dev_reward
from reward.latency import al, laal


def test_the_yardstick_constants():
    assert (DEV_LAMBDA, DEV_LATENCY, DEV_FLOOR) == (2.0, "laal", 0.0)


def test_quality_is_put_on_a_zero_to_one_scale_and_latency_per_source_unit():
    # chrF 60 of 100, λ=2 → 1.2; LAAL 4 over a 10-unit source → 0.4
    assert dev_reward(60.0, 4.0, source_length=10, quality_scale=100.0) == pytest.approx(0.8)
    # COMET 0.6 on its 0-1 scale gives the same quality term
    assert dev_reward(0.6, 4.0, source_length=10, quality_scale=1.0) == pytest.approx(0.8)


def test_no_run_setting_enters_the_dev_reward():
    """Neither λ, the chunk size, the latency metric nor the floor of a run can be passed."""
    for fn in (dev_reward, dev_latency, sentence_records, evaluate_dev):
        params = set(inspect.signature(fn).parameters)
        assert not params & {"lam", "chunk_size", "latency_metric", "latency_floor", "truncate", "mode"}, fn
    # and nothing in the module reads the reward settings
    assert "RewardSettings" not in inspect.getsource(dev_module)


def test_waiting_costs_what_it_costs_below_the_old_chunk_floor():
    # lags of 1, 2 and 3 source units are told apart (the old floor at m = 3 made them equal)
    r = [dev_reward(50.0, lag, source_length=6, quality_scale=100.0) for lag in (1.0, 2.0, 3.0)]
    assert r == pytest.approx([1.0 - 1 / 6, 1.0 - 2 / 6, 1.0 - 3 / 6])
    # a negative lag (writing ahead of the source) earns nothing over no lag at all
    assert dev_reward(50.0, -2.0, source_length=6, quality_scale=100.0) == dev_reward(
        50.0, 0.0, source_length=6, quality_scale=100.0) == pytest.approx(1.0)


def test_the_dev_latency_is_laal():
    delays, src, ref = [3, 3, 6, 6], 6, 4
    assert dev_latency(delays, src, ref) == pytest.approx(laal(delays, src, ref))
    assert dev_latency([], 6, 4) is None


def test_over_generation_does_not_raise_the_dev_reward():
    """Writing the translation and then more at the same delays: AL falls (the old yardstick,
    floored at the chunk, only tied it); the LAAL of the dev reward does not fall."""
    src, ref = 6, 4
    honest = [3, 3, 6, 6]                      # 4 words, the reference length
    padded = [3, 3, 6, 6, 6, 6, 6, 6]          # the same 4 words and 4 more at the end
    early = [3] * 8                            # 8 words written after the first chunk
    assert al(padded, src, ref) == al(honest, src, ref)     # tau stops at the first full-source write
    assert al(early, src, ref) < al(honest, src, ref)      # AL rewards running ahead with more words
    assert dev_latency(padded, src, ref) >= dev_latency(honest, src, ref)
    q = 60.0   # the same quality: only the latency term differs
    honest_r = dev_reward(q, dev_latency(honest, src, ref), source_length=src, quality_scale=100.0)
    assert dev_reward(q, dev_latency(padded, src, ref), source_length=src, quality_scale=100.0) <= honest_r
    # 8 early words over a 4-word reference: LAAL (|Y| = 8) = 3 - 3.5·6/8 = 0.375, AL = 3 - 3.5·6/4 = -2.25
    assert dev_latency(early, src, ref) == pytest.approx(0.375) and al(early, src, ref) == pytest.approx(-2.25)
    assert dev_latency(early, src, ref) > 0   # no negative lag to cash in


def test_an_empty_translation_is_as_late_as_an_offline_one():
    assert dev_reward(0.0, None, source_length=8, quality_scale=100.0) == -1.0
    offline = dev_latency([8] * 5, 8, 5)
    assert offline == 8 and dev_reward(0.0, offline, source_length=8, quality_scale=100.0) == -1.0


def test_bad_lengths_are_refused():
    with pytest.raises(ValueError):
        dev_reward(1.0, 1.0, source_length=0, quality_scale=100.0)
    with pytest.raises(ValueError):
        dev_reward(1.0, 1.0, source_length=5, quality_scale=0.0)
