"""``launch.py train``: the SeqPO-SiMT loop (DESIGN §2.1-2.3, §3).

sample sources → streaming rollouts (RolloutPool) → fused rewards (RewardClient) → group
advantages → GRPO update (LearnerWorker ranks) → weight sync into the rollout engines →
periodic dev evaluation → checkpoint. Every step logs its components and timings.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from orchestration.checkpoint import latest_checkpoint, read_driver_state, write_checkpoint
from orchestration.config import RootConfig
from orchestration.config_loader import load_config, resolve_run_dir, write_resolved_config
from orchestration.cursor import DataCursor
from orchestration.data import Dataset, load_pairs, source_units
from orchestration.errors import UserInputError
from orchestration.metrics_log import MetricsLog, plot_curves
from orchestration.runtime import close_all, start_ray, write_json_atomic
from orchestration.train_parts import (DevResult, build_learners, evaluate_dev, group_metrics,
                                       learner_batch, policy_path, reward_groups, sync_names, to_sources)


def load_training_data(cfg: RootConfig) -> tuple[Dataset, list, Dataset]:
    """Training pairs (filtered by length) and the dev pairs, validated before anything starts."""
    train = load_pairs(cfg.data.train, cfg.data, seed=cfg.run.seed, purpose="train", limit=cfg.data.limit)
    keep = [p for p in train.pairs
            if cfg.train.min_source_units <= source_units(p.source, train.src_lang) <= cfg.train.max_source_units]
    if not keep:
        raise UserInputError(f"train.min_source_units/max_source_units: no pair of {cfg.data.train} has "
                             f"{cfg.train.min_source_units}-{cfg.train.max_source_units} source units")
    dev = load_pairs(cfg.data.dev, cfg.data, seed=cfg.run.seed, purpose="dev", limit=cfg.train.dev_size)
    return train, keep, dev


def check_model(cfg: RootConfig) -> None:
    """A local model path must be a HF model directory; anything else is taken as a hub id."""
    path = Path(cfg.model.path)
    local = path if path.is_absolute() else Path(__file__).resolve().parent.parent / path
    if local.exists():
        if not (local / "config.json").is_file():
            raise UserInputError(f"model.path={cfg.model.path}: {local} has no config.json; "
                                 "point it at a Hugging Face model directory")
    elif path.is_absolute() or cfg.model.path.startswith((".", "models/")):
        raise UserInputError(f"model.path={cfg.model.path}: {local} does not exist; `make setup` prepares the "
                             "CPU demo model there, or pass a Hugging Face id or another directory")
    policy_path(cfg)   # model.init_from must name a finished SFT run


class Trainer:
    def __init__(self, cfg: RootConfig, run_dir: Path, resume: bool = False):
        self.cfg, self.run_dir = cfg, run_dir
        self.train_set, self.train_pairs, self.dev_set = load_training_data(cfg)
        self.cursor = DataCursor(size=len(self.train_pairs), seed=cfg.run.seed)
        self.step, self.version = 0, 0
        self.history: dict[str, Any] = {}
        self.log = MetricsLog(run_dir, tensorboard=cfg.train.tensorboard)
        self._resume_from = latest_checkpoint(run_dir) if resume else None

    # --- setup ---------------------------------------------------------------------------------

    def start(self) -> None:
        from reward.client import RewardClient
        from rollout.worker import RolloutPool

        from orchestration.placement import build_plan, reserve
        from orchestration.weight_sync import WeightSync, backend_for

        cfg = self.cfg
        plan = build_plan(cfg)                  # pure: a config that cannot fit fails below, in seconds
        self._started_ray = start_ray(cfg.ray.address, cfg.ray.num_cpus)
        t0 = time.perf_counter()
        self.placement = reserve(plan, cfg.ray.start_timeout_s)
        self.learners = build_learners(cfg, self.placement, plan)
        self.rollout = RolloutPool(self._model_path(), cfg.model.dtype, cfg.rollout, cfg.run.seed,
                                   slots=[self.placement.options(s) for s in plan.rollout],
                                   start_timeout_s=cfg.ray.start_timeout_s, call_timeout_s=cfg.ray.sync_timeout_s)
        self.reward = RewardClient(cfg.reward.settings(), placement=[self.placement.options(s) for s in plan.reward],
                                   timeout_s=cfg.ray.call_timeout_s)
        self.reward.wait_ready(timeout_s=cfg.ray.start_timeout_s)
        self.sync_names = sync_names(cfg, self.learners)
        self.weights = WeightSync(self.learners, self.rollout, cfg.rollout.weight_sync, self.sync_names,
                                  tensor_parallel=cfg.rollout.engine.tensor_parallel_size, backend=backend_for(cfg),
                                  bucket_mb=cfg.rollout.weight_bucket_mb, timeout_s=cfg.ray.sync_timeout_s)
        self.weights.connect()
        self.rollout.on_replace = self.weights.replace   # a new worker joins and gets the current weights
        from orchestration.placement import describe

        write_json_atomic(self.run_dir / "placement.json", describe(plan))   # where every actor runs
        self.startup_s = time.perf_counter() - t0
        if self._resume_from is not None:
            self._restore(self._resume_from)

    def _model_path(self) -> str:
        return policy_path(self.cfg)

    def _restore(self, ckpt: Path) -> None:
        import ray

        state = read_driver_state(ckpt)
        ray.get([lw.load_checkpoint.remote(str(ckpt / "learner")) for lw in self.learners])
        self.step, self.version = state["step"], state["weight_version"]
        self.cursor = DataCursor.from_state(state["cursor"])
        self.history = state.get("history", {})
        self.log.truncate_after(self.step)
        self.sync(self.version)
        print(f"resumed from {ckpt} at step {self.step} (weight version {self.version})")

    # --- one step ------------------------------------------------------------------------------

    def sync(self, version: int) -> dict[str, float]:
        """Broadcast the learner's weights into every engine as ``version`` (orchestration.weight_sync)."""
        t0 = time.perf_counter()
        info = self.weights.push(version)
        self.version = version
        return {"time/sync_s": time.perf_counter() - t0, "time/sync_export_s": info["send_s"],
                "time/sync_load_s": info["engine_seconds"], "sync/bytes": info["bytes"]}

    def train_step(self) -> dict[str, Any]:
        import ray

        from learner.grpo import group_advantages
        from rollout.runner import Sampling

        cfg, t_step = self.cfg, time.perf_counter()
        idx = self.cursor.next_batch(cfg.train.sources_per_step)
        sources = to_sources([self.train_pairs[i] for i in idx], self.train_set)
        t0 = time.perf_counter()
        sp = cfg.rollout.sampling
        trajs, rstats = self.rollout.rollout(sources, sp.group_size, Sampling(sp.temperature, sp.top_p))
        rollout_s = time.perf_counter() - t0
        stale = {t["meta"]["weight_version"] for t in trajs} - {self.version}
        if stale:
            raise RuntimeError(f"rollout ran on weight version(s) {sorted(stale)}, expected {self.version}")
        t0 = time.perf_counter()
        scored = self.reward.score(reward_groups(trajs, sources, sp.group_size))
        reward_s = time.perf_counter() - t0
        import torch

        rewards = torch.tensor([g.rewards for g in scored.groups], dtype=torch.float64)
        ga = group_advantages(rewards, scale_by_std=cfg.learner.std_normalize)
        zero_groups = ga.zero_groups
        batch = learner_batch(trajs, ga.advantages.flatten().tolist())
        t0 = time.perf_counter()
        shards = batch.split(len(self.learners))
        counts = batch.counts()
        results = ray.get([lw.train_step.remote(shard, counts) for lw, shard in zip(self.learners, shards)])
        learn_s = time.perf_counter() - t0
        sync = self.sync(self.version + 1)
        self.step += 1
        m: dict[str, Any] = {"weight_version": self.version, "sources": [s.index for s in sources]}
        m.update(group_metrics(scored, trajs, int(zero_groups)))
        m.update({f"learner/{k}": v for k, v in results[0].items() if isinstance(v, (int, float))})
        m.update({"rollout/prefix_cache_hit_share": rstats["prefix_cache_hit_share"],
                  "rollout/generated_tokens": rstats["generated_tokens"],
                  "rollout/tokens_per_s": rstats["generated_tokens"] / max(rollout_s, 1e-9),
                  "reward/scorer": scored.scorer.name,
                  "time/rollout_s": rollout_s, "time/reward_s": reward_s, "time/update_s": learn_s, **sync})
        m["time/step_s"] = time.perf_counter() - t_step
        return m

    # --- loop ------------------------------------------------------------------------------------

    def evaluate(self, tag: str) -> DevResult:
        res = evaluate_dev(self.rollout, self.reward, self.dev_set, self.cfg)
        self.history[tag] = res.as_dict()
        return res

    def checkpoint(self) -> Path:
        import ray

        timeout = self.cfg.ray.call_timeout_s

        def parts(tmp: Path) -> None:
            # every rank takes part (under ZeRO-3 saving and gathering are collectives); rank 0 writes
            ray.get([lw.save_checkpoint.remote(str(tmp / "learner")) for lw in self.learners], timeout=timeout)
            mode = "adapter" if self.cfg.learner.lora.enabled else "full"
            ray.get([lw.save_weights.remote(str(tmp / ("adapter" if mode == "adapter" else "weights")), mode)
                     for lw in self.learners], timeout=timeout)

        return write_checkpoint(self.run_dir, self.step, {
            "weight_version": self.version, "cursor": self.cursor.state(), "history": self.history}, parts)

    def run(self, stop_after: int | None = None) -> dict[str, Any]:
        from tqdm import tqdm

        cfg = self.cfg
        if "before" not in self.history:
            before = self.evaluate("before")
            self.log.log(self.step, {f"dev/{k}": v for k, v in before.as_dict().items()})
        bar = tqdm(total=cfg.train.steps, initial=self.step, desc="train", unit="step")
        while self.step < cfg.train.steps:
            m = self.train_step()
            if cfg.train.eval_every and self.step % cfg.train.eval_every == 0 and self.step < cfg.train.steps:
                m.update({f"dev/{k}": v for k, v in self.evaluate(f"step-{self.step}").as_dict().items()})
            self.log.log(self.step, m)
            bar.update(1)
            bar.set_postfix(reward_q=f"{m['reward/quality_mean']:.1f}", AL=f"{m['reward/latency_mean']:.2f}",
                            kl=f"{m.get('learner/kl', 0.0):.3g}", s=f"{m['time/step_s']:.0f}")
            last = self.step == cfg.train.steps
            if last or (cfg.train.checkpoint_every and self.step % cfg.train.checkpoint_every == 0) \
                    or (stop_after is not None and self.step >= stop_after):
                if last:
                    after = self.evaluate("after")
                    self.log.log(self.step, {f"dev/{k}": v for k, v in after.as_dict().items()})
                self.checkpoint()
            if stop_after is not None and self.step >= stop_after:
                break
        bar.close()
        return self.history

    def close(self) -> None:
        import ray

        self.log.close()
        started = [name for name in ("weights", "rollout", "reward", "learners", "placement") if hasattr(self, name)]
        steps = {"weights": lambda: self.weights.close(), "rollout": lambda: self.rollout.shutdown(),
                 "reward": lambda: self.reward.close(),
                 "learners": lambda: ray.get([lw.shutdown.remote() for lw in self.learners], timeout=120),
                 "placement": lambda: self.placement.remove()}
        close_all([steps[name] for name in started],
                  getattr(self, "_started_ray", False))


