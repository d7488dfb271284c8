"""The scoreboard's pure parts: interpolation on the wait-k path (non-monotone, outside the
range, exactly on a k), sacrebleu's corpus scores from summed per-sentence statistics, and the
paired bootstrap (a clearly better point, a copy of a wait-k setting, seeds, the pairing)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import sacrebleu

from orchestration.eval.curve import (
    curve_at, format_scoreboard, resample_scores, scoreboard, scoreboard_report, setting_stats, _counts)
from reward.text_metrics import corpus_bleu, corpus_chrf
from tests.orchestration.eval.curve_data import instances, record, references

NAN = float("nan")


# --- interpolation -----------------------------------------------------------------------------


def test_curve_interpolates_between_neighbouring_k():
    # k = 1, 3, 5 at latencies 1, 3, 5 and BLEU 10, 20, 24
    value, segment, side = curve_at([1, 3, 5], [10, 20, 24], [2, 4, 1.5])
    assert value.tolist() == pytest.approx([15.0, 22.0, 12.5])   # 10 + (2-1)/(3-1)·10, 20 + ½·4, 10 + ¼·10
    assert segment.tolist() == [0, 1, 0] and side.tolist() == [0, 0, 0]


def test_a_point_exactly_on_a_wait_k_point_gets_its_quality_exactly():
    lat, qual = [1.1, 3.7, 5.3], [10.1, 20.7, 24.3]
    value, _, side = curve_at(lat, qual, [1.1, 3.7, 5.3])
    assert value.tolist() == qual and side.tolist() == [0, 0, 0]   # exact, not approximately


def test_non_monotone_path_takes_the_best_segment():
    # k=1 over-generates: higher latency (4) and lower quality (5) than k=2 (2, 10)
    lat, qual = [4, 2, 3, 5], [5, 10, 15, 20]
    value, segment, _ = curve_at(lat, qual, [3.5, 2.5, 4.0, 2.0])
    # x=3.5: segment k1-k2 gives 5 + (3.5-4)/(2-4)·5 = 6.25, segment k3-k4 gives 15 + ¼·5 = 16.25
    # x=2.5: k1-k2 gives 8.75, k2-k3 gives 12.5; x=4: k1 itself (5) against k3-k4's 17.5
    # x=2: k2 (10) on both segments through it, k1-k2 and k2-k3
    assert value.tolist() == pytest.approx([16.25, 12.5, 17.5, 10.0])
    assert segment.tolist()[:3] == [2, 1, 2]


def test_equal_latencies_take_the_better_point():
    value, segment, _ = curve_at([1, 3, 3, 5], [10, 18, 22, 24], [3.0])
    assert value[0] == 22.0 and segment[0] == 1


def test_outside_the_range_there_is_no_curve():
    value, segment, side = curve_at([4, 2, 3, 5], [5, 10, 15, 20], [1.99, 5.01, NAN])
    assert np.isnan(value).all() and segment.tolist() == [-1, -1, -1]
    assert side.tolist() == [-1, 1, 2]          # below, above, undefined latency


def test_curve_rows_are_independent():
    lat = np.array([[1, 3], [2, 6]])
    qual = np.array([[10, 20], [0, 40]])
    value, _, side = curve_at(lat, qual, np.array([2.0, 1.0]))
    assert value[0] == 15.0 and np.isnan(value[1]) and side.tolist() == [0, -1]


# --- summed statistics -------------------------------------------------------------------------


def _mixed_rows(refs: list[str]) -> list[dict]:
    rng = np.random.default_rng(3)
    rows = [record(i, r, 2 + i % 3, (i % 7) / 7, rng=rng, extra_words=i % 2) for i, r in enumerate(refs)]
    rows[4] = {**rows[4], "prediction": "", "delays": []}          # an empty prediction
    return rows


def test_summed_statistics_equal_sacrebleu_corpus_scores(tmp_path):
    refs = references(30, seed=5)
    ins = instances(tmp_path, "mixed", _mixed_rows(refs))
    stats = setting_stats(ins, "word")
    hyps = [i.prediction for i in ins]
    ones = resample_scores(stats, np.ones((1, len(ins)), dtype=int), "word")
    assert abs(ones["BLEU"][0] - corpus_bleu(hyps, refs)) < 1e-9
    assert abs(ones["chrF"][0] - corpus_chrf(hyps, refs)) < 1e-9
    # a resample with repeats is the corpus of those sentences, as sacrebleu scores it from text
    idx = np.random.default_rng(0).integers(0, len(ins), size=len(ins))
    counts = np.bincount(idx, minlength=len(ins))[None, :]
    got = resample_scores(stats, counts, "word")
    assert got["BLEU"][0] == pytest.approx(sacrebleu.corpus_bleu([hyps[i] for i in idx], [[refs[i] for i in idx]]).score,
                                           abs=1e-9)
    assert got["chrF"][0] == pytest.approx(sacrebleu.corpus_chrf([hyps[i] for i in idx], [[refs[i] for i in idx]]).score,
                                           abs=1e-9)
    # latency: the mean over the drawn non-empty sentences
    laal = [ins[i].scores.LAAL for i in idx if ins[i].scores is not None]
    assert got["LAAL"][0] == pytest.approx(math.fsum(laal) / len(laal), abs=1e-12)


def test_summed_statistics_in_characters(tmp_path):
    refs = ["我们今天去学校", "天气很好", "他在看书呢"]
    hyps = ["我们明天去学校", "天气好", "他在看书"]
    rows = [{"index": i, "source_length": 5, "delays": [min(1 + j, 5) for j in range(len(h))],
             "prediction": h, "reference": r} for i, (h, r) in enumerate(zip(hyps, refs))]
    stats = setting_stats(instances(tmp_path, "zh", rows, unit="char"), "char")
    ones = resample_scores(stats, np.ones((1, 3), dtype=int), "char")
    assert abs(ones["BLEU"][0] - corpus_bleu(hyps, refs, tokenize="zh")) < 1e-9
    assert abs(ones["chrF"][0] - corpus_chrf(hyps, refs)) < 1e-9


# --- the scoreboard and its bootstrap ----------------------------------------------------------


def _curve(tmp_path, refs, wrong=lambda i: 0.5, ks=(1, 3, 6)):
    """Wait-k settings whose quality rises with k; every sentence's latency rises with k."""
    return {k: instances(tmp_path, f"k{k}", [record(i, r, k, wrong(i) - 0.08 * k) for i, r in enumerate(refs)])
            for k in ks}


