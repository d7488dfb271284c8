"""``launch.py train``: the SeqPO-SiMT loop (DESIGN §2.1-2.3, §3).

sample sources → streaming rollouts (RolloutPool) → fused rewards (RewardClient) → group
advantages → GRPO update (LearnerWorker ranks) → weight sync into the rollout engines →
periodic dev evaluation → checkpoint. Every step logs its components and timings.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from orchestration.checkpoint import (CheckpointWriteError, check_writable, latest_checkpoint, read_driver_state,
                                      write_checkpoint)
from orchestration.config import RootConfig
from orchestration.config_loader import load_config, resolve_run_dir, write_resolved_config
from orchestration.training.cursor import DataCursor
from orchestration.training.dev_instances import compare_dev, write_instances
from orchestration.errors import UserInputError
from orchestration.metrics_log import MetricsLog, plot_curves
from orchestration.training.overlap import RolloutAhead, depth_of
from orchestration.runtime import close_all, start_ray, write_json_atomic
from orchestration.training.dev_eval import DevResult, evaluate_dev
from orchestration.training.cursor import load_training_data
from orchestration.training.dev_instances import paired_table, summary_table
from orchestration.training.learners import (SFT_MODEL_DIR, build_learners, check_model, export_model, policy_path,
                                             seed_torch, sync_names, wait_ranks)
from orchestration.training.trajectories import group_metrics, learner_batch, reward_groups, save_rollouts, to_sources
from orchestration.training.learners import RunStopped, resume_hint


class TrainingRun:
    def __init__(self, cfg: RootConfig, run_dir: Path, resume: bool = False):
        self.cfg, self.run_dir = cfg, run_dir
        self.train_set, self.train_pairs, self.dev_set = load_training_data(cfg)
        check_writable(run_dir, "--resume" if resume else "run.dir")   # before anything is created there
        self.cursor = DataCursor(size=len(self.train_pairs), seed=cfg.run.seed)
        self.step, self.version = 0, 0
        self.history: dict[str, Any] = {}
        self.log = MetricsLog(run_dir, tensorboard=cfg.train.tensorboard)
        self._resume_from = latest_checkpoint(run_dir) if resume else None
        self._stale_redone = 0

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
        self.ahead = RolloutAhead(self._produce, depth_of(cfg.train.mode, cfg.train.max_staleness),
                                  timeout_s=cfg.train.call_timeout_s)
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
        state = read_driver_state(ckpt)
        self._learner_call("load_checkpoint", str(ckpt / "learner"))
        self.step, self.version = state["step"], state["weight_version"]
        self.cursor = DataCursor.from_state(state["cursor"])
        self.history = state.get("history", {})
        # batches rolled out ahead of the learner when the checkpoint was taken: trained next, not redrawn
        self.ahead.restore({int(k): v for k, v in state.get("ahead", {}).items()})
        self.log.truncate_after(self.step)   # steps after the checkpoint (a killed run's) are redone
        self.sync(self.version)
        print(f"resumed from {ckpt} at step {self.step} (weight version {self.version})")

    def _learner_call(self, method: str, *args: Any, per_rank: list[tuple] | None = None,
                      what: str | None = None) -> list[Any]:
        """``method`` on every learner rank at once (they are collective). A rank that dies or
        hangs ends the run with a message naming it and the checkpoint to resume from."""
        calls = per_rank if per_rank is not None else [args] * len(self.learners)
        refs = [getattr(lw, method).remote(*a) for lw, a in zip(self.learners, calls)]
        try:
            return wait_ranks(refs, what or method, self.cfg.train.call_timeout_s, self.run_dir)
        except RunStopped:
            self._learners_broken = True   # the others wait in a collective: close() kills them
            raise

    # --- one step ------------------------------------------------------------------------------

    def sync(self, version: int) -> dict[str, float]:
        """Broadcast the learner's weights into every engine as ``version`` (orchestration.weight_sync)."""
        t0 = time.perf_counter()
        info = self.weights.push(version)
        self.version = version
        return {"time/sync_s": time.perf_counter() - t0, "time/sync_export_s": info["send_s"],
                "time/sync_load_s": info["engine_seconds"], "sync/bytes": info["bytes"]}

    def _plan(self, step: int) -> list:
        """The sources of ``step``: the next draws of the cursor, seeded by (seed, step, draw)."""
        from rollout.types import derive_seed

        cfg = self.cfg
        first_draw = self.cursor.draws
        idx = self.cursor.next_batch(cfg.train.sources_per_step)
        draws = [first_draw + k for k in range(len(idx))]   # unique group ids: a pair may come twice
        seeds = [derive_seed(cfg.run.seed, step, d) for d in draws]
        return to_sources([self.train_pairs[i] for i in idx], self.train_set, draws, seeds)

    def _produce(self, step: int) -> dict[str, Any]:
        """Plan and roll out ``step`` (in the background thread under ``one_step_off``/``async``)."""
        from dataclasses import asdict

        sources = self._plan(step)
        t0 = time.perf_counter()
        trajs, rstats = self._pool_rollout(sources)
        return {"sources": [asdict(s) for s in sources], "trajectories": trajs, "stats": rstats,
                "rollout_s": time.perf_counter() - t0}

    def _pool_rollout(self, sources: list) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        from rollout.types import Sampling

        sp = self.cfg.rollout.sampling
        try:
            return self.rollout.rollout(sources, sp.group_size, Sampling(sp.temperature, sp.top_p),
                                        timeout_s=self.cfg.train.call_timeout_s)
        except TimeoutError as exc:
            raise RunStopped(f"{exc} (train.call_timeout_s); the run stopped. {resume_hint(self.run_dir)}") from None

    def _max_lag(self) -> int:
        mode = self.cfg.train.mode
        return 0 if mode == "sync" else 1 if mode == "one_step_off" else self.cfg.train.max_staleness

    def _take(self, step: int) -> dict[str, Any]:
        """Batch ``step``, checked to be at most ``_max_lag()`` weight versions behind."""
        batch = self.ahead.take(step)
        versions = {t["meta"]["weight_version"] for t in batch["trajectories"]}
        too_old = {v for v in versions if self.version - v > self._max_lag()}
        if too_old and self.cfg.train.mode == "async":
            # timing let this batch fall behind: roll its sources out again on the current weights
            self._stale_redone += 1
            batch = self._rollout_sources(batch["sources"])
            versions = {t["meta"]["weight_version"] for t in batch["trajectories"]}
            too_old = {v for v in versions if self.version - v > self._max_lag()}
        if too_old or any(v > self.version for v in versions):
            raise RuntimeError(f"rollout ran on weight version(s) {sorted(versions)} with the learner at "
                               f"{self.version} (train.mode={self.cfg.train.mode}, lag allowed {self._max_lag()})")
        return batch

    def _rollout_sources(self, sources: list[dict[str, Any]]) -> dict[str, Any]:
        from rollout.types import Source

        srcs = [Source(**s) for s in sources]
        t0 = time.perf_counter()
        with self.ahead.exclusive():
            trajs, rstats = self._pool_rollout(srcs)
        return {"sources": sources, "trajectories": trajs, "stats": rstats, "rollout_s": time.perf_counter() - t0}

    def _score(self, sources: list, trajs: list[dict[str, Any]]):
        import torch

        from learner.grpo import group_advantages

        scored = self.reward.score(reward_groups(trajs, sources, self.cfg.rollout.sampling.group_size))
        rewards = torch.tensor([g.rewards for g in scored.groups], dtype=torch.float64)
        return scored, rewards, group_advantages(rewards, scale_by_std=self.cfg.learner.std_normalize)

    def train_step(self) -> dict[str, Any]:
        from dataclasses import asdict

        from learner.grpo import informative_groups
        from rollout.types import Source, derive_seed

        cfg, t_step = self.cfg, time.perf_counter()
        step = self.step + 1
        t0 = time.perf_counter()
        batch = self._take(step)
        self.ahead.prefetch(step + 1, cfg.train.steps)   # overlaps this step's update (not in sync mode)
        wait_s = time.perf_counter() - t0
        sources = [Source(**d) for d in batch["sources"]]
        trajs, rstats = batch["trajectories"], batch["stats"]
        group = cfg.rollout.sampling.group_size
        t0 = time.perf_counter()
        scored, rewards, ga = self._score(sources, trajs)
        reward_s = time.perf_counter() - t0
        zero_groups = ga.zero_groups
        advantages = ga.advantages.flatten().tolist()
        keep_sources, keep_trajs, keep_adv = sources, trajs, advantages
        filtered: dict[str, float] = {}
        if cfg.train.filter_zero_advantage:
            keep = informative_groups(rewards).tolist()
            drawn, dropped, rounds = len(sources), keep.count(False), 0
            keep_sources = [s for s, k in zip(sources, keep) if k]
            keep_trajs = [t for g, k in enumerate(keep) if k for t in trajs[g * group:(g + 1) * group]]
            keep_adv = [a for g, k in enumerate(keep) if k for a in advantages[g * group:(g + 1) * group]]
            while len(keep_sources) < len(sources) and rounds < cfg.train.fill_rounds:
                rounds += 1   # replace dropped groups with fresh draws (same seeding rule, round-tagged step)
                extra = self._plan(step)[: len(sources) - len(keep_sources)]   # fresh draws, own seeds
                more = self._rollout_sources([asdict(s) for s in extra])
                sc2, rw2, ga2 = self._score(extra, more["trajectories"])
                ok = informative_groups(rw2).tolist()
                drawn += len(extra)
                dropped += ok.count(False)
                adv2 = ga2.advantages.flatten().tolist()
                for g, k in enumerate(ok):
                    if k:
                        keep_sources.append(extra[g])
                        keep_trajs.extend(more["trajectories"][g * group:(g + 1) * group])
                        keep_adv.extend(adv2[g * group:(g + 1) * group])
            filtered = {"train/groups_drawn": drawn, "train/groups_dropped": dropped, "train/fill_rounds": rounds,
                        "train/groups_trained": len(keep_sources)}
        results: list[dict[str, Any]] = [{}]
        t0 = time.perf_counter()
        if len(keep_trajs) >= len(self.learners):
            train_batch = learner_batch(keep_trajs, keep_adv)
            shards = train_batch.split(len(self.learners))
            counts = train_batch.counts()
            # dropout and any other learner randomness: a function of (seed, step, rank), not history
            self._learner_call("__ray_call__", what="train_step (seeding)",
                               per_rank=[(seed_torch, derive_seed(cfg.run.seed, step, "learner", r))
                                         for r in range(len(self.learners))])
            results = self._learner_call("train_step", per_rank=[(shard, counts) for shard in shards])
        learn_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        if cfg.train.mode == "one_step_off":
            self.ahead.settle([step + 1])   # batch t+1 finishes on the weights it started on
        settle_s = time.perf_counter() - t0
        with self.ahead.exclusive():
            sync = self.sync(self.version + 1)
        self.step = step
        lags = [self.version - 1 - t["meta"]["weight_version"] for t in trajs]
        m: dict[str, Any] = {"weight_version": self.version, "sources": [s.index for s in sources],
                             "groups": [s.group for s in sources]}
        m.update(group_metrics(scored, trajs, int(zero_groups)))
        m.update(filtered)
        m.update({f"learner/{k}": v for k, v in results[0].items() if isinstance(v, (int, float))})
        m.update({"rollout/prefix_cache_hit_share": rstats["prefix_cache_hit_share"],
                  "rollout/generated_tokens": rstats["generated_tokens"],
                  "rollout/tokens_per_s": rstats["generated_tokens"] / max(batch["rollout_s"], 1e-9),
                  "rollout/staleness_mean": sum(lags) / len(lags), "rollout/staleness_max": max(lags),
                  "train/stale_batches_redone": self._stale_redone,
                  "reward/scorer": scored.scorer.name,
                  "rollout/worker_restarts": self.rollout.restarts,
                  "reward/replica_restarts": self.reward.restarts,
                  "time/rollout_s": batch["rollout_s"], "time/rollout_wait_s": wait_s + settle_s,
                  "time/reward_s": reward_s, "time/update_s": learn_s, **sync})
        m["time/step_s"] = time.perf_counter() - t_step
        if cfg.train.save_rollouts:
            save_rollouts(self.run_dir, self.step, sources, trajs, scored, advantages)
        return m

    # --- loop ------------------------------------------------------------------------------------

    def evaluate(self, tag: str) -> DevResult:
        with self.ahead.exclusive():   # no rollout ahead runs on the pool meanwhile
            res = evaluate_dev(self.rollout, self.reward, self.dev_set)
        write_instances(self.run_dir, tag, res.instances)   # per sentence, for the paired intervals
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

        self.ahead.settle()   # the cursor already counts batches under way: keep them with it
        return write_checkpoint(self.run_dir, self.step, {
            "weight_version": self.version, "cursor": self.cursor.state(), "history": self.history,
            "ahead": {str(k): v for k, v in self.ahead.pending().items()}}, parts)

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
                try:
                    self.checkpoint()
                except CheckpointWriteError as exc:
                    raise RunStopped(f"{exc}; free space in or fix {self.run_dir}, then continue with "
                                     f"`launch.py train --resume {self.run_dir}`") from None
                if last and cfg.train.export_model:
                    export_model(self.learners, self._model_path(), self.run_dir / SFT_MODEL_DIR,
                                 {"base_model": self._model_path(), "train_run": str(self.run_dir), "step": self.step,
                                  "lora_merged": cfg.learner.lora.enabled}, cfg.ray.call_timeout_s)
            if stop_after is not None and self.step >= stop_after:
                break
        bar.close()
        return self.history

    def close(self) -> None:
        import ray

        def close_learners() -> None:
            if getattr(self, "_learners_broken", False):
                for lw in self.learners:
                    ray.kill(lw)
            else:
                ray.get([lw.shutdown.remote() for lw in self.learners], timeout=120)

        self.log.close()
        if hasattr(self, "ahead"):
            self.ahead.close()
        started = [name for name in ("weights", "rollout", "reward", "learners", "placement") if hasattr(self, name)]
        steps = {"weights": lambda: self.weights.close(), "rollout": lambda: self.rollout.shutdown(),
                 "reward": lambda: self.reward.close(), "learners": close_learners,
                 "placement": lambda: self.placement.remove()}
        close_all([steps[name] for name in started], getattr(self, "_started_ray", False))


