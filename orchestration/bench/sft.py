"""``launch.py bench sft``: what one-pass interleaved SFT saves over prefix fine-tuning.

The same pairs, segmented by the same rule, are trained on by the same DeepSpeed learner ranks
two ways: interleaved episodes (one sequence per sentence, loss on every step's output) and
the prefix layout with data expansion (one sample per write: the source read so far, the
translation so far, loss on the new piece), the baseline. Both take one optimizer step per
``sft.batch_size`` sentences. Writes ``OUT/bench_sft.json`` with tokens processed per sentence,
wall time, and their ratios against the baseline measured in the same run; the tokens a
SimulMask one-pass prefix sequence would take are counted beside them.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

from orchestration.config_loader import load_config
from orchestration.data import source_units
from orchestration.runtime import start_ray, write_json_atomic
from orchestration.training.sft import episode_factory, load_sft_data, sft_batch
from orchestration.training.sft_config import SftRootConfig
from orchestration.training.learners import build_learners, policy_path
from orchestration.training.trajectories import to_sources


def _batch_of(samples: Sequence[tuple[list[int], list[int]]]):
    from learner.batch import TrainBatch, TrainTrajectory

    return TrainBatch([TrainTrajectory(ids, mask, 0.0, [0.0] * len(ids)) for ids, mask in samples])


def _train(learners, batches: list, label: str, timeout_s: float = 7200.0) -> dict[str, Any]:
    """One pass: an SFT step per batch on every rank; totals and the wall time."""
    import ray
    from tqdm import tqdm

    rows = []
    start = time.perf_counter()
    for batch in tqdm(batches, desc=f"sft {label}", unit="step"):
        shards = batch.split(len(learners))
        rows.append(ray.get([lw.sft_step.remote(s, batch.counts()["tokens"]) for lw, s in zip(learners, shards)],
                            timeout=timeout_s)[0])
    wall = time.perf_counter() - start
    return {"steps": len(rows), "sequences": sum(len(b) for b in batches),
            "tokens": sum(len(t.token_ids) for b in batches for t in b.trajectories),
            "action_tokens": sum(b.counts()["tokens"] for b in batches),
            "padding_share": statistics.fmean(r["padding_share"] for r in rows),
            "loss_mean": statistics.fmean(r["loss"] for r in rows), "wall_s": wall}


def run_bench(cfg: SftRootConfig, out_dir: Path) -> dict[str, Any]:
    import ray

    from rollout.sft_episodes import prefix_samples, sft_trajectory

    train_set, pairs, _ = load_sft_data(cfg)
    model = policy_path(cfg)
    factory = episode_factory(cfg, model)
    sources = to_sources(pairs, train_set)
    k = cfg.sft.lag_k
    interleaved = [sft_trajectory(factory, s, k) for s in sources]
    expanded = [prefix_samples(factory, s, k) for s in sources]
    size = cfg.sft.batch_size
    groups = [list(range(a, min(a + size, len(sources)))) for a in range(0, len(sources), size)]
    started = start_ray(cfg.ray.address, cfg.ray.num_cpus)
    learners = build_learners(cfg.model_copy(
        update={"model": cfg.model.model_copy(update={"path": model, "init_from": None})}))
    try:
        warm = [sft_batch(interleaved[:len(learners)])]   # first forward/backward pays one-off costs
        _train(learners, warm, "warm-up")
        runs = {
            "interleaved": _train(learners, [sft_batch([interleaved[i] for i in g]) for g in groups], "interleaved"),
            "prefix_expanded": _train(learners, [_batch_of([x for i in g for x in expanded[i]]) for g in groups],
                                      "prefix"),
        }
    finally:
        ray.get([lw.shutdown.remote() for lw in learners], timeout=120)
        if started:
            ray.shutdown()
    n = len(sources)
    for r in runs.values():
        r.update(tokens_per_sentence=r["tokens"] / n, action_tokens_per_sentence=r["action_tokens"] / n,
                 sequences_per_sentence=r["sequences"] / n, seconds_per_sentence=r["wall_s"] / n,
                 tokens_per_s=r["tokens"] / r["wall_s"])
    one, base = runs["interleaved"], runs["prefix_expanded"]
    result = {
        "model": model, "data_set": cfg.data.train, "sentences": n, "lag_k": k,
        "chunk_size": factory.chunk_size(train_set.src_lang), "batch_size": size,
        "micro_batch_size": cfg.learner.micro_batch_size, "learner_ranks": cfg.learner.num_ranks,
        "lora": cfg.learner.lora.enabled, "dtype": cfg.learner.dtype,
        "source_units_mean": statistics.fmean(source_units(s.text, train_set.src_lang) for s in sources),
        "runs": runs,
        "baseline": "prefix_expanded",
        "tokens_ratio": one["tokens"] / base["tokens"],
        "wall_ratio": one["wall_s"] / base["wall_s"],
        "speedup": base["wall_s"] / one["wall_s"],
        # one SimulMask sequence per sentence = the last expanded sample (whole source, whole target)
        "prefix_simulmask_tokens_per_sentence": statistics.fmean(len(e[-1][0]) for e in expanded),
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
    }
    write_json_atomic(out_dir / "bench_sft.json", result)
    return result


def main(args: argparse.Namespace) -> int:
    from orchestration.training.learners import check_model

    cfg = load_config(args.config, args.overrides, schema=SftRootConfig)
    check_model(cfg)
    load_sft_data(cfg)                 # validate the data before starting anything
    out_dir = Path(args.out)
    r = run_bench(cfg, out_dir)
    one, base = r["runs"]["interleaved"], r["runs"]["prefix_expanded"]
    print(f"{r['sentences']} sentences: interleaved {one['tokens_per_sentence']:.0f} tokens/sentence "
          f"{one['wall_s']:.1f} s; prefix expansion {base['tokens_per_sentence']:.0f} tokens/sentence "
          f"({base['sequences_per_sentence']:.2f} samples) {base['wall_s']:.1f} s")
    print(f"tokens ratio {r['tokens_ratio']:.3f}  wall ratio {r['wall_ratio']:.3f}  speedup {r['speedup']:.2f}x"
          f"  -> {out_dir / 'bench_sft.json'}")
    return 0