def test_a_clearly_better_point_has_an_interval_above_zero(tmp_path):
    refs = references(40)
    curve = _curve(tmp_path, refs)
    perfect = instances(tmp_path, "perfect", [record(i, r, 2, 0.0) for i, r in enumerate(refs)])
    [row] = scoreboard({"perfect": perfect}, curve, "word", replicates=300)
    for lat in ("LAAL", "AL"):
        for q in ("BLEU", "chrF"):
            d = row["distance"][lat][q]
            assert d["diff"] > 0 and d["low"] > 0 and d["excludes_zero"], (lat, q, d)
            assert d["low"] <= d["diff"] <= d["high"]
            assert d["bracket"] == [1, 3] and d["outside_share"] == 0.0 and d["n"] == 300
    assert row["quality"]["BLEU"] == pytest.approx(100.0)
    assert row["curve_ks"] == [1, 3, 6] and row["replicates"] == 300


def test_a_copy_of_a_wait_k_setting_sits_on_the_curve(tmp_path):
    refs = references(30)
    curve = _curve(tmp_path, refs)
    [row] = scoreboard({"copy": list(curve[3])}, curve, "word", replicates=200)
    for lat in ("LAAL", "AL"):
        for q in ("BLEU", "chrF"):
            d = row["distance"][lat][q]
            assert d["diff"] == 0.0 and d["low"] <= 0.0 <= d["high"] and not d["excludes_zero"]
            assert 3 in d["bracket"]


def test_outside_the_curve_is_reported_not_extrapolated(tmp_path):
    refs = references(20)
    curve = _curve(tmp_path, refs, ks=(3, 5))
    early = instances(tmp_path, "early", [record(i, r, 1, 0.0) for i, r in enumerate(refs)])
    late = instances(tmp_path, "late", [record(i, r, 12, 0.0) for i, r in enumerate(refs)])
    rows = {r["setting"]: r for r in scoreboard({"early": early, "late": late}, curve, "word", replicates=50)}
    assert rows["early"]["distance"]["LAAL"]["BLEU"] == {"diff": None, "outside": "below"}
    assert rows["late"]["distance"]["AL"]["chrF"] == {"diff": None, "outside": "above"}
    table = format_scoreboard(scoreboard_report({"early": early, "late": late}, curve, "word", replicates=50))
    assert "below range" in table and "above range" in table


def test_replicates_outside_the_range_are_counted_and_left_out(tmp_path):
    refs = references(30)
    curve = _curve(tmp_path, refs, ks=(2, 4))
    # wait-1 delays on 14 sentences, wait-3 on 16: the mean latency lies just above wait-2's, the
    # low end of the curve, and sentence by sentence on both sides of it, so some resamples fall below
    mixed = [record(i, r, 1 if i < 14 else 3, 0.1) for i, r in enumerate(refs)]
    [row] = scoreboard({"edge": instances(tmp_path, "edge", mixed)}, curve, "word", replicates=400)
    d = row["distance"]["LAAL"]["chrF"]
    assert d["diff"] is not None and d["bracket"] == [2, 4]
    assert 0.1 < d["outside_share"] < 0.6 and d["n"] == round(400 * (1 - d["outside_share"]))
    assert d["low"] <= d["diff"] <= d["high"]


