"""Latency metrics agree with SimulEval 1.1.4's own scorers, the oracle, to 1e-9."""
from __future__ import annotations

import json
import random
import warnings
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reward.latency import (
    METRICS, LatencyScores, al, ap, corpus_latency, dal, elapsed_from_compute, laal, score_instance,
    shortform_degeneracy, yaal)
from reward.text_metrics import (
    bleu_tokenizer, corpus_bleu, corpus_chrf, count_units, reference_length, sentence_chrf)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # pydub (imported by simuleval) warns about ffmpeg
    from simuleval.evaluator.instance import LogInstance
    from simuleval.evaluator.scorers import latency_scorer as ls

ORACLE = {"AL": ls.ALScorer(), "LAAL": ls.LAALScorer(), "AP": ls.APScorer(), "DAL": ls.DALScorer()}


def oracle(delays, source_length, reference_length=None) -> dict[str, float]:
    """SimulEval's scores of one instance: the scorers read delays, source_length, reference
    and reference_length (reference None means "no reference": |Y| = len(delays))."""
    ins = SimpleNamespace(delays=list(delays), source_length=source_length,
                          reference=None if reference_length is None else "<ref>",
                          reference_length=reference_length)
    return {name: scorer.compute(ins) for name, scorer in ORACLE.items()}


def ours(delays, source_length, reference_length=None) -> dict[str, float]:
    res = score_instance(delays, source_length, reference_length)
    assert res is not None
    return res.as_dict()


def assert_close(got: dict, want: dict) -> None:
    for name in ("AL", "LAAL", "AP", "DAL"):
        assert got[name] == pytest.approx(want[name], abs=1e-9, rel=0), name


def random_instance(rng: random.Random):
    src = rng.randint(1, 30)
    # Targets shorter and longer than the source (over-generation), single units included.
    hyp = rng.choice([1, 1, rng.randint(1, 2 * src + 5)])
    kind = rng.random()
    if kind < 0.5:  # monotone integer delays, sometimes past the end of the source
        delays = sorted(rng.randint(0, src + rng.choice([0, 0, 3])) for _ in range(hyp))
    elif kind < 0.65:  # first write only after more than the whole source
        delays = sorted(rng.randint(src + 1, src + 6) for _ in range(hyp))
    elif kind < 0.8:  # speech-like: milliseconds as floats
        delays = sorted(rng.uniform(0, src * 1.2) for _ in range(hyp))
    else:  # non-monotone, as a buggy agent could log
        delays = [rng.randint(0, src + 2) for _ in range(hyp)]
    ref = None if rng.random() < 0.3 else rng.randint(1, 2 * src + 5)
    return delays, src, ref


def test_random_instances_match_simuleval():
    rng = random.Random(20240611)
    seen = {"no_ref": 0, "long_target": 0, "late_first": 0, "past_source": 0, "single": 0}
    for _ in range(400):
        delays, src, ref = random_instance(rng)
        assert_close(ours(delays, src, ref), oracle(delays, src, ref))
        seen["no_ref"] += ref is None
        seen["long_target"] += len(delays) > src
        seen["late_first"] += delays[0] > src
        seen["past_source"] += max(delays) > src
        seen["single"] += len(delays) == 1
    assert all(n >= 10 for n in seen.values()), seen


def test_functions_match_score_instance():
    delays, src, ref = [1, 3, 3, 6, 6], 6, 4
    res = score_instance(delays, src, ref)
    assert res == LatencyScores(AL=al(delays, src, ref), LAAL=laal(delays, src, ref),
                                AP=ap(delays, src, ref), DAL=dal(delays, src), YAAL=yaal(delays, src, ref))
    elapsed = elapsed_from_compute(delays, [0.1, 0.2, 0.2, 0.5, 0.9], 400.0)
    assert elapsed == pytest.approx([1.25, 3.5, 3.5, 7.25, 8.25])
    res = score_instance(delays, src, ref, elapsed)
    assert (res.AL_CA, res.LAAL_CA, res.YAAL_CA) == (al(elapsed, src, ref), laal(elapsed, src, ref),
                                                     yaal(elapsed, src, ref))


