"""``launch.py sft``: the policy-consistent SFT warm start (DESIGN §2.5).

Parallel pairs → interleaved episodes built by the rollout's own code with the segmentation
rule (``rollout.sft_episodes``) → token ids and action masks → the DeepSpeed learner ranks'
cross-entropy step, one sequence per pair. Dev loss and a greedy interleaved rollout
evaluation (``train``'s dev evaluation: quality, AL, the dev reward) before training and after every epoch; after every epoch the policy is
written to ``RUN_DIR/model`` as a plain HF directory (LoRA merged), which
``train model.init_from=RUN_DIR`` starts from.
"""
from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

from orchestration.checkpoint import write_checkpoint
from orchestration.config_loader import load_config, resolve_run_dir, write_resolved_config
from orchestration.data import Dataset, Pair, load_pairs, source_units
from orchestration.errors import UserInputError
from orchestration.metrics_log import MetricsLog
from orchestration.runtime import close_all, start_ray, write_json_atomic
from orchestration.training.dev_eval import evaluate_dev
from orchestration.training.dev_instances import compare_dev, paired_table, write_instances
from orchestration.training.learners import SFT_MODEL_DIR, build_learners, export_model, policy_path, sync_names
from orchestration.training.sft_config import SftRootConfig
from orchestration.training.trajectories import to_sources

def load_sft_data(cfg: SftRootConfig) -> tuple[Dataset, list[Pair], Dataset]:
    """Training pairs (seeded shuffle, length filter, then ``sft.pairs`` or ``data.limit``) and the dev pairs."""
    train = load_pairs(cfg.data.train, cfg.data, seed=cfg.run.seed, purpose="train", shuffle=cfg.data.shuffle)
    lo, hi = cfg.sft.min_source_units, cfg.sft.max_source_units
    keep = [p for p in train.pairs if lo <= source_units(p.source, train.src_lang) <= hi]
    limit = cfg.sft.pairs or cfg.data.limit
    keep = keep[:limit] if limit else keep
    if not keep:
        raise UserInputError(f"sft.min_source_units/max_source_units: no pair of {cfg.data.train} has "
                             f"{lo}-{hi} source units")
    dev = load_pairs(cfg.data.dev, cfg.data, seed=cfg.run.seed, purpose="dev", limit=cfg.sft.dev_size)
    return train, keep, dev


def episode_factory(cfg: SftRootConfig, model_path: str):
    from transformers import AutoTokenizer

    from rollout.runner import EpisodeFactory

    return EpisodeFactory(AutoTokenizer.from_pretrained(model_path), cfg.rollout.episode)


def sft_batch(trajs: Sequence) -> Any:
    """Episodes as the learner sees them: token ids and action masks (no advantages, no log-probs)."""
    from learner.batch import TrainBatch, TrainTrajectory

    return TrainBatch([TrainTrajectory(t.token_ids, t.action_mask, 0.0, [0.0] * len(t.token_ids)) for t in trajs])


def sft_sequences(cfg: SftRootConfig, factory: Any, sources: Sequence) -> tuple[list, int]:
    """The learner's sequences of ``sources`` in ``sft.layout``, and how many pairs were skipped.

    interleaved: the rollout's own episodes (``rollout.sft_episodes.sft_trajectory``), one per pair.
    simulmask: one prefix-layout sequence per pair with its SimulMask reads, its source in
    ``sft.source_slots`` reserved positions; a pair whose source needs more slots, or whose
    source prefixes do not tokenize as prefixes of the whole, is skipped."""
    from learner.batch import PrefixSegments, TrainTrajectory
    from rollout.prefix_layout import PrefixPrompter
    from rollout.sft_episodes import prefix_sequence, sft_trajectories

    k = cfg.sft.lag_k
    if cfg.sft.layout == "interleaved":
        return sft_batch(sft_trajectories(factory, sources, k)).trajectories, 0
    prompter, slots = PrefixPrompter(factory.tokenizer), cfg.sft.source_slots
    out, skipped = [], 0
    for src in sources:
        try:
            seq = prefix_sequence(factory, src, k, prompter)
        except ValueError:
            skipped += 1
            continue
        if seq.lengths["source"] > slots:
            skipped += 1
            continue
        n, t = len(seq.token_ids), seq.lengths["target"]
        out.append(TrainTrajectory(seq.token_ids, [0] * (n - t) + [1] * t, 0.0, [0.0] * n,
                                   segments=PrefixSegments(**seq.lengths, source_slots=slots),
                                   reads=tuple(seq.reads)))
    return out, skipped


