"""The paired bootstrap interval on hand-made data whose answer is known, and the per-sentence
dev records it is computed from."""
from __future__ import annotations

import math
import statistics

import pytest

from orchestration.training.dev_instances import PAIRED_METRICS, compare_dev, read_instances, \
    sentence_records, write_instances
from orchestration.eval.paired_ci import format_table, paired_bootstrap_ci, paired_report
from reward.dev_reward import dev_reward
from rollout.types import Source


def test_a_constant_difference_has_a_zero_width_interval_at_that_difference():
    before = [0.1 * i for i in range(50)]
    ci = paired_bootstrap_ci(before, [b + 0.25 for b in before])
    assert ci.diff == pytest.approx(0.25)
    assert ci.low == pytest.approx(0.25) and ci.high == pytest.approx(0.25)
    assert ci.excludes_zero and ci.n == 50


def test_pairing_removes_the_spread_between_sentences():
    # sentences differ wildly, the change is the same small one: only a paired interval sees it
    before = [float(10 * (i % 7)) for i in range(40)]
    after = [b + 0.5 + (0.1 if i % 2 else -0.1) for i, b in enumerate(before)]
    ci = paired_bootstrap_ci(before, after, seed=3)
    assert ci.excludes_zero and 0.4 < ci.low < 0.5 < ci.high < 0.6


def test_a_zero_mean_difference_gives_an_interval_around_zero_of_the_normal_width():
    n = 200
    diffs = [1.0 if i % 2 else -1.0 for i in range(n)]          # mean 0, sd 1
    before = [5.0] * n
    ci = paired_bootstrap_ci(before, [5.0 + d for d in diffs], n_boot=20000, seed=1)
    assert ci.diff == pytest.approx(0.0) and not ci.excludes_zero
    half = 1.96 * statistics.pstdev(diffs) / math.sqrt(n)        # 0.139: the normal approximation
    assert ci.low == pytest.approx(-half, abs=0.02) and ci.high == pytest.approx(half, abs=0.02)


def test_a_shift_much_larger_than_the_noise_excludes_zero_and_a_smaller_one_does_not():
    n = 100
    noise = [((i * 37) % 11 - 5) / 5.0 for i in range(n)]         # mean 0, in [-1, 1]
    big = paired_bootstrap_ci([0.0] * n, [1.0 + e for e in noise])
    small = paired_bootstrap_ci([0.0] * n, [0.02 + e for e in noise])
    assert big.excludes_zero and big.low > 0.8
    assert not small.excludes_zero and small.low < 0.0 < small.high


def test_the_same_seed_gives_the_same_interval_and_pairs_with_a_missing_side_are_left_out():
    before, after = [1.0, 2.0, None, 4.0, 3.0], [1.5, 2.5, 9.0, float("nan"), 2.0]
    a, b = paired_bootstrap_ci(before, after, seed=7), paired_bootstrap_ci(before, after, seed=7)
    assert a == b and a.n == 3
    assert a.before == pytest.approx(2.0) and a.after == pytest.approx(2.0) and a.diff == pytest.approx(0.0)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="equal lengths"):
        paired_bootstrap_ci([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap_ci([1.0], [1.0], confidence=1.0)
    empty = paired_bootstrap_ci([None], [1.0])
    assert empty.n == 0 and math.isnan(empty.diff)


def test_paired_report_matches_sentences_by_index_not_by_order():
    before = [{"index": i, "q": float(i)} for i in range(10)]
    after = [{"index": i, "q": float(i) + 1.0} for i in reversed(range(10))]
    rep = paired_report(before, after, ["q"])
    assert rep["q"].diff == pytest.approx(1.0) and rep["q"].low == pytest.approx(1.0)
    with pytest.raises(ValueError, match="different sentences"):
        paired_report(before, after[:-1], ["q"])
    with pytest.raises(ValueError, match="twice"):
        paired_report(before + before[:1], after, ["q"])
    table = format_table(rep, {"q": "quality"})
    assert "quality" in table and "[+1.000, +1.000] *" in table


def _traj(pieces: list[str], delays: list[int], source_length: int, chunk: int = 3) -> dict:
    return {"pieces": pieces, "delays": delays, "source_length": source_length,
            "hypothesis": " ".join(p for p in pieces if p), "meta": {"chunk_size": chunk}}


def test_sentence_records_carry_simuleval_fields_and_each_sentences_metrics(tmp_path):
    sources = [Source(0, "a b c d e f", "de", "en", "x y z w"), Source(1, "a b c", "de", "en", "x y")]
    trajs = [_traj(["", "x y", "z w"], [6, 6, 6, 6], 6),            # waited one turn, wrote at the end
             _traj(["", "", ""], [], 3)]                             # empty hypothesis
    rows = sentence_records(sources, trajs, [50.0, 0.0], scale=100.0, unit="word")
    first, second = rows
    for key in ("index", "source_length", "delays", "prediction", "reference", "quality", "AL", "LAAL",
                "wait_share", "length_ratio", "reward"):
        assert key in first
    assert first["prediction"] == "x y z w" and first["delays"] == [6, 6, 6, 6]
    assert first["AL"] == pytest.approx(6.0)                         # tau = 1: d_1 - 0
    assert first["wait_share"] == pytest.approx(0.5) and first["length_ratio"] == pytest.approx(1.0)
    assert first["reward"] == pytest.approx(2.0 * 0.5 - 6.0 / 6)
    assert second["AL"] is None and second["empty"] and second["wait_share"] == 1.0
    assert second["reward"] == pytest.approx(dev_reward(0.0, None, source_length=3, quality_scale=100.0)) == -1.0

    write_instances(tmp_path, "before", rows)
    write_instances(tmp_path, "after", [{**r, "quality": r["quality"] + 1.0} for r in rows])
    assert read_instances(tmp_path / "dev" / "before" / "instances.jsonl") == rows
    rep = compare_dev(tmp_path)
    assert list(rep) == list(PAIRED_METRICS)
    assert rep["quality"].diff == pytest.approx(1.0) and rep["AL"].n == 1 and rep["reward"].diff == 0.0
    assert compare_dev(tmp_path, after="step-5") is None