@pytest.mark.parametrize("n,k", [(10, 1), (10, 3), (7, 7), (12, 5)])
def test_wait_k_equal_lengths_has_al_k(n, k):
    delays = [min(k + i, n) for i in range(n)]
    assert al(delays, n) == pytest.approx(k)
    assert al(delays, n, reference_length=n) == pytest.approx(k)
    assert laal(delays, n, reference_length=n) == pytest.approx(k)


def test_hand_computed_values():
    # |X| = 3, gamma = 1: g' = 2, 3, 4 -> DAL = (2 + 2 + 2) / 3; tau = 3 -> AL = (2 + 1 + 1) / 3.
    assert dal([2, 2, 3], 3) == pytest.approx(2.0)
    assert al([2, 2, 3], 3) == pytest.approx(4 / 3)
    assert ap([2, 2, 3], 3) == pytest.approx(7 / 9)
    # With a reference of 6 units gamma = 2: AL = (2 + 1.5 + 2) / 3; AP divides by |X| * 6.
    assert al([2, 2, 3], 3, reference_length=6) == pytest.approx(5.5 / 3)
    assert ap([2, 2, 3], 3, reference_length=6) == pytest.approx(7 / 18)
    # LAAL uses the longer of hypothesis (3) and reference (2): gamma = 1, same as AL without ref.
    assert laal([2, 2, 3], 3, reference_length=2) == pytest.approx(4 / 3)
    # A first write after the whole source: AL and LAAL are that delay, DAL is not cut short.
    assert al([5, 5], 3) == 5 and laal([5, 5], 3, 9) == 5
    assert dal([5, 5], 3) == pytest.approx((5 + 6.5 - 1.5) / 2)
    # Offline translation: everything written after reading all of |X|.
    assert al([4, 4, 4, 4, 4], 4) == 4


def test_empty_hypothesis_is_skipped_in_corpus_means():
    assert score_instance([], 5, 3) is None
    with pytest.raises(ValueError):
        al([], 5)
    a = score_instance([1, 2, 3], 3)
    b = score_instance([3, 3], 3, 4)
    means, scored, skipped = corpus_latency([a, None, b, None])
    assert (scored, skipped) == (2, 2)
    assert means["AL"] == pytest.approx((a.AL + b.AL) / 2)
    assert means["DAL"] == pytest.approx((a.DAL + b.DAL) / 2)
    assert corpus_latency([None]) == ({m: None for m in METRICS}, 0, 1)
    # a metric an instance has no value for is left out of that mean only
    assert b.YAAL is None and means["YAAL"] == a.YAAL and means["AL_CA"] is None


def test_yaal_hand_computed():
    # |X| = 4, |Y| = max(4, 4): gamma = 1; units before the end: d = 1, 2, 3 -> (1 + 1 + 1) / 3
    assert yaal([1, 2, 3, 4], 4, 4) == pytest.approx(1.0)
    assert yaal([1, 2, 3, 4, 4], 4, 4) == pytest.approx((1 + 1.2 + 1.4) / 3)   # |Y| = 5: gamma 5/4
    assert yaal([4, 4], 4, 2) is None            # nothing written while the source arrived
    assert yaal([2, 5], 4) == pytest.approx(2.0)


def test_undefined_lengths_raise():
    with pytest.raises(ValueError):
        al([1], 0)
    with pytest.raises(ValueError):
        ap([1], 3, reference_length=0)


delays_st = st.lists(st.integers(0, 40), min_size=1, max_size=40)


@settings(max_examples=150, deadline=None)
@given(delays=delays_st, src=st.integers(1, 30), ref=st.none() | st.integers(1, 60),
       monotone=st.booleans())
def test_property_matches_simuleval_and_laal_not_below_al(delays, src, ref, monotone):
    if monotone:
        delays = sorted(delays)
    got = ours(delays, src, ref)
    assert_close(got, oracle(delays, src, ref))
    # LAAL's gamma is never smaller than AL's, so it subtracts less per step.
    assert got["LAAL"] >= got["AL"] - 1e-9


# --- units, against SimulEval's own counting -------------------------------------------------

