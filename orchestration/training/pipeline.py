"""``launch.py pipeline``: the main job, SFT warm start → GRPO → dev scoreboard, resumable by stage.

The SeqPO recipe: a short policy-consistent SFT stage teaches the episode layout and waiting
(``launch.py sft`` in ``RUN_DIR/sft``), GRPO starts from its model (``launch.py train`` in
``RUN_DIR/grpo``, exporting its final policy to ``RUN_DIR/grpo/model``), and the dev scoreboard
puts both policies against the base model's wait-k curve on the same dev sentences
(``RUN_DIR/scoreboard.json``, ``scoreboard.png``). ``--resume RUN_DIR`` (or the same command
with ``run.dir=RUN_DIR``) skips every finished stage and resumes GRPO from its last checkpoint;
an unfinished SFT stage starts again (it is minutes long). The run ends by printing the one
command that puts its policies on the held-out scoreboard.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from orchestration.config_loader import load_config, resolve_run_dir, write_resolved_config
from orchestration.errors import UserInputError
from orchestration.runtime import write_json_atomic
from orchestration.training.pipeline_config import PipelineRootConfig

HELD_OUT_CONFIG = "configs/eval/heldout-deen-cpu.yaml"


def _finished(run: Path) -> bool:
    return (run / "summary.json").is_file()


def sft_stage(cfg: PipelineRootConfig, run_dir: Path) -> Path | None:
    """Stage 1: the SFT model directory (None when the stage is off)."""
    from orchestration.training.sft import run_sft

    if not cfg.sft.enabled:
        return None
    out = run_dir / "sft"
    if _finished(out) and (out / "model" / "config.json").is_file():
        print(f"sft: finished earlier, kept ({out})")
        return out
    shutil.rmtree(out, ignore_errors=True)   # an interrupted SFT stage starts again
    stage = cfg.sft_stage()
    stage.run.dir, stage.run.name = str(out), f"{cfg.run.name}-sft"
    run_sft(stage, out)
    return out


def grpo_stage(cfg: PipelineRootConfig, run_dir: Path, sft_dir: Path | None) -> int:
    """Stage 2: GRPO from the SFT model (or model.path); resumes from its last checkpoint."""
    from orchestration.checkpoint import latest_checkpoint
    from orchestration.config import RootConfig
    from orchestration.training.loop import run_training

    out = run_dir / "grpo"
    if _finished(out):
        print(f"grpo: finished earlier, kept ({out})")
        return 0
    if (out / "config.yaml").is_file() and (out / "checkpoints" / "latest").exists():
        latest_checkpoint(out)
        print(f"grpo: resuming from its last checkpoint ({out})")
        return run_training(load_config(out / "config.yaml", schema=RootConfig), out, resume=True)
    shutil.rmtree(out, ignore_errors=True)
    train = cfg.training()
    train.run.dir, train.run.name = str(out), f"{cfg.run.name}-grpo"
    train.train.export_model = True
    if sft_dir is not None:
        train.model.init_from = str(sft_dir)
    return run_training(train, out)


def scoreboard_stage(cfg: PipelineRootConfig, run_dir: Path) -> dict[str, Any] | None:
    """Stage 3: both policies of the GRPO stage's dev evaluations against the wait-k curve."""
    from orchestration.eval.curve import format_scoreboard
    from orchestration.training.dev_scoreboard import run_dev_scoreboard

    if not cfg.scoreboard.enabled:
        return None
    dev = run_dir / "grpo" / "dev"
    start = "SFT" if cfg.sft.enabled else "base"
    points = {start: dev / "before" / "instances.jsonl", f"{start}+GRPO": dev / "after" / "instances.jsonl"}
    report = run_dev_scoreboard(cfg, run_dir, points)
    print(format_scoreboard(report))
    return report


def held_out_command(run_dir: Path) -> str:
    return f".venv/bin/python launch.py eval --config {HELD_OUT_CONFIG} eval.runs=[{run_dir}]"


def run_pipeline(cfg: PipelineRootConfig, run_dir: Path) -> int:
    """All three stages into ``run_dir``; 0 when all finished."""
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    sft_dir = sft_stage(cfg, run_dir)
    times["sft_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    rc = grpo_stage(cfg, run_dir, sft_dir)
    times["grpo_s"] = time.perf_counter() - t1
    if rc != 0:
        print(f"error: the GRPO stage stopped; continue with `launch.py pipeline --resume {run_dir}`", file=sys.stderr)
        return rc
    t2 = time.perf_counter()
    report = scoreboard_stage(cfg, run_dir)
    times["scoreboard_s"] = time.perf_counter() - t2
    times["total_s"] = time.perf_counter() - t0
    write_json_atomic(run_dir / "pipeline.json", {"seconds": times, "sft": str(sft_dir) if sft_dir else None,
                                                  "grpo": str(run_dir / "grpo"),
                                                  "scoreboard": report is not None})
    print("stage seconds: " + ", ".join(f"{k[:-2]} {v:.0f}" for k, v in times.items()))
    print(f"run directory: {run_dir}" + (" (scoreboard.json, scoreboard.png)" if report else ""))
    print(f"held-out scoreboard: {held_out_command(run_dir)}")
    return 0


def main(args: argparse.Namespace) -> int:
    if args.resume:
        run_dir = Path(args.resume).resolve()
        if not (run_dir / "config.yaml").is_file():
            raise UserInputError(f"--resume {run_dir}: no config.yaml there; pass a run directory of `pipeline`")
        cfg = load_config(run_dir / "config.yaml", args.overrides, schema=PipelineRootConfig)
    else:
        cfg = load_config(args.config, args.overrides, schema=PipelineRootConfig)
        run_dir = resolve_run_dir(cfg)
    from orchestration.training.learners import check_model

    from orchestration.training.cursor import load_training_data

    check_model(cfg)
    load_training_data(cfg.training())   # every data problem stops the command before any stage starts
    cfg.run.dir = str(run_dir)
    write_resolved_config(cfg, run_dir)
    print(f"run directory: {run_dir}")
    return run_pipeline(cfg, run_dir)
