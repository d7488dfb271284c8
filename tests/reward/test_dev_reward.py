"""The dev reward, r = λ·q/Q − max(l, m)/|X|, on hand-computed cases."""
from __future__ import annotations

import pytest

from reward.dev_reward import dev_reward


def test_quality_is_put_on_a_zero_to_one_scale_and_latency_per_source_unit():
    # chrF 60 of 100, λ=2 → 1.2; AL 4 over a 10-unit source → 0.4
    assert dev_reward(60.0, 4.0, source_length=10, chunk_size=3, lam=2.0, quality_scale=100.0) == pytest.approx(0.8)
    # COMET 0.6 on its 0-1 scale gives the same quality term
    assert dev_reward(0.6, 4.0, source_length=10, chunk_size=3, lam=2.0, quality_scale=1.0) == pytest.approx(0.8)


def test_latency_is_floored_at_the_chunk_size():
    # writing everything early (AL -2) is no better than one chunk of lag
    early = dev_reward(50.0, -2.0, source_length=6, chunk_size=3, lam=1.0, quality_scale=100.0)
    assert early == pytest.approx(0.5 - 3 / 6)
    assert early == dev_reward(50.0, 3.0, source_length=6, chunk_size=3, lam=1.0, quality_scale=100.0)


def test_an_empty_translation_is_as_late_as_an_offline_one():
    assert dev_reward(0.0, None, source_length=8, chunk_size=3, lam=2.0, quality_scale=100.0) == -1.0


def test_bad_lengths_are_refused():
    with pytest.raises(ValueError):
        dev_reward(1.0, 1.0, source_length=0, chunk_size=3, lam=1.0, quality_scale=100.0)
