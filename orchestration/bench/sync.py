"""``launch.py bench sync``: the direct weight broadcast against the driver-bytes path.

One engine (the config's model and rollout section) and one LoRA learner rank. For the merged
LoRA delta and for full weights (every tensor, the delta merged in), the same weights are pushed into the running engine both ways, each
``repeats`` times, alternating: the broadcast (learner rank 0 → gloo/NCCL group → the engine's
worker, in buckets) and the baseline (rank 0's safetensors ``bytes`` → driver → object store →
rollout actor → ``collective_rpc`` into the worker). Per path: median seconds, bytes moved,
bytes through the driver, peak RSS of the driver process above its level before the sync, and
that a greedy rollout after the sync equals the one after the other path. Ratios are
baseline / broadcast, measured in the same run. Writes ``OUT/bench_sync.json``.
"""
from __future__ import annotations

import argparse
import pickle
import platform
import statistics
import threading
import time
from pathlib import Path
from typing import Any, Callable

from orchestration.config import RootConfig
from orchestration.config_loader import load_config
from orchestration.runtime import start_ray, write_json_atomic

# one LoRA learner serves both: "full" sends every weight (the LoRA delta merged in), the bytes a
# full fine-tune sends, without a second model and its fp32 master copy in memory
CASES = ("merged", "full")


