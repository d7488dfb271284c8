"""``launch.py bench scaling``: one training job at several sizes of the rollout pool and the
learner (``rollout.num_workers`` x ``learner.num_ranks``), the experiment users run across GPUs.

The same config (same batches: a fixed global batch, strong scaling) runs at each size given
by ``--sizes`` (e.g. ``1x1,2x2``: workers x ranks). Throughput is trained trajectories and
generated tokens per second over the steps after the first (a warm-up). Scaling efficiency of a
size is its speed-up over the first size divided by its growth in actors (workers + ranks).
Writes ``OUT/bench_scaling.json`` and ``OUT/bench_scaling.png``.
"""
from __future__ import annotations

import argparse
import platform
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from orchestration.bench.train import run_job
from orchestration.config_loader import load_config
from orchestration.errors import UserInputError
from orchestration.runtime import write_json_atomic

DEFAULT_SIZES = "1x1,2x2"


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"1x1,2x1,2x2"`` -> [(1, 1), (2, 1), (2, 2)] (rollout workers x learner ranks)."""
    sizes = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)x(\d+)\s*", part)
        if not m or int(m[1]) < 1 or int(m[2]) < 1:
            raise UserInputError(f"--sizes {text}: {part!r} is not WORKERSxRANKS (e.g. 1x1,2x2)")
        sizes.append((int(m[1]), int(m[2])))
    return sizes


def throughput(rows: list[dict[str, Any]], trajectories_per_step: int) -> dict[str, float]:
    measured = rows[1:] or rows
    seconds = sum(r["time/step_s"] for r in measured)
    return {"step_s": statistics.fmean(r["time/step_s"] for r in measured),
            "trajectories_per_s": trajectories_per_step * len(measured) / seconds,
            "generated_tokens_per_s": sum(r["rollout/generated_tokens"] for r in measured) / seconds}


def plot(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from orchestration.runtime import save_figure_atomic

    sizes = [r["size"] for r in result["runs"]]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
    a.bar(sizes, [r["trajectories_per_s"] for r in result["runs"]], color="tab:blue")
    a.set_ylabel("trained trajectories / s")
    a.set_xlabel("rollout workers x learner ranks")
    b.plot(sizes, [r["efficiency"] for r in result["runs"]], marker="o", color="tab:orange")
    b.axhline(1.0, color="grey", lw=0.8, ls="--")
    b.set_ylim(0, max(1.1, max(r["efficiency"] for r in result["runs"]) * 1.1))
    b.set_ylabel("scaling efficiency")
    b.set_xlabel("rollout workers x learner ranks")
    fig.suptitle(f"{Path(result['model']).name}: {result['trajectories_per_step']} trajectories per step")
    fig.tight_layout()
    return save_figure_atomic(fig, path)


def main(args: argparse.Namespace) -> int:
    sizes = parse_sizes(getattr(args, "sizes", None) or DEFAULT_SIZES)
    base = list(args.overrides or [])
    cfgs = [load_config(args.config, [*base, f"rollout.num_workers={w}", f"learner.num_ranks={r}"])
            for w, r in sizes]
    cfg = cfgs[0]
    if cfg.train.steps < 2:
        raise UserInputError("train.steps: bench scaling needs at least 2 steps (the first is a warm-up)")
    per_step = cfg.train.sources_per_step * cfg.rollout.sampling.group_size
    out_dir = Path(args.out)
    from orchestration.runtime import start_ray

    start_ray(cfg.ray.address, cfg.ray.num_cpus)
    t_all = time.perf_counter()
    runs = []
    with tempfile.TemporaryDirectory(prefix="simulrl-bench-scaling-") as tmp:
        for (w, r), vcfg in zip(sizes, cfgs):
            print(f"== {w} rollout worker(s) x {r} learner rank(s)", flush=True)
            rows = run_job(vcfg, Path(tmp) / f"{w}x{r}")
            runs.append({"size": f"{w}x{r}", "rollout_workers": w, "learner_ranks": r,
                         **throughput(rows, per_step), "groups": [row["groups"] for row in rows]})
    first = runs[0]
    for run, (w, r) in zip(runs, sizes):
        grow = (w + r) / (sizes[0][0] + sizes[0][1])
        run["speedup"] = run["trajectories_per_s"] / first["trajectories_per_s"]
        run["efficiency"] = run["speedup"] / grow
    result = {"model": cfg.model.path, "steps": cfg.train.steps, "trajectories_per_step": per_step,
              "same_batches": all(r["groups"] == first["groups"] for r in runs), "runs": runs,
              "bench_s": time.perf_counter() - t_all,
              "machine": {"platform": platform.platform()}}
    write_json_atomic(out_dir / "bench_scaling.json", result)
    png = plot(result, out_dir / "bench_scaling.png")
    for run in runs:
        print(f"{run['size']:>6}: {run['trajectories_per_s']:.3f} trajectories/s, step {run['step_s']:.1f} s, "
              f"speed-up {run['speedup']:.2f}, efficiency {run['efficiency']:.2f}")
    print(f"{result['bench_s']:.0f} s -> {out_dir / 'bench_scaling.json'}, {png}")
    return 0
