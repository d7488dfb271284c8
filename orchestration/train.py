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
from orchestration.cursor import DataCursor
from orchestration.data import Dataset, load_pairs, source_units
from orchestration.errors import UserInputError
from orchestration.metrics_log import MetricsLog, plot_curves
from orchestration.runtime import close_all, start_ray, write_json_atomic
from orchestration.train_parts import (DevResult, build_learners, evaluate_dev, group_metrics,
                                       learner_batch, policy_path, reward_groups, save_rollouts, seed_torch,
                                       sync_names, to_sources, wait_ranks)
from orchestration.train_parts import RunStopped, resume_hint


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
        check_writable(run_dir, "--resume" if resume else "run.dir")   # before anything is created there
        self.cursor = DataCursor(size=len(self.train_pairs), seed=cfg.run.seed)
        self.step, self.version = 0, 0
        self.history: dict[str, Any] = {}
        self.log = MetricsLog(run_dir, tensorboard=cfg.train.tensorboard)
        self._resume_from = latest_checkpoint(run_dir) if resume else None

    # --- setup ---------------------------------------------------------------------------------

    def start(self) -> None:
        from reward.client import RewardClient
        from rollout.worker import RolloutPool

        cfg = self.cfg
        self._started_ray = start_ray(cfg.ray.address, cfg.ray.num_cpus)
        t0 = time.perf_counter()
        self.learners = build_learners(cfg)
        self.rollout = RolloutPool(self._model_path(), cfg.model.dtype, cfg.rollout, cfg.run.seed)
        self.reward = RewardClient(cfg.reward.settings())
        self.reward.wait_ready()
        self.sync_names = sync_names(cfg, self.learners)
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
        import ray

        mode = self.cfg.rollout.weight_sync
        t0 = time.perf_counter()
        payload = ray.get(self.learners[0].export_weights.remote(mode, self.sync_names))
        export_s = time.perf_counter() - t0
        info = self.rollout.update_weights(version, mode, payload)
        self.version = version
        return {"time/sync_s": time.perf_counter() - t0, "time/sync_export_s": export_s,
                "time/sync_load_s": info["seconds"]}

    def train_step(self) -> dict[str, Any]:
        from learner.grpo import group_advantages
        from rollout.runner import Sampling, derive_seed

        cfg, t_step = self.cfg, time.perf_counter()
        first_draw = self.cursor.draws
        idx = self.cursor.next_batch(cfg.train.sources_per_step)
        draws = [first_draw + k for k in range(len(idx))]   # unique group ids: a pair may come twice
        seeds = [derive_seed(cfg.run.seed, self.step + 1, d) for d in draws]
        sources = to_sources([self.train_pairs[i] for i in idx], self.train_set, draws, seeds)
        t0 = time.perf_counter()
        sp = cfg.rollout.sampling
        try:
            trajs, rstats = self.rollout.rollout(sources, sp.group_size, Sampling(sp.temperature, sp.top_p),
                                                 timeout_s=cfg.train.call_timeout_s)
        except TimeoutError as exc:
            raise RunStopped(f"{exc} (train.call_timeout_s); the run stopped. {resume_hint(self.run_dir)}") from None
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
        # dropout and any other learner randomness: a function of (seed, step, rank), not history
        self._learner_call("__ray_call__", what="train_step (seeding)",
                           per_rank=[(seed_torch, derive_seed(cfg.run.seed, self.step + 1, "learner", r))
                                     for r in range(len(self.learners))])
        results = self._learner_call("train_step", per_rank=[(shard, counts) for shard in shards])
        learn_s = time.perf_counter() - t0
        sync = self.sync(self.version + 1)
        self.step += 1
        m: dict[str, Any] = {"weight_version": self.version, "sources": [s.index for s in sources], "groups": draws}
        m.update(group_metrics(scored, trajs, int(zero_groups)))
        m.update({f"learner/{k}": v for k, v in results[0].items() if isinstance(v, (int, float))})
        m.update({"rollout/prefix_cache_hit_share": rstats["prefix_cache_hit_share"],
                  "rollout/generated_tokens": rstats["generated_tokens"],
                  "rollout/tokens_per_s": rstats["generated_tokens"] / max(rollout_s, 1e-9),
                  "reward/scorer": scored.scorer.name,
                  "rollout/worker_restarts": self.rollout.restarts,
                  "reward/replica_restarts": self.reward.restarts,
                  "time/rollout_s": rollout_s, "time/reward_s": reward_s, "time/update_s": learn_s, **sync})
        m["time/step_s"] = time.perf_counter() - t_step
        if cfg.train.save_rollouts:
            save_rollouts(self.run_dir, self.step, sources, trajs, scored, ga.advantages.flatten().tolist())
        return m

    # --- loop ------------------------------------------------------------------------------------

    def evaluate(self, tag: str) -> DevResult:
        res = evaluate_dev(self.rollout, self.reward, self.dev_set, self.cfg)
        self.history[tag] = res.as_dict()
        return res

    def checkpoint(self) -> Path:
        import ray

        def parts(tmp: Path) -> None:
            ray.get([lw.save_checkpoint.remote(str(tmp / "learner")) for lw in self.learners])
            weights = ray.get(self.learners[0].export_weights.remote(
                "adapter" if self.cfg.learner.lora.enabled else "full", None))
            out = tmp / ("adapter" if isinstance(weights, dict) else "weights")
            out.mkdir()
            if isinstance(weights, dict):
                for name, data in weights.items():
                    (out / name).write_bytes(data)
            else:
                (out / "model.safetensors").write_bytes(weights)

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
                try:
                    self.checkpoint()
                except CheckpointWriteError as exc:
                    raise RunStopped(f"{exc}; free space in or fix {self.run_dir}, then continue with "
                                     f"`launch.py train --resume {self.run_dir}`") from None
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
        closers = [lambda: self.rollout.shutdown(), lambda: self.reward.close()]
        close_all([c for c, part in zip(closers + [close_learners], ("rollout", "reward", "learners"))
                   if hasattr(self, part)], getattr(self, "_started_ray", False))


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
        latest_checkpoint(run_dir)   # refuse before anything starts when there is nothing to resume
    else:
        cfg = load_config(args.config, args.overrides)
        run_dir = resolve_run_dir(cfg)
    check_model(cfg)
    trainer = Trainer(cfg, run_dir, resume=bool(args.resume))   # validates data before any actor
    if args.resume:
        record_resume(run_dir, trainer._resume_from, list(args.overrides or []))
        if args.overrides:
            write_resolved_config(cfg, run_dir)   # a later resume continues with these values
    else:
        cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"dir": str(run_dir)})})
        write_resolved_config(cfg, run_dir)
    print(f"run directory: {run_dir}")
    try:
        trainer.start()
        history = trainer.run(stop_after=args.stop_after)
    except RunStopped as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        trainer.close()
    png = plot_curves(trainer.log.rows(), run_dir / "curves.png")
    write_json_atomic(run_dir / "summary.json", {"history": history, "steps": trainer.step,
                                                 "startup_s": getattr(trainer, "startup_s", None)})
    if "after" in history:
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