def test_the_same_seed_gives_the_same_interval(tmp_path):
    refs = references(25)
    curve = _curve(tmp_path, refs, wrong=lambda i: (i % 5) / 5 + 0.2)
    point = {"p": instances(tmp_path, "p", [record(i, r, 2, (i % 5) / 5) for i, r in enumerate(refs)])}
    a = scoreboard(point, curve, "word", replicates=200, seed=7)
    b = scoreboard(point, curve, "word", replicates=200, seed=7)
    c = scoreboard(point, curve, "word", replicates=200, seed=8)
    assert a == b
    cell = lambda rows: rows[0]["distance"]["LAAL"]["chrF"]   # noqa: E731
    assert cell(a)["diff"] == cell(c)["diff"] and (cell(a)["low"], cell(a)["high"]) != (cell(c)["low"], cell(c)["high"])


def test_pairing_makes_the_interval_much_narrower(tmp_path):
    """Sentences range from easy to hard for every setting alike: with one resample for the
    point and the curve the difficulty cancels, with separate resamples it does not."""
    refs = references(40)
    hard = np.linspace(0.05, 0.95, 40)
    curve = {k: instances(tmp_path, f"k{k}", [record(i, r, k, hard[i] + s) for i, r in enumerate(refs)])
             for k, s in ((1, 0.15), (5, -0.15))}
    point = instances(tmp_path, "p", [record(i, r, 3, hard[i] - 0.05) for i, r in enumerate(refs)])
    [row] = scoreboard({"p": point}, curve, "word", replicates=500, seed=1)
    paired = row["distance"]["LAAL"]["chrF"]
    # unpaired, computed here: the point and the curve drawn from separate resamples
    rng = np.random.default_rng(1)
    p_stats, c_stats = setting_stats(point, "word"), [setting_stats(curve[k], "word") for k in (1, 5)]
    p = resample_scores(p_stats, _counts(rng, 500, 40), "word")
    c_counts = _counts(rng, 500, 40)
    c = [resample_scores(s, c_counts, "word") for s in c_stats]
    value, _, _ = curve_at(np.stack([x["LAAL"] for x in c], 1), np.stack([x["chrF"] for x in c], 1), p["LAAL"])
    diffs = (p["chrF"] - value)[~np.isnan(value)]
    low, high = np.percentile(diffs, [2.5, 97.5])
    assert paired["high"] - paired["low"] < 0.4 * (high - low), (paired, low, high)


def test_comet_joins_when_per_sentence_scores_are_given(tmp_path):
    refs = references(12)
    curve = _curve(tmp_path, refs, ks=(1, 6))
    point = instances(tmp_path, "p", [record(i, r, 3, 0.2) for i, r in enumerate(refs)])
    comet = {1: [0.5] * 12, 6: [0.7] * 12, "p": [0.8 if i % 2 else 0.6 for i in range(12)]}
    report = scoreboard_report({"p": point}, curve, "word", comet=comet, replicates=100)
    [row] = report["points"]
    lat = [c["latency"]["LAAL"] for c in report["curve"]]
    x = row["latency"]["LAAL"]
    want = 0.7 - (0.5 + (x - lat[0]) / (lat[1] - lat[0]) * 0.2)   # mean 0.7 against the line 0.5 → 0.7
    assert row["quality"]["COMET"] == pytest.approx(0.7)
    assert row["distance"]["LAAL"]["COMET"]["diff"] == pytest.approx(want)
    with pytest.raises(ValueError, match="COMET scores are missing"):
        scoreboard({"p": point}, curve, "word", comet={1: [0.5] * 12, 6: [0.7] * 12})


def test_bad_inputs_are_refused(tmp_path):
    refs = references(6)
    curve = _curve(tmp_path, refs, ks=(1, 4))
    with pytest.raises(ValueError, match="at least two k"):
        scoreboard({}, {1: curve[1]}, "word")
    short = instances(tmp_path, "short", [record(i, r, 2, 0.0) for i, r in enumerate(refs[:5])])
    with pytest.raises(ValueError, match="different sentences"):
        scoreboard({"short": short}, curve, "word")


def test_table_marks_intervals_that_exclude_zero(tmp_path):
    refs = references(30)
    curve = _curve(tmp_path, refs)
    report = scoreboard_report({"perfect": instances(tmp_path, "pf", [record(i, r, 2, 0.0) for i, r in enumerate(refs)]),
                                "copy": list(curve[3])}, curve, "word", replicates=100)
    lines = format_scoreboard(report).splitlines()
    assert lines[0].split() == ["setting", "BLEU", "LAAL", "len", "wait", "BLEU-curve@LAAL", "chrF-curve@LAAL",
                                "BLEU-curve@AL", "chrF-curve@AL"]
    # the perfect copy of the references writes exactly their length; no instance records waits
    assert next(p for p in report["points"] if p["setting"] == "perfect")["length_ratio"] == 1.0
    assert all(p["wait_share"] is None for p in report["points"])
    perfect = next(line for line in lines if line.startswith("perfect"))
    copy = next(line for line in lines if line.startswith("copy"))
    assert perfect.count("*") == 4 and "*" not in copy and "+0.00 [+0.00, +0.00]" in copy
    assert "k = 1, 3, 6" in lines[-1] and "30 sentences" in lines[-1]