def summary_table(history: dict[str, Any]) -> str:
    rows = [("dev reward", "reward"), ("quality", "quality"), ("AL", "AL"), ("LAAL", "LAAL")]
    before, after = history.get("before", {}), history.get("after", {})
    lines = [f"{'':12} {'before':>10} {'after':>10}"]
    for label, key in rows:
        b, a = before.get(key), after.get(key)
        lines.append(f"{label:12} {b if b is None else f'{b:10.3f}':>10} {a if a is None else f'{a:10.3f}':>10}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").is_file():
            raise UserInputError(f"--resume {run_dir}: no config.yaml there; pass a run directory of `train`")
        cfg = load_config(run_dir / "config.yaml", args.overrides)
    else:
        cfg = load_config(args.config, args.overrides)
        run_dir = resolve_run_dir(cfg)
    check_model(cfg)
    trainer = Trainer(cfg, run_dir, resume=bool(args.resume))   # validates data before any actor
    if not args.resume:
        cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"dir": str(run_dir)})})
        write_resolved_config(cfg, run_dir)
    print(f"run directory: {run_dir}")
    try:
        trainer.start()
        history = trainer.run(stop_after=args.stop_after)
    finally:
        trainer.close()
    png = plot_curves(trainer.log.rows(), run_dir / "curves.png")
    write_json_atomic(run_dir / "summary.json", {"history": history, "steps": trainer.step,
                                                 "startup_s": getattr(trainer, "startup_s", None)})
    if "after" in history:
        print(summary_table(history))
    print(f"curves: {png}\nmetrics: {run_dir / 'metrics.jsonl'}")
    return 0
