"""launch.py sweep: expanding a grid, validating every run first, and (slow) a sweep of two
tiny-model runs that is stopped after the first and continued by running it again."""
from __future__ import annotations

import json

import pytest

import launch
from orchestration.config_loader import ConfigError
from orchestration.training import sweep
from orchestration.training.sweep import SweepConfig, SweepRun, expand
from tests.tiny_data import build_tiny_data


def test_the_grid_expands_to_every_combination_then_the_named_runs():
    cfg = SweepConfig(train_config="x.yaml", grid={"reward.lam": [0.5, 2], "reward.truncate": ["raw", "none"]},
                      runs=[SweepRun(name="quality-only", set={"reward.mode": "quality_only"})])
    runs = expand(cfg)
    assert [r.name for r in runs] == ["lam-0.5_truncate-raw", "lam-0.5_truncate-none", "lam-2_truncate-raw",
                                      "lam-2_truncate-none", "quality-only"]
    assert runs[1].set == {"reward.lam": 0.5, "reward.truncate": "none"}
    with pytest.raises(ConfigError, match="share a name: a"):
        expand(SweepConfig(train_config="x.yaml", runs=[SweepRun(name="a"), SweepRun(name="a")]))
    with pytest.raises(ConfigError, match="no runs"):
        expand(SweepConfig(train_config="x.yaml"))


def test_runs_picks_named_runs_in_file_order_and_names_unknown_ones():
    runs = expand(SweepConfig(train_config="x.yaml", runs=[SweepRun(name=n) for n in ("a", "b", "c")]))
    assert [r.name for r in sweep.select(runs, "c,a")] == ["a", "c"]
    assert sweep.select(runs, None) == runs
    with pytest.raises(ConfigError, match="no such run d; the sweep's runs are a, b, c"):
        sweep.select(runs, "a,d")


def test_every_run_is_validated_before_any_starts(tmp_path, capsys):
    bad = tmp_path / "sweep.yaml"
    bad.write_text("train_config: " + str(launch.__file__).replace("launch.py", "configs/default.yaml") + "\n"
                   "grid: {reward.lam: [1.0, 1000]}\nruns: [{name: typo, set: {train.stepz: 2}}]\n")
    assert launch.main(["sweep", "--config", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "run lam-1000:" in err and "reward.lam" in err
    assert "run typo:" in err and "train.stepz: unknown key (did you mean train.steps?)" in err
    assert not (tmp_path / "out").exists()   # nothing written


@pytest.mark.slow
def test_a_stopped_sweep_continues_where_it_stopped(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from tests.orchestration.training.test_loop import _tiny_run

    data = build_tiny_data(tmp_path / "data", n=8)
    shared = dict(o.split("=", 1) for o in _tiny_run(tiny_model_dir, data, tmp_path / "unused")
                  if not o.startswith("run.dir="))
    shared.update({"train.steps": "1", "train.sources_per_step": "2", "rollout.sampling.group_size": "2"})
    config = tmp_path / "sweep.yaml"
    config.write_text(json.dumps({
        "train_config": str(launch.__file__).replace("launch.py", "configs/default.yaml"),
        "overrides": shared, "grid": {"reward.lam": [1.0, 4.0]}}))
    out = tmp_path / "out"

    real_train = sweep.train_one
    calls: list[str] = []

    def stop_after_first(base, overrides, run_dir):
        if calls:
            return 1                               # the second run "fails": the sweep stops
        calls.append(run_dir.name)
        return real_train(base, overrides, run_dir)

    monkeypatch.setattr(sweep, "train_one", stop_after_first)
    assert launch.main(["sweep", "--config", str(config), "--out", str(out)]) == 1
    first = out / "lam-1.0" / "summary.json"
    first_bytes = first.read_bytes()
    assert not (out / "lam-4.0" / "summary.json").exists()
    assert [r["run"] for r in json.loads((out / "sweep.json").read_text())["runs"]] == ["lam-1.0"]

    monkeypatch.setattr(sweep, "train_one", lambda *a: calls.append(a[2].name) or real_train(*a))
    assert launch.main(["sweep", "--config", str(config), "--out", str(out)]) == 0
    assert calls == ["lam-1.0", "lam-4.0"]           # the finished run was not trained again
    assert first.read_bytes() == first_bytes
    rows = json.loads((out / "sweep.json").read_text())["runs"]
    assert [r["run"] for r in rows] == ["lam-1.0", "lam-4.0"]
    assert all(isinstance(r["reward_after"], float) and len(r["reward_ci"]) == 2 for r in rows)
    cfg4 = (out / "lam-4.0" / "config.yaml").read_text()
    assert "lam: 4.0" in cfg4
    assert (out / "sweep.png").stat().st_size > 0 and "| lam-4.0 |" in (out / "sweep.md").read_text()


def test_a_warm_started_held_out_sweep_starts_every_arm_from_its_sft_and_exports_it(tmp_path):
    cfg = SweepConfig(train_config="x.yaml", sft_config="p.yaml", heldout="h.yaml")
    over = sweep.run_overrides(cfg, SweepRun(name="a", set={"reward.lam": 1}), tmp_path / "out" / "a")
    assert f"model.init_from={tmp_path / 'out' / 'sft'}" in over and "train.export_model=true" in over
    plain = sweep.run_overrides(SweepConfig(train_config="x.yaml"), SweepRun(name="a"), tmp_path / "a")
    assert not any(o.startswith(("model.init_from", "train.export_model")) for o in plain)


def test_held_out_arms_are_the_exported_policies_in_their_own_layout(tmp_path):
    from orchestration.training.sweep_heldout import arm_settings, scoreboard_markdown

    for run in ("sft", "a", "b"):
        (tmp_path / run / "model").mkdir(parents=True)
        (tmp_path / run / "model" / "config.json").write_text("{}")
        (tmp_path / run / "config.yaml").write_text("rollout:\n  episode:\n    layout: prefix\n")
    (tmp_path / "c").mkdir()                    # an arm that never finished: no model, no row
    got = arm_settings(tmp_path, ["a", "b", "c"], start=True)
    assert [(s.name, s.line) for s in got] == [("learned-sft-start", "sft-start"), ("learned-a", "a"),
                                              ("learned-b", "b")]
    assert got[1].params["model"] == str(tmp_path / "a" / "model") and got[1].params["episode"]["layout"] == "prefix"
    cell = {"diff": 1.5, "low": 0.25, "high": 2.75, "excludes_zero": True}
    board = {"curve": [{"k": 1}, {"k": 3}], "sentences": 9, "replicates": 50, "points": [
        {"setting": "a", "quality": {"BLEU": 12.0, "chrF": 40.0}, "latency": {"LAAL": 4.0, "AL": 3.0},
         "length_ratio": 1.0, "wait_share": 0.25,
         "distance": {"LAAL": {"BLEU": cell, "chrF": {"diff": None, "outside": "above"}}, "AL": {"BLEU": cell}}}]}
    md = scoreboard_markdown(board)
    assert "| a | 12.00 | 40.00 | 4.00 | 3.00 | 1.00 | 0.25 | +1.50 [+0.25, +2.75]* | outside (above) |" in md
    assert "k = 1, 3" in md and "9 sentences" in md
