"""``launch.py bench sft``: three SFT layouts of the same pairs, each from the same starting weights.

The same pairs, segmented by the same rule, are trained on by fresh DeepSpeed learner ranks
three ways: interleaved episodes (one sequence per sentence, loss on every step's output), the
prefix layout in one pass per sentence with SimulMask masks and ExPosST positions
(``sft.layout: simulmask``), and the prefix layout with data expansion (one sample per write:
the source read so far, the translation so far, loss on the new piece), the baseline. Each
takes one optimizer step per ``sft.batch_size`` sentences and is scored before and after on
the dev pairs in its own layout (mean cross-entropy per target token). Writes
``OUT/bench_sft.json`` with tokens per sentence, wall time, dev loss, and the ratios against
the baseline measured in the same run.
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
from orchestration.errors import UserInputError
from orchestration.training.sft import episode_factory, load_sft_data, sft_sequences
from orchestration.training.sft_config import SftRootConfig
from orchestration.training.learners import build_learners, policy_path
from orchestration.training.trajectories import to_sources


def _expanded(samples: Sequence[tuple[list[int], list[int]]]) -> list:
    from learner.batch import TrainTrajectory

    return [TrainTrajectory(ids, mask, 0.0, [0.0] * len(ids)) for ids, mask in samples]


def _layouts(cfg: SftRootConfig, factory, sources) -> tuple[dict[str, list[list]], int]:
    """Per layout, the learner's sequences of every source (a list per source: data expansion
    gives several); sources that do not fit the prefix layout are left out of all three."""
    from rollout.sft_episodes import prefix_samples

    simulmask_cfg = cfg.model_copy(update={"sft": cfg.sft.model_copy(update={"layout": "simulmask"})})
    interleaved_cfg = cfg.model_copy(update={"sft": cfg.sft.model_copy(update={"layout": "interleaved"})})
    out: dict[str, list[list]] = {"interleaved": [], "simulmask": [], "prefix_expanded": []}
    skipped = 0
    for src in sources:
        one, lost = sft_sequences(simulmask_cfg, factory, [src])
        if lost:
            skipped += 1
            continue
        out["simulmask"].append(one)
        out["interleaved"].append(sft_sequences(interleaved_cfg, factory, [src])[0])
        out["prefix_expanded"].append(_expanded(prefix_samples(factory, src, cfg.sft.lag_k)))
    return out, skipped


def _dev_loss(learners, seqs: list, timeout_s: float) -> float:
    import ray

    from learner.batch import TrainBatch

    shards = TrainBatch(seqs).split(len(learners))
    return ray.get([lw.sft_eval.remote(s) for lw, s in zip(learners, shards)], timeout=timeout_s)[0]["loss"]


def _train(learners, batches: list, label: str, timeout_s: float) -> dict[str, Any]:
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


def _arm(cfg: SftRootConfig, model: str, label: str, train: list[list], dev: list[list],
         groups: list[list[int]]) -> dict[str, Any]:
    """Fresh learner ranks from ``model``: dev loss, one timed pass, dev loss."""
    import ray

    from learner.batch import TrainBatch

    from orchestration.placement import build_plan, reserve

    timeout = cfg.ray.call_timeout_s
    root = cfg.model_copy(update={"model": cfg.model.model_copy(update={"path": model, "init_from": None})})
    plan = build_plan(root)
    plan.groups = [g for g in plan.groups if g.name in {s.group for s in plan.learner}]
    placement = reserve(plan, cfg.ray.start_timeout_s)     # released after the arm, for the next one
    learners = build_learners(root, placement, plan)
    try:
        dev_seqs = [x for seqs in dev for x in seqs]
        before = _dev_loss(learners, dev_seqs, timeout)
        run = _train(learners, [TrainBatch([x for i in g for x in train[i]]) for g in groups], label, timeout)
        run.update(dev_loss_before=before, dev_loss_after=_dev_loss(learners, dev_seqs, timeout))
        return run
    finally:
        ray.get([lw.shutdown.remote() for lw in learners], timeout=120)
        for lw in learners:
            ray.kill(lw)
        placement.remove()


def run_bench(cfg: SftRootConfig, out_dir: Path) -> dict[str, Any]:
    import ray

    train_set, pairs, dev_set = load_sft_data(cfg)
    model = policy_path(cfg)
    factory = episode_factory(cfg, model)
    train, skipped = _layouts(cfg, factory, to_sources(pairs, train_set))
    dev, dev_skipped = _layouts(cfg, factory, to_sources(dev_set.pairs, dev_set))
    n = len(train["interleaved"])
    if n < cfg.learner.num_ranks or not dev["interleaved"]:
        raise UserInputError(f"sft.source_slots={cfg.sft.source_slots}: too few pairs fit the prefix layout "
                             f"({n} training, {len(dev['interleaved'])} dev); raise sft.source_slots")
    size = cfg.sft.batch_size
    groups = [list(range(a, min(a + size, n))) for a in range(0, n, size)]
    started = start_ray(cfg.ray.address, cfg.ray.num_cpus)
    try:
        # every arm starts alike (fresh ranks, the dev-loss forward before the timed pass), so
        # each pays the same one-off costs and the ratios compare the layouts
        runs = {label: _arm(cfg, model, label, train[label], dev[label], groups)
                for label in ("interleaved", "simulmask", "prefix_expanded")}
    finally:
        if started:
            ray.shutdown()
    for r in runs.values():
        r.update(tokens_per_sentence=r["tokens"] / n, action_tokens_per_sentence=r["action_tokens"] / n,
                 sequences_per_sentence=r["sequences"] / n, seconds_per_sentence=r["wall_s"] / n,
                 tokens_per_s=r["tokens"] / r["wall_s"])
    base = runs["prefix_expanded"]
    result = {
        "model": model, "data_set": cfg.data.train, "dev_set": cfg.data.dev, "sentences": n,
        "dev_sentences": len(dev["interleaved"]), "skipped_pairs": skipped, "skipped_dev_pairs": dev_skipped,
        "lag_k": cfg.sft.lag_k, "chunk_size": factory.chunk_size(train_set.src_lang), "batch_size": size,
        "source_slots": cfg.sft.source_slots, "micro_batch_size": cfg.learner.micro_batch_size,
        "learner_ranks": cfg.learner.num_ranks, "lora": cfg.learner.lora.enabled, "dtype": cfg.learner.dtype,
        "source_units_mean": statistics.fmean(source_units(s.text, train_set.src_lang)
                                              for s in to_sources(pairs, train_set)),
        "runs": runs,
        "baseline": "prefix_expanded",
        "ratios": {label: {"tokens": r["tokens"] / base["tokens"], "wall": r["wall_s"] / base["wall_s"],
                           "speedup": base["wall_s"] / r["wall_s"]} for label, r in runs.items()},
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
    print(f"{r['sentences']} sentences ({r['skipped_pairs']} skipped), dev {r['dev_sentences']}:")
    for label, run in r["runs"].items():
        ratio = r["ratios"][label]
        print(f"  {label:16} {run['tokens_per_sentence']:6.0f} tokens/sentence  {run['wall_s']:7.1f} s  "
              f"dev loss {run['dev_loss_before']:.3f} -> {run['dev_loss_after']:.3f}  "
              f"tokens x{ratio['tokens']:.3f}  speedup {ratio['speedup']:.2f}x")
    print(f"  -> {out_dir / 'bench_sft.json'}")
    return 0