def _rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as f:
        import os

        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_during(fn: Callable[[], Any], interval_s: float = 0.002) -> tuple[Any, int, int]:
    """Run ``fn``; (its result, RSS before, peak RSS while it ran) of this process, sampled."""
    before, peak, done = _rss_bytes(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(interval_s)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        out = fn()
    finally:
        done.set()
        thread.join()
    return out, before, max(peak[0], _rss_bytes())


def _greedy_ids(pool, source) -> list[list[int]]:
    from rollout.types import Sampling

    trajs, _ = pool.rollout([source], 1, Sampling(temperature=0.0))
    return [t["token_ids"] for t in trajs]


def start_learner(cfg: RootConfig):
    """One LoRA learner rank in its placement slot: (learners, reserved groups, merged-sync names)."""
    from orchestration.placement import build_plan, reserve
    from orchestration.training.learners import build_learners, sync_names

    lcfg = cfg.learner.model_copy(update={"lora": cfg.learner.lora.model_copy(update={"enabled": True}),
                                          "kl_beta": 0.0, "num_ranks": 1})
    lora_cfg = cfg.model_copy(update={"learner": lcfg, "rollout": cfg.rollout.model_copy(update={"weight_sync": "merged"})})
    plan = build_plan(lora_cfg)
    plan.groups = [g for g in plan.groups if g.name in {s.group for s in plan.learner}]
    reserved = reserve(plan, cfg.ray.start_timeout_s)
    learners = build_learners(lora_cfg, reserved, plan)
    return learners, reserved, sync_names(lora_cfg, learners)


def bench_case(cfg: RootConfig, pool, learners, mode: str, merged_names, repeats: int, source) -> dict[str, Any]:
    import gc

    from orchestration.weight_sync import WeightSync, backend_for, push_via_driver

    names = merged_names if mode == "merged" else None
    sync = WeightSync(learners, pool, mode, names, tensor_parallel=cfg.rollout.engine.tensor_parallel_size,
                      backend=backend_for(cfg), bucket_mb=cfg.rollout.weight_bucket_mb,
                      timeout_s=cfg.ray.sync_timeout_s)
    version = 100 if mode == "merged" else 200
    rows: dict[str, list[dict[str, Any]]] = {"broadcast": [], "driver": []}
    outputs: dict[str, list] = {}
    try:
        connect = sync.connect()
        layout_bytes = len(pickle.dumps(sync.buckets))
        for _ in range(repeats):
            for path in ("broadcast", "driver"):
                version += 1
                gc.collect()
                if path == "broadcast":
                    info, before, peak = peak_rss_during(lambda: sync.push(version))
                    driver_bytes = layout_bytes
                else:
                    info, before, peak = peak_rss_during(
                        lambda: push_via_driver(learners, pool, mode, names, version, cfg.ray.sync_timeout_s))
                    driver_bytes = info["bytes"]
                    pool._last_update = None   # let the payload go, as a broadcast run keeps none
                rows[path].append({"seconds": info["seconds"], "bytes": info["bytes"], "driver_bytes": driver_bytes,
                                   "driver_rss_before": before, "driver_rss_peak_increase": peak - before})
                outputs[path] = _greedy_ids(pool, source)
    finally:
        sync.close()
    out: dict[str, Any] = {"mode": mode, "tensors": sum(len(b["tensors"]) for b in sync.buckets),
                           "buckets": len(sync.buckets), "connect_s": connect["seconds"],
                           "outputs_equal": outputs["broadcast"] == outputs["driver"]}
    for path, rs in rows.items():
        out[path] = {"seconds_median": statistics.median(r["seconds"] for r in rs),
                     "seconds": [r["seconds"] for r in rs], "bytes": rs[0]["bytes"],
                     "driver_bytes": rs[0]["driver_bytes"],
                     "driver_rss_peak_increase_max": max(r["driver_rss_peak_increase"] for r in rs),
                     "driver_rss_before": rs[0]["driver_rss_before"]}
    b, d = out["broadcast"], out["driver"]
    out["seconds_ratio"] = d["seconds_median"] / b["seconds_median"]
    out["driver_rss_ratio"] = (d["driver_rss_peak_increase_max"] / b["driver_rss_peak_increase_max"]
                               if b["driver_rss_peak_increase_max"] else None)
    return out


def run_bench(cfg: RootConfig, out_dir: Path, repeats: int) -> dict[str, Any]:
    from orchestration.placement import build_plan, reserve
    from orchestration.runtime import close_all
    from orchestration.training.learners import policy_path
    from rollout.types import Source
    from rollout.worker import RolloutPool

    started = start_ray(cfg.ray.address, cfg.ray.num_cpus)
    plan = build_plan(cfg)
    plan.groups = [g for g in plan.groups if g.name in {s.group for s in plan.rollout}]
    reserved = reserve(plan, cfg.ray.start_timeout_s)
    pool = RolloutPool(policy_path(cfg), cfg.model.dtype, cfg.rollout, cfg.run.seed,
                       slots=[reserved.options(s) for s in plan.rollout],
                       start_timeout_s=cfg.ray.start_timeout_s, call_timeout_s=cfg.ray.sync_timeout_s)
    source = Source(0, "Der Zug nach Berlin hat heute wegen eines Unwetters zwei Stunden Verspätung", "de", "en")
    learners, learner_groups, merged_names = start_learner(cfg)
    try:
        cases = [bench_case(cfg, pool, learners, mode, merged_names, repeats, source) for mode in CASES]
    finally:
        import ray

        close_all([pool.shutdown, lambda: ray.get([lw.shutdown.remote() for lw in learners], timeout=120),
                   learner_groups.remove, reserved.remove], started)
    result = {"model": policy_path(cfg), "dtype": cfg.model.dtype, "engines": cfg.rollout.num_workers,
              "bucket_mb": cfg.rollout.weight_bucket_mb, "repeats": repeats, "baseline": "driver",
              "cases": {c["mode"]: c for c in cases},
              "machine": {"platform": platform.platform(), "processor": platform.processor()}}
    write_json_atomic(out_dir / "bench_sync.json", result)
    return result


def main(args: argparse.Namespace) -> int:
    from orchestration.training.learners import check_model

    cfg = load_config(args.config, args.overrides)
    check_model(cfg)
    out_dir = Path(args.out)
    r = run_bench(cfg, out_dir, repeats=3)
    mb = 2**20
    for mode, c in r["cases"].items():
        b, d = c["broadcast"], c["driver"]
        print(f"{mode:6} {c['tensors']} tensors, {b['bytes'] / mb:.1f} MiB in {c['buckets']} buckets: "
              f"broadcast {b['seconds_median']:.3f} s (driver RSS +{b['driver_rss_peak_increase_max'] / mb:.1f} MiB, "
              f"{b['driver_bytes'] / 1024:.1f} KiB through the driver), driver path {d['seconds_median']:.3f} s "
              f"(driver RSS +{d['driver_rss_peak_increase_max'] / mb:.1f} MiB, {d['driver_bytes'] / mb:.1f} MiB "
              f"through the driver); ratio {c['seconds_ratio']:.2f}x; outputs equal: {c['outputs_equal']}")
    print(f"-> {out_dir / 'bench_sync.json'}")
    return 0
