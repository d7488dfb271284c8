"""``launch.py bench train``: step time of ``train.mode=sync`` against ``one_step_off``.

The same training job (same config, seed, hence the same batches) runs four ways on one Ray
instance: each mode with rollout and learner pinned to disjoint cores (the stand-in for
rollout and learner on different GPUs: while one works the other would idle) and each mode
with both sharing every core. Each run's first step is a warm-up (nothing to overlap yet) and
is left out of the means; its last step has nothing left to roll out ahead, so the JSON also
gives the total over all steps. Writes ``OUT/bench_train.json``: per run the mean step time and its
breakdown (rollout, waiting for the rollout, reward, update, sync), and the step-time ratio
one_step_off / sync per placement.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from orchestration.config_loader import load_config
from orchestration.errors import UserInputError
from orchestration.runtime import write_json_atomic

PHASES = ("time/step_s", "time/rollout_s", "time/rollout_wait_s", "time/reward_s", "time/update_s", "time/sync_s")


def placements() -> dict[str, list[str]]:
    """Overrides per placement on this machine: disjoint cores (rollout on the first core, the
    learner on the others) and one shared pool."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise UserInputError("bench train needs at least 2 CPU cores to give rollout and learner their own")
    rest = ",".join(map(str, cores[1:]))
    return {
        "disjoint": [f"rollout.engine.cpu_threads='{cores[0]}'", f"learner.cpu_cores='{rest}'",
                     f"learner.torch_threads={len(cores) - 1}"],
        "shared": ["rollout.engine.cpu_threads=all", f"learner.torch_threads={len(cores)}"],
    }


def run_job(cfg, run_dir: Path) -> list[dict[str, Any]]:
    """The training steps of ``cfg`` (no dev evaluation, no checkpoint): their metrics rows."""
    from orchestration.training.loop import TrainingRun

    trainer = TrainingRun(cfg, run_dir)
    rows = []
    try:
        trainer.start()
        from tqdm import tqdm

        for _ in tqdm(range(cfg.train.steps), desc=run_dir.name, unit="step"):
            rows.append(trainer.train_step())
    finally:
        trainer.close()
    return rows


def mean_phases(rows: list[dict[str, Any]]) -> dict[str, float]:
    measured = rows[1:] or rows
    return {k.split("/", 1)[1]: statistics.fmean(r.get(k, 0.0) for r in measured) for k in PHASES}


def main(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if cfg.train.steps < 2:
        raise UserInputError("train.steps: bench train needs at least 2 steps (the first is a warm-up)")
    variants = {(mode, place): load_config(args.config, [*(args.overrides or []), f"train.mode={mode}", *extra])
                for place, extra in placements().items() for mode in ("sync", "one_step_off")}
    out_dir = Path(args.out)
    from orchestration.runtime import start_ray

    start_ray(cfg.ray.address, cfg.ray.num_cpus)
    t_all = time.perf_counter()
    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="simulrl-bench-train-") as tmp:
        for (mode, place), vcfg in variants.items():
            print(f"== {place} cores, train.mode={mode}", flush=True)
            rows = run_job(vcfg, Path(tmp) / f"{place}-{mode}")
            runs[f"{place}/{mode}"] = {"mode": mode, "placement": place, "mean_s": mean_phases(rows),
                                       "steps": [{k: r.get(k) for k in PHASES + ("rollout/staleness_max",)}
                                                 for r in rows],
                                       "groups": [r["groups"] for r in rows]}
    same = all(runs[f"{p}/sync"]["groups"] == runs[f"{p}/one_step_off"]["groups"] for p in placements())
    ratio = {p: runs[f"{p}/one_step_off"]["mean_s"]["step_s"] / runs[f"{p}/sync"]["mean_s"]["step_s"]
             for p in placements()}
    # the last step has nothing to roll out ahead, which favours one_step_off in the mean over
    # steps 2..N; the total over all N steps (warm-up included) is the other bound
    for run in runs.values():
        run["total_s"] = sum(r["time/step_s"] for r in run["steps"])
    total_ratio = {p: runs[f"{p}/one_step_off"]["total_s"] / runs[f"{p}/sync"]["total_s"] for p in placements()}
    result = {"model": cfg.model.path, "steps": cfg.train.steps, "measured_steps": cfg.train.steps - 1,
              "sources_per_step": cfg.train.sources_per_step, "group_size": cfg.rollout.sampling.group_size,
              "same_batches": same, "step_time_ratio_one_step_off_vs_sync": ratio,
              "total_time_ratio_one_step_off_vs_sync": total_ratio, "runs": runs,
              "bench_s": time.perf_counter() - t_all,
              "machine": {"platform": platform.platform(), "cores": len(os.sched_getaffinity(0))}}
    write_json_atomic(out_dir / "bench_train.json", result)
    for p in placements():
        s, o = runs[f"{p}/sync"]["mean_s"], runs[f"{p}/one_step_off"]["mean_s"]
        print(f"{p:9} step s: sync {s['step_s']:.1f} (rollout {s['rollout_s']:.1f} update {s['update_s']:.1f})  "
              f"one_step_off {o['step_s']:.1f} (waiting for rollout {o['rollout_wait_s']:.1f})  "
              f"ratio {ratio[p]:.2f} (all {cfg.train.steps} steps: {total_ratio[p]:.2f})")
    print(f"same batches in both modes: {same}; {result['bench_s']:.0f} s -> {out_dir / 'bench_train.json'}")
    return 0
