"""``launch.py bench reward``: MQM files, Kendall tau-b, the JSON it writes."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from sacrebleu.metrics import CHRF

import launch
from orchestration.bench.reward import MQM_COLUMNS, kendall_tau_b, read_mqm, target_language
from orchestration.errors import UserInputError

REPO = Path(__file__).resolve().parents[2]


def test_kendall_tau_b_by_hand():
    # pairs: 6 concordant, 4 discordant, no ties -> (6 - 4) / 10
    assert kendall_tau_b([1, 2, 3, 4, 5], [3, 4, 1, 2, 5]) == pytest.approx(0.2)
    # one pair tied in x, one in y, the other 4 concordant: 4 / sqrt((6 - 1)(6 - 1))
    assert kendall_tau_b([1, 1, 2, 3], [1, 2, 2, 3]) == pytest.approx(0.8)
    assert kendall_tau_b([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert kendall_tau_b([1, 1, 1], [1, 2, 3]) is None  # constant: undefined


def _naive_tau_b(x, y):
    """tau-b straight from its definition, pair by pair."""
    def sign(a, b):
        return (a > b) - (a < b)

    n = len(x)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    c_minus_d = sum(sign(x[i], x[j]) * sign(y[i], y[j]) for i, j in pairs)
    n0 = len(pairs)
    n1 = sum(1 for i, j in pairs if x[i] == x[j])
    n2 = sum(1 for i, j in pairs if y[i] == y[j])
    return c_minus_d / ((n0 - n1) * (n0 - n2)) ** 0.5


def test_kendall_tau_b_with_ties_matches_the_definition():
    rng = random.Random(3)
    x = [rng.randint(0, 5) for _ in range(300)]
    y = [xi + rng.choice([-2, -1, 0, 0, 1]) for xi in x]
    assert kendall_tau_b(x, y) == pytest.approx(_naive_tau_b(x, y), abs=1e-12)


ROWS = [
    ("ende", "sysA", "1", "0.0", "Hello world", "Hallo Welt", "Hallo Welt"),
    ("ende", "sysB", "1", "-5.0", "Hello world", "Hallo Erde", "Hallo Welt"),
    ("ende", "sysA", "2", "-1.0", "Good morning", "Guten Morgen zusammen", "Guten Morgen"),
    ("ende", "sysB", "2", "-25.0", "Good morning", "", "Guten Morgen"),
]


def _write_tsv(path: Path, rows=ROWS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join("\t".join(r) for r in [MQM_COLUMNS, *rows]) + "\n", encoding="utf-8")
    return path


def test_read_mqm_and_its_errors(tmp_path):
    rows = read_mqm(_write_tsv(tmp_path / "ok.tsv"))
    assert len(rows) == 4 and rows[1].mqm == -5.0 and rows[3].mt == ""
    assert target_language("ende") == "de" and target_language("zh-en") == "en"
    bad = _write_tsv(tmp_path / "bad.tsv", ROWS[:1] + [("ende", "s", "3", "x", "a", "b", "c")])
    with pytest.raises(UserInputError, match=r"bad.tsv:3: mqm_avg_score 'x' is not a number"):
        read_mqm(bad)
    (tmp_path / "short.tsv").write_text("\t".join(MQM_COLUMNS) + "\nende\tonly\n")
    with pytest.raises(UserInputError, match=r"short.tsv:2: 2 tab-separated fields, expected 7"):
        read_mqm(tmp_path / "short.tsv")
    (tmp_path / "head.tsv").write_text("a\tb\n")
    with pytest.raises(UserInputError, match=r"head.tsv:1: expected the header"):
        read_mqm(tmp_path / "head.tsv")


@pytest.mark.slow
def test_bench_reward_command_writes_tau_and_throughput(ray_local, tmp_path):
    data = tmp_path / "data"
    _write_tsv(data / "mqm_newstest2021" / "mqm_ende.tsv")
    out = tmp_path / "out"
    # overrides right after the kind: launch.py's parser does not take them after the options
    rc = launch.main(["bench", "reward", f"data.dir={data}", "--config",
                      str(REPO / "configs/bench/reward-chrf.yaml"), "--out", str(out)])
    assert rc == 0
    assert [p.name for p in out.iterdir()] == ["bench_reward.json"]  # no temp file left
    result = json.loads((out / "bench_reward.json").read_text())
    chrf = [CHRF().sentence_score(r[5], [r[6]]).score for r in ROWS]
    pair = result["language_pairs"]["ende"]
    assert pair["segments"] == 4 and pair["systems"] == 2
    assert pair["kendall_tau_b"] == pytest.approx(kendall_tau_b(chrf, [float(r[3]) for r in ROWS]))
    assert result["scorer"]["name"] == "chrf" and result["segments"] == 4
    assert result["segments_per_s"] > 0 and result["total_seconds"] > 0
    assert "tau-b" in result["correlation"]


def test_bench_reward_without_mqm_files_exits_2(tmp_path, capsys):
    (tmp_path / "mqm_newstest2021").mkdir()
    rc = launch.main(["bench", "reward", f"data.dir={tmp_path}", "--out", str(tmp_path / "out")])
    assert rc == 2
    assert "no *.tsv files" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
