"""launch.py pipeline: its config (one file, three stages), the stage configs it derives, and
the commands that read one stage of the same file."""
from __future__ import annotations

from pathlib import Path

import pytest

import launch
from orchestration.config import RootConfig
from orchestration.config_loader import ConfigError, load_config
from orchestration.training.pipeline import held_out_command
from orchestration.training.pipeline_config import PipelineRootConfig, ScoreboardConfig
from orchestration.training.sft_config import SftRootConfig

ROOT = Path(__file__).resolve().parents[3]
DEFAULT = ROOT / "configs" / "default.yaml"


def test_scoreboard_fields_are_documented():
    for name, field in ScoreboardConfig.model_fields.items():
        assert field.description, name


def test_the_default_config_is_a_pipeline_and_each_stage_reads_its_part():
    cfg = load_config(DEFAULT, ["learner.kl_beta=0.05"], schema=PipelineRootConfig)
    assert cfg.sft.enabled and cfg.scoreboard.enabled
    # GRPO: the training sections as written, the KL term kept
    train = cfg.training()
    assert isinstance(train, RootConfig) and train.learner.kl_beta == cfg.learner.kl_beta > 0
    assert train.train.steps == cfg.train.steps and train.rollout == cfg.rollout
    # SFT: the same episode layout and model, no KL term, no dev rollouts of its own
    sft = cfg.sft_stage()
    assert isinstance(sft, SftRootConfig) and sft.learner.kl_beta == 0.0 and sft.sft.eval_rollouts is False
    assert sft.rollout.episode == cfg.rollout.episode and sft.model.path == cfg.model.path
    assert sft.sft.pairs == cfg.sft.pairs
    # `train` reads the same file for its one stage and drops the others ...
    alone = load_config(DEFAULT)
    assert alone.train.steps == cfg.train.steps and not hasattr(alone, "sft")
    # ... but an override of another stage's key changes nothing there, so it is refused
    with pytest.raises(ConfigError, match="sft.epochs: not used by this command"):
        load_config(DEFAULT, ["sft.epochs=2"])


def test_pipeline_rules_are_checked_before_anything_starts(capsys):
    assert launch.main(["pipeline", "--config", str(DEFAULT), "model.init_from=runs/x"]) == 2
    assert "set sft.enabled=false to start GRPO from model.init_from" in capsys.readouterr().err
    assert launch.main(["pipeline", "--config", str(DEFAULT), "scoreboard.curve_k=[3]"]) == 2
    assert "scoreboard.curve_k" in capsys.readouterr().err
    assert launch.main(["pipeline", "--config", str(DEFAULT), "sft.layout=simulmask"]) == 2
    assert "sft.layout=simulmask" in capsys.readouterr().err


def test_resume_needs_a_pipeline_run_directory(tmp_path, capsys):
    assert launch.main(["pipeline", "--resume", str(tmp_path)]) == 2
    assert "no config.yaml there" in capsys.readouterr().err


def test_the_printed_held_out_command_names_the_run():
    cmd = held_out_command(Path("/x/runs/default-1"))
    assert "launch.py eval --config configs/eval/heldout-deen-cpu.yaml" in cmd and "eval.runs=[/x/runs/default-1]" in cmd


@pytest.mark.slow
def test_the_pipeline_end_to_end_and_a_resume_that_keeps_every_stage(tiny_model_dir, tmp_path, ray_local, capsys):
    """SFT -> GRPO -> dev scoreboard on the tiny model: each stage leaves its policy, the
    scoreboard scores both against the wait-k curve on the GRPO stage's dev sentences, and a
    resume keeps every finished stage (nothing is trained or decoded again)."""
    import json

    from tests.orchestration.training.test_loop import _tiny_run
    from tests.tiny_data import build_tiny_data

    data = build_tiny_data(tmp_path / "data", n=6)
    run = tmp_path / "pipe"
    over = _tiny_run(tiny_model_dir, data, run, "train.steps=1", "train.sources_per_step=2",
                     "rollout.sampling.group_size=2", "train.checkpoint_every=1", "sft.pairs=4", "sft.batch_size=2",
                     "sft.dev_size=2", "sft.min_source_units=1", "scoreboard.curve_k=[1,2]",
                     f"scoreboard.curve_cache={tmp_path / 'curves'}", "scoreboard.replicates=50")
    assert launch.main(["pipeline", "--config", str(DEFAULT), *over]) == 0
    out = capsys.readouterr().out
    for stage in ("sft", "grpo"):
        assert (run / stage / "model" / "config.json").is_file() and (run / stage / "summary.json").is_file()
    grpo_cfg = load_config(run / "grpo" / "config.yaml")
    assert grpo_cfg.model.init_from == str(run / "sft") and grpo_cfg.train.export_model
    board = json.loads((run / "scoreboard.json").read_text())
    assert [c["k"] for c in board["curve"]] == [1, 2] and board["sentences"] == 2
    assert [p["setting"] for p in board["points"]] == ["SFT", "SFT+GRPO"]
    for p in board["points"]:   # the dev instances of the GRPO stage record each sentence's wait share
        assert set(p["distance"]) == {"LAAL", "AL"} and 0 <= p["wait_share"] <= 1
    assert (run / "scoreboard.png").stat().st_size > 0
    assert f"eval.runs=[{run}]" in out
    stamps = {p: p.stat().st_mtime_ns for p in (run / "sft" / "summary.json", run / "grpo" / "summary.json",
                                                  run / "scoreboard" / "settings" / "waitk-k1" / "scores.json")}
    assert launch.main(["pipeline", "--resume", str(run)]) == 0
    again = capsys.readouterr().out
    assert "sft: finished earlier, kept" in again and "grpo: finished earlier, kept" in again
    assert "waitk-k1: finished earlier, kept" in again
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
