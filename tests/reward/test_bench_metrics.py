"""``launch.py bench metrics``: the perturbations by hand, and the JSON it writes on a tiny MQM file."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from sacrebleu.metrics import CHRF

import launch
from orchestration.bench.metrics import (
    PERTURBATIONS, SCORERS, append_other, change_stats, fragment, gate_share, other_outputs, ratio,
    repeat_half)
from orchestration.bench.reward import MQM_COLUMNS, MqmRow, kendall_tau_b
from reward.types import QualityItem

REPO = Path(__file__).resolve().parents[2]


def test_perturbations_by_hand():
    assert repeat_half("a b c d e") == "a b c d e a b"
    assert repeat_half("我们是中国人", "char") == "我们是中国人我们是"
    assert append_other("a b", "x y z") == "a b x y z"
    assert append_other("我们", "你好", "char") == "我们你好"
    assert fragment("The Prime Minister of India and Japan attacked") == \
        "The Prime Minister. of India and. Japan attacked"
    assert fragment("a b c") == "a b c"                       # no boundary after the last word
    assert fragment("我们是中国人民", "char") == "我们是。中国人。民"


def _row(seg: str, mt: str, system: str = "s") -> MqmRow:
    return MqmRow("ende", system, seg, 0.0, "src", mt, "ref")


def test_other_outputs_come_from_another_segment_and_are_seeded():
    rows = [_row("1", "a"), _row("1", "b", "t"), _row("2", "c"), _row("3", "d"), _row("3", "")]
    others = other_outputs(rows, seed=0)
    assert others == other_outputs(rows, seed=0)
    by_mt = {r.mt: r.seg_id for r in rows}
    assert all(o and by_mt[o] != r.seg_id for r, o in zip(rows, others))   # never itself, never empty
    with pytest.raises(Exception, match="append_other needs two"):
        other_outputs([_row("1", "a"), _row("1", "b")], seed=0)


def test_change_stats_and_ratio():
    st = change_stats([50.0, 40.0, 30.0], [40.0, 40.0, 20.0])
    assert st["mean_change"] == pytest.approx(-20 / 3) and st["relative_change"] == pytest.approx(-20 / 3 / 40)
    assert st["share_dropped"] == pytest.approx(2 / 3)
    assert ratio(-6.0, -3.0) == 2.0 and ratio(1.0, 0.0) is None and ratio(None, 1.0) is None


def test_gate_share_uses_the_reward_gate():
    items = [QualityItem("s", "a b c d", "a b"), QualityItem("s", "a b", "a b"), QualityItem("s", "", "a b"),
             QualityItem("s", "a b c d e", "a b")]
    assert gate_share(items) == pytest.approx(1 / 3)               # 2.0 is inside [0.5, 2], 2.5 is not
    assert gate_share(items, (0.5, 1.5)) == pytest.approx(2 / 3)


ROWS = [  # lp, system, seg_id, mqm, src, mt, ref
    ("ende", "A", "1", "0.0", "The cat sat on the mat.", "Die Katze saß auf der Matte.",
     "Die Katze saß auf der Matte."),
    ("ende", "B", "1", "-5.0", "The cat sat on the mat.", "Die Katze sitzt auf einer Decke.",
     "Die Katze saß auf der Matte."),
    ("ende", "A", "2", "-1.0", "Good morning to all of you.", "Guten Morgen an euch alle zusammen.",
     "Guten Morgen euch allen."),
    ("ende", "B", "2", "-9.0", "Good morning to all of you.", "Morgen gut alle.", "Guten Morgen euch allen."),
    ("ende", "C", "2", "-20.0", "Good morning to all of you.", "", "Guten Morgen euch allen."),
]


def test_bench_metrics_command_writes_every_scorer_and_the_ratios(tmp_path):
    data = tmp_path / "data" / "mqm_newstest2021"
    data.mkdir(parents=True)
    (data / "mqm_ende.tsv").write_text("\n".join("\t".join(r) for r in [MQM_COLUMNS, *ROWS]) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    rc = launch.main(["bench", "metrics", f"data.dir={tmp_path / 'data'}", "--config",
                      str(REPO / "configs/bench/metrics.yaml"), "--out", str(out)])
    assert rc == 0
    assert [p.name for p in out.iterdir()] == ["bench_metrics.json"]
    result = json.loads((out / "bench_metrics.json").read_text())
    assert list(result["results"]) == list(SCORERS) and result["baseline"] == "chrf"
    assert result["sample"] == "every row" and result["seed"] == 0
    chrf = result["results"]["chrf"]
    pair = chrf["language_pairs"]["ende"]
    assert pair["segments"] == 5 and pair["perturbed_segments"] == 3     # "Morgen gut alle." and "" are too short
    want = kendall_tau_b([CHRF().sentence_score(r[5], [r[6]]).score for r in ROWS], [float(r[3]) for r in ROWS])
    assert pair["kendall_tau_b"] == pytest.approx(want)
    # the repeat_half change of chrF2, by hand on the three long outputs
    longs = [r for r in ROWS if len(r[5].split()) >= 4]
    diffs = [CHRF().sentence_score(repeat_half(r[5]), [r[6]]).score - CHRF().sentence_score(r[5], [r[6]]).score
             for r in longs]
    assert pair["repeat_half"]["mean_change"] == pytest.approx(sum(diffs) / 3)
    assert chrf["ratio_to_chrf"] == {"kendall_tau_b": {"ende": 1.0}, **{v: 1.0 for v in PERTURBATIONS}}
    for name in SCORERS:
        res = result["results"][name]
        assert result["scorers"][name]["name"] == name and result["scorers"][name]["scale"] == 100.0
        for v in PERTURBATIONS:
            assert res["pooled"][v]["mean_change"] < 0       # every perturbation lowers every score here
    # the scorers that punish over-generation drop more than chrF2 when text is appended
    for name in ("chrf1", "bleu", "chrf_bp"):
        assert result["results"][name]["ratio_to_chrf"]["repeat_half"] > 1.0
    assert "outside_length_gate" in pair and set(pair["outside_length_gate"]) == {"original", *PERTURBATIONS}


def test_bench_metrics_without_mqm_files_exits_2(tmp_path, capsys):
    (tmp_path / "mqm_newstest2021").mkdir()
    rc = launch.main(["bench", "metrics", f"data.dir={tmp_path}", "--out", str(tmp_path / "out")])
    assert rc == 2 and "no *.tsv files" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