class SftRun:
    def __init__(self, cfg: SftRootConfig, run_dir: Path):
        self.cfg, self.run_dir = cfg, run_dir
        self.train_set, self.pairs, self.dev_set = load_sft_data(cfg)
        self.model_path = policy_path(cfg)
        self.history: dict[str, Any] = {}
        self.step = 0
        self.log = MetricsLog(run_dir, tensorboard=cfg.sft.tensorboard)

    def start(self) -> None:
        from learner.batch import TrainBatch

        cfg = self.cfg
        t0 = time.perf_counter()
        self.factory = episode_factory(cfg, self.model_path)
        self.train_trajs, self.skipped = sft_sequences(cfg, self.factory, to_sources(self.pairs, self.train_set))
        if len(self.train_trajs) < cfg.learner.num_ranks:
            raise UserInputError(f"sft.source_slots={cfg.sft.source_slots}: {self.skipped} of {len(self.pairs)} "
                                 "training pairs do not fit the prefix layout; raise sft.source_slots")
        self.dev_sources = to_sources(self.dev_set.pairs, self.dev_set)
        dev, self.dev_skipped = sft_sequences(cfg, self.factory, self.dev_sources)
        self.dev_batch = TrainBatch(dev)
        self.build_s = time.perf_counter() - t0
        from orchestration.placement import build_plan, reserve

        learner = cfg.learner.model_copy(update={"lr": cfg.sft.lr}) if cfg.sft.lr is not None else cfg.learner
        root = cfg.model_copy(
            update={"model": cfg.model.model_copy(update={"path": self.model_path, "init_from": None}),
                    "learner": learner})
        plan = build_plan(root)
        if not cfg.sft.eval_rollouts:
            plan.groups = [g for g in plan.groups if g.name in {s.group for s in plan.learner}]
        self._started_ray = start_ray(cfg.ray.address, cfg.ray.num_cpus)
        self.placement = reserve(plan, cfg.ray.start_timeout_s)
        self.learners = build_learners(root, self.placement, plan)
        self.pool = self.reward = None
        if cfg.sft.eval_rollouts:
            from orchestration.weight_sync import WeightSync, backend_for
            from rollout.worker import RolloutPool

            self.pool = RolloutPool(self.model_path, cfg.model.dtype, cfg.rollout, cfg.run.seed,
                                    slots=[self.placement.options(s) for s in plan.rollout],
                                    start_timeout_s=cfg.ray.start_timeout_s, call_timeout_s=cfg.ray.sync_timeout_s)
            self.sync_mode = cfg.rollout.weight_sync
            if self.sync_mode == "merged" and not cfg.learner.lora.enabled:
                self.sync_mode = "full"
            self.sync_names = sync_names(cfg.model_copy(update={"rollout": cfg.rollout.model_copy(
                update={"weight_sync": self.sync_mode})}), self.learners)
            self.weights = WeightSync(self.learners, self.pool, self.sync_mode, self.sync_names,
                                      tensor_parallel=cfg.rollout.engine.tensor_parallel_size,
                                      backend=backend_for(cfg), bucket_mb=cfg.rollout.weight_bucket_mb,
                                      timeout_s=cfg.ray.sync_timeout_s)
            self.weights.connect()
            self.pool.on_replace = self.weights.replace
            from reward.client import RewardClient

            self.reward = RewardClient(cfg.reward.settings(), placement=[self.placement.options(s) for s in plan.reward],
                                       timeout_s=cfg.ray.call_timeout_s)
            self.reward.wait_ready(timeout_s=cfg.ray.start_timeout_s)

    def dev_loss(self) -> float:
        import ray

        shards = self.dev_batch.split(len(self.learners))
        out = ray.get([lw.sft_eval.remote(s) for lw, s in zip(self.learners, shards)],
                      timeout=self.cfg.ray.call_timeout_s)
        return out[0]["loss"]

    def dev_rollouts(self, tag: str, version: int) -> dict[str, float]:
        """Greedy interleaved rollouts on dev with the current weights: the dev evaluation of
        ``train`` (quality, AL, LAAL, waits and the dev reward), so the two compare."""
        t0 = time.perf_counter()
        if version > 0:
            self.weights.push(version)
        dev = evaluate_dev(self.pool, self.reward, self.dev_set)
        write_instances(self.run_dir, tag, dev.instances)   # per sentence, for the paired intervals
        res = dev.as_dict()
        return {k: v for k, v in res.items() if k != "scorer"} | {"seconds": time.perf_counter() - t0}

    def evaluate(self, tag: str, version: int) -> dict[str, float]:
        t0 = time.perf_counter()
        res: dict[str, float] = {"loss": self.dev_loss(), "loss_seconds": time.perf_counter() - t0}
        if self.pool is not None:
            res.update(self.dev_rollouts(tag, version))
        self.history[tag] = res
        self.log.log(self.step, {f"dev/{k}": v for k, v in res.items()})
        return res

    def epoch(self, epoch: int, bar) -> dict[str, float]:
        import ray

        from learner.batch import TrainBatch

        order = list(range(len(self.train_trajs)))
        random.Random(self.cfg.run.seed + epoch).shuffle(order)
        size, n = self.cfg.sft.batch_size, len(self.learners)
        losses, tokens, seconds = [], 0.0, 0.0
        for start in range(0, len(order), size):
            idx = order[start:start + size]
            if len(idx) < n:      # too few sentences left to give every rank one
                break
            batch = TrainBatch([self.train_trajs[i] for i in idx])
            shards = batch.split(n)
            m = ray.get([lw.sft_step.remote(s, batch.counts()["tokens"]) for lw, s in zip(self.learners, shards)],
                        timeout=self.cfg.ray.call_timeout_s)[0]
            self.step += 1
            losses.append(m["loss"])
            tokens += m["forward_tokens"]
            seconds += m["seconds"]
            self.log.log(self.step, {f"sft/{k}": v for k, v in m.items()} | {"epoch": epoch})
            bar.update(1)
            bar.set_postfix(loss=f"{m['loss']:.3f}", tok_s=f"{m['tokens_per_s']:.0f}")
        return {"train_loss_mean": statistics.fmean(losses), "forward_tokens": tokens, "seconds": seconds,
                "steps": len(losses)}

    def save(self, epoch: int) -> Path | None:
        import ray

        timeout = self.cfg.ray.call_timeout_s

        def parts(tmp: Path) -> None:
            if self.cfg.learner.lora.enabled:   # every rank: gathering under ZeRO-3 is a collective
                ray.get([lw.save_weights.remote(str(tmp / "adapter"), "adapter") for lw in self.learners],
                        timeout=timeout)

        write_checkpoint(self.run_dir, epoch, {"epoch": epoch, "step": self.step, "history": self.history}, parts)
        if not self.cfg.sft.export_model:
            return None
        return export_model(self.learners, Path(self.model_path), self.run_dir / SFT_MODEL_DIR,
                            {"base_model": self.model_path, "sft_run": str(self.run_dir), "epoch": epoch,
                             "lora_merged": self.cfg.learner.lora.enabled, "layout": self.cfg.sft.layout,
                             "source_slots": self.cfg.sft.source_slots if self.cfg.sft.layout == "simulmask"
                             else None}, timeout)

    def run(self) -> dict[str, Any]:
        from tqdm import tqdm

        cfg = self.cfg
        self.evaluate("before", 0)
        per_epoch = sum(1 for s in range(0, len(self.train_trajs), cfg.sft.batch_size)
                        if len(self.train_trajs) - s >= len(self.learners))
        bar = tqdm(total=per_epoch * cfg.sft.epochs, desc="sft", unit="step")
        for epoch in range(1, cfg.sft.epochs + 1):
            stats = self.epoch(epoch, bar)
            self.history[f"train-epoch-{epoch}"] = stats
            res = self.evaluate(f"epoch-{epoch}", epoch)
            bar.write(f"epoch {epoch}: train loss {stats['train_loss_mean']:.4f}  dev loss {res['loss']:.4f}"
                      + (f"  quality {res['quality']:.2f}  AL {res['AL']:.2f}  reward {res['reward']:.3f}"
                         if "quality" in res else ""))
            self.save(epoch)
        bar.close()
        return self.history

    def close(self) -> None:
        import ray

        self.log.close()
        closers = [lambda: ray.get([lw.shutdown.remote() for lw in getattr(self, "learners", [])], timeout=120)]
        if getattr(self, "pool", None) is not None:
            closers.insert(0, self.pool.shutdown)
        if getattr(self, "reward", None) is not None:
            closers.insert(0, self.reward.close)
        if getattr(self, "placement", None) is not None:
            closers.append(self.placement.remove)
        close_all(closers, getattr(self, "_started_ray", False))