@pytest.mark.parametrize("unit,ref", [
    ("word", "a b  c"), ("word", " a b\n"), ("word", "one"), ("char", "我 是 学生\n"),
    ("char", "  你好。"), ("word", "")])
def test_reference_length_matches_simuleval(unit, ref):
    ins = LogInstance('{"index": 0, "reference": %s}' % json.dumps(ref), latency_unit=unit)
    assert reference_length(ref, unit) == ins.reference_length


def test_count_units():
    assert count_units("  the cat\tsat \n", "word") == 3
    assert count_units("", "word") == 0 and count_units("", "char") == 0
    # SimulEval's char unit drops ASCII spaces only.
    assert count_units("我是 学生。", "char") == 5
    assert count_units("ab\tc", "char") == 4
    with pytest.raises(ValueError):
        count_units("x", "spm")


def test_text_metrics_wrap_sacrebleu():
    import sacrebleu

    hyps, refs = ["the cat sat on the mat", "hello there"], ["the cat sat on a mat", "hello there"]
    assert corpus_bleu(hyps, refs) == sacrebleu.corpus_bleu(hyps, [refs], tokenize="13a").score
    assert corpus_chrf(hyps, refs) == sacrebleu.corpus_chrf(hyps, [refs]).score
    assert sentence_chrf(hyps[0], refs[0]) == sacrebleu.sentence_chrf(hyps[0], [refs[0]]).score
    zh_h, zh_r = ["我是一个学生。"], ["我是学生。"]
    assert bleu_tokenizer("char") == "zh" and bleu_tokenizer("word") == "13a"
    assert corpus_bleu(zh_h, zh_r, "zh") == sacrebleu.corpus_bleu(zh_h, [zh_r], tokenize="zh").score
    with pytest.raises(ValueError):
        corpus_bleu(["a"], [])


# --- OmniSTEval 0.1.10 (the IWSLT 2026 scorer) as the oracle of YAAL, CA and degeneracy ------


def _omni_instance(delays, elapsed, source_length, reference_length):
    from omnisteval.data import Instance

    ref = " ".join(["w"] * reference_length) if reference_length else "w"
    return Instance(index=0, prediction=" ".join(["x"] * len(delays)), reference=ref,
                    source_length=source_length, emission_cu=list(delays),
                    emission_ca=list(elapsed), latency_unit="word")


def test_yaal_ca_and_degeneracy_match_omnisteval():
    from omnisteval import scoring

    rng = random.Random(7)
    cases, checked = [], 0
    for _ in range(400):
        src = rng.randint(1, 25)
        hyp = rng.randint(1, 2 * src + 4)
        delays = sorted(rng.randint(1, src) for _ in range(hyp))
        compute = sorted(rng.uniform(0, 3) for _ in range(hyp))
        ref = rng.randint(1, 2 * src + 4)
        elapsed = elapsed_from_compute(delays, compute, rng.choice([200.0, 400.0, 1000.0]))
        cases.append((delays, elapsed, src, ref))
        ins = _omni_instance(delays, elapsed, src, ref)
        res = score_instance(delays, src, ref, elapsed)
        want = {"YAAL": scoring.YAALScorer().compute(ins),
                "YAAL_CA": scoring.YAALScorer(computation_aware=True).compute(ins),
                "AL_CA": scoring.ALScorer(computation_aware=True).compute(ins),
                "LAAL_CA": scoring.LAALScorer(computation_aware=True).compute(ins)}
        for name, value in want.items():
            got = getattr(res, name)
            if value is None:
                assert got is None, name
            else:
                assert got == pytest.approx(value, abs=1e-9, rel=0), name
                checked += 1
    assert checked > 1000
    instances = [_omni_instance(d, e, s, r) for d, e, s, r in cases[:60]]
    want = scoring.ShortformDegeneracyScorer()(instances)
    got = shortform_degeneracy((d, s, r) for d, _e, s, r in cases[:60])
    assert got == pytest.approx({"SWF": want["swf"], "EFSW": want["efsw"], "DSPTV": want["dsptv"],
                                 "degenerate_policy": want["degenerate_policy"]}, abs=1e-9)
