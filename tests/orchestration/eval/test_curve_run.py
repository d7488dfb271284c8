"""The scoreboard of an eval run: ``launch.py score --curve DIR`` on hand-built run directories
(and its errors)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import launch
from orchestration.eval.score import read_instances, summarize
from tests.orchestration.eval.curve_data import record, references, write


def _setting(run: Path, name: str, params: dict, rows: list[dict]) -> None:
    """settings/NAME/{instances.jsonl,scores.json} as `launch.py eval` writes them."""
    path = write(run / "settings" / name / "instances.jsonl", rows)
    scores = summarize(read_instances(path, "word"), "word")
    (run / "settings" / name / "scores.json").write_text(json.dumps(
        {"setting": name, "line": params["type"], "policy": params["type"], "params": params, **scores}))


@pytest.fixture
def run_dir(tmp_path):
    run, refs = tmp_path / "run", references(24)
    for k in (1, 3, 5):
        _setting(run, f"waitk-k{k}", {"type": "waitk", "k": k}, [record(i, r, k, 0.6 - 0.1 * k) for i, r in enumerate(refs)])
    _setting(run, "waitk-k3-expost", {"type": "waitk", "k": 3, "positions": "expost", "source_slots": 64},
             [record(i, r, 3, 0.1) for i, r in enumerate(refs)])
    _setting(run, "lsg-L1-U4-exact", {"type": "lsg", "L": 1, "U": 4},
             [record(i, r, 2, 0.05) for i, r in enumerate(refs)])
    _setting(run, "offline", {"type": "offline"}, [record(i, r, 12, 0.0) for i, r in enumerate(refs)])
    return run


def _scores(run: Path, name: str) -> dict:
    return json.loads((run / "settings" / name / "scores.json").read_text())


def test_score_curve_scores_every_setting_against_the_wait_k_curve(run_dir, capsys):
    assert launch.main(["score", "--curve", str(run_dir), "--replicates", "200", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    board = json.loads((run_dir / "scoreboard.json").read_text())
    assert [(c["k"], c["setting"]) for c in board["curve"]] == [(1, "waitk-k1"), (3, "waitk-k3"), (5, "waitk-k5")]
    points = {p["setting"]: p for p in board["points"]}
    assert set(points) == {"lsg-L1-U4-exact", "offline", "waitk-k3-expost"}   # ExPosST wait-k is a point
    assert (board["replicates"], board["seed"], board["sentences"]) == (200, 3, 24)
    # the distance from the files' own scores: the LSG point's BLEU minus the line between the
    # wait-k settings whose LAAL brackets its LAAL
    lsg = _scores(run_dir, "lsg-L1-U4-exact")
    wk = {k: _scores(run_dir, f"waitk-k{k}") for k in (1, 3, 5)}
    lo, hi = next((a, b) for a, b in ((1, 3), (3, 5)) if wk[a]["LAAL"] <= lsg["LAAL"] <= wk[b]["LAAL"])
    t = (lsg["LAAL"] - wk[lo]["LAAL"]) / (wk[hi]["LAAL"] - wk[lo]["LAAL"])
    want = lsg["BLEU"] - (wk[lo]["BLEU"] + t * (wk[hi]["BLEU"] - wk[lo]["BLEU"]))
    cell = points["lsg-L1-U4-exact"]["distance"]["LAAL"]["BLEU"]
    assert cell["diff"] == pytest.approx(want, abs=1e-9) and cell["bracket"] == [lo, hi]
    assert points["lsg-L1-U4-exact"]["quality"]["BLEU"] == pytest.approx(lsg["BLEU"], abs=1e-9)
    assert points["offline"]["distance"]["LAAL"]["chrF"] == {"diff": None, "outside": "above"}
    assert "lsg-L1-U4-exact" in out and "above range" in out and "scoreboard.json" in out


def test_score_curve_needs_two_wait_k_settings(run_dir, capsys):
    for k in (1, 5):
        (run_dir / "settings" / f"waitk-k{k}" / "scores.json").unlink()   # unfinished
    assert launch.main(["score", "--curve", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert str(run_dir) in err and "found k = [3]" in err and "add wait-k with k = 1" in err
    assert not (run_dir / "scoreboard.json").exists()


def test_score_curve_refuses_different_sentences(run_dir, capsys):
    rows = [json.loads(line) for line in (run_dir / "settings" / "offline" / "instances.jsonl").read_text().splitlines()]
    write(run_dir / "settings" / "offline" / "instances.jsonl", rows[:-1])
    assert launch.main(["score", "--curve", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "settings/offline/instances.jsonl" in err and "different sentences" in err and "[23]" in err


def test_score_takes_instances_or_curve_not_both(run_dir, capsys):
    with pytest.raises(SystemExit) as exc:
        launch.main(["score", "--curve", str(run_dir), "--instances", "x.jsonl"])
    assert exc.value.code == 2 and "not allowed with" in capsys.readouterr().err
    assert launch.main(["score", "--curve", str(run_dir / "nowhere")]) == 2
    assert "no settings/ directory" in capsys.readouterr().err