def main(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides, schema=SftRootConfig)
    run_sft(cfg, resolve_run_dir(cfg))
    return 0


def run_sft(cfg: SftRootConfig, run_dir: Path) -> dict[str, Any]:
    """One SFT run into ``run_dir``: its summary (also in ``summary.json``)."""
    from orchestration.training.learners import check_model

    check_model(cfg)
    run = SftRun(cfg, run_dir)          # validates data and model paths before any actor
    cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"dir": str(run_dir)})})
    write_resolved_config(cfg, run_dir)
    print(f"run directory: {run_dir}")
    t0 = time.perf_counter()
    try:
        run.start()
        print(f"{len(run.train_trajs)} training sequences, {len(run.dev_batch)} dev sequences "
              f"({cfg.sft.layout} training, {cfg.rollout.episode.layout} episodes; built in {run.build_s:.1f} s"
              + (f"; skipped {run.skipped} training, {run.dev_skipped} dev pairs" if run.skipped or run.dev_skipped
                 else "") + ")")
        history = run.run()
    finally:
        run.close()
    last = f"epoch-{cfg.sft.epochs}"
    before, after = history["before"], history[last]
    # greedy dev rollouts before and after, paired by sentence (None without dev rollouts)
    paired = compare_dev(run_dir, "before", last, seed=cfg.run.seed)
    summary = {"history": history, "steps": run.step, "seconds": time.perf_counter() - t0,
               "paired": {k: v.as_dict() for k, v in (paired or {}).items()}}
    write_json_atomic(run_dir / "summary.json", summary)
    print(f"dev loss   {before['loss']:10.4f} -> {after['loss']:10.4f}")
    if paired is not None:
        print(paired_table(paired))
    if cfg.sft.export_model:
        print(f"policy: {run_dir / SFT_MODEL_DIR}  (start training with model.init_from={run_dir})")
    return summary