def main(args: argparse.Namespace) -> int:
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").is_file():
            raise UserInputError(f"--resume {run_dir}: no config.yaml there; pass a run directory of `train`")
        cfg = load_config(run_dir / "config.yaml", args.overrides)
        latest_checkpoint(run_dir)   # refuse before anything starts when there is nothing to resume
    else:
        cfg = load_config(args.config, args.overrides)
        run_dir = resolve_run_dir(cfg)
    return run_training(cfg, run_dir, resume=bool(args.resume), overrides=list(args.overrides or []),
                        stop_after=args.stop_after)


def run_training(cfg, run_dir: Path, *, resume: bool = False, overrides: list[str] = (),
                 stop_after: int | None = None) -> int:
    """Train (or resume) one run in ``run_dir``; 0 when it finished, 1 when a rank stopped it."""
    check_model(cfg)
    trainer = TrainingRun(cfg, run_dir, resume=resume)   # validates data before any actor
    if resume:
        record_resume(run_dir, trainer._resume_from, list(overrides))
        if overrides:
            write_resolved_config(cfg, run_dir)   # a later resume continues with these values
    else:
        cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"dir": str(run_dir)})})
        write_resolved_config(cfg, run_dir)
    print(f"run directory: {run_dir}")
    try:
        trainer.start()
        history = trainer.run(stop_after=stop_after)
    except RunStopped as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        trainer.close()
    png = plot_curves(trainer.log.rows(), run_dir / "curves.png")
    paired = compare_dev(run_dir, seed=cfg.run.seed)   # dev/before and dev/after instances, paired by sentence
    write_json_atomic(run_dir / "summary.json", {"history": history, "steps": trainer.step,
                                                 "startup_s": getattr(trainer, "startup_s", None),
                                                 "paired": {k: v.as_dict() for k, v in (paired or {}).items()}})
    if paired is not None:
        print(paired_table(paired))
    elif "after" in history:
        print(summary_table(history))
    print(f"curves: {png}\nmetrics: {run_dir / 'metrics.jsonl'}")
    return 0


def record_resume(run_dir: Path, ckpt: Path | None, overrides: list[str]) -> None:
    """Append to ``resumes.jsonl`` which checkpoint a resume started from and the overrides it applied."""
    import json

    row = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "checkpoint": ckpt.name if ckpt else None,
           "overrides": overrides}
    with (run_dir / "resumes.jsonl").open("a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
