"""The driver's glue: converting between components' plain data, starting learner ranks,
step metrics and the dev evaluation. Kept apart from the loop so each piece reads alone.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from orchestration.config import RootConfig
from orchestration.data import Dataset, Pair


def to_sources(pairs: Sequence[Pair], ds: Dataset, groups: Sequence[int] | None = None,
               seeds: Sequence[int] | None = None) -> list:
    """Rollout sources; ``groups`` (unique ids of these draws) and ``seeds`` (their sampling
    seeds) are set for training batches, where one pair may be drawn twice."""
    from rollout.runner import Source

    groups = list(groups) if groups is not None else [None] * len(pairs)
    seeds = list(seeds) if seeds is not None else [None] * len(pairs)
    return [Source(p.index, p.source, ds.src_lang, ds.tgt_lang, p.reference, group=g, seed=s)
            for p, g, s in zip(pairs, groups, seeds)]


class RolloutMismatch(RuntimeError):
    """The rollout returned trajectories that do not line up with the groups asked for."""


def reward_groups(trajs: Sequence[dict[str, Any]], sources: Sequence, group_size: int) -> list[list]:
    """Trajectories (grouped by source, as the pool returns them) → reward inputs per group.

    Each group is matched by its id, not by the pair's index: a batch may hold one pair twice,
    and each of its groups is scored against its own draw's reference."""
    from reward.types import RewardInput

    if len(trajs) != len(sources) * group_size:
        raise RolloutMismatch(f"rollout returned {len(trajs)} trajectories for {len(sources)} groups "
                              f"of {group_size}")
    groups = []
    for k, src in enumerate(sources):
        group = trajs[k * group_size:(k + 1) * group_size]
        want = src.group if src.group is not None else k
        got = [(t["meta"]["group"], t["meta"]["source_index"], t["meta"]["sample"]) for t in group]
        if got != [(want, src.index, i) for i in range(group_size)]:
            raise RolloutMismatch(f"group {want} (pair {src.index}) came back as {got}")
        groups.append([RewardInput(source=src.text, reference=src.reference or "", hypothesis=t["hypothesis"],
                                   delays=list(t["delays"]), source_length=t["source_length"],
                                   tgt_lang=src.tgt_lang, chunk_size=t["meta"]["chunk_size"])
                       for t in group])
    return groups


def learner_batch(trajs: Sequence[dict[str, Any]], advantages: Sequence[float]):
    from learner.batch import TrainBatch, TrainTrajectory

    # each trajectory is scored under the distribution it was sampled from (meta, set by the worker)
    return TrainBatch([TrainTrajectory(token_ids=t["token_ids"], action_mask=t["action_mask"],
                                       advantage=float(a), rollout_logprobs=t["logprobs"],
                                       temperature=float(t["meta"].get("temperature", 1.0)),
                                       top_p=float(t["meta"].get("top_p", 1.0)))
                       for t, a in zip(trajs, advantages)])


def _mean(xs: Sequence[float]) -> float:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return statistics.fmean(xs) if xs else float("nan")


def group_metrics(scored, trajs: Sequence[dict[str, Any]], zero_groups: int) -> dict[str, float]:
    """Reward components and rollout shape of one step."""
    flat = [t for g in scored.groups for t in g.trajectories]
    rewards = [t.reward for t in flat]
    waits = sum(p == "" for t in trajs for p in t["pieces"][:-1])
    steps = sum(len(t["pieces"]) - 1 for t in trajs)
    return {
        "reward/mean": _mean(rewards), "reward/std": statistics.pstdev(rewards) if rewards else 0.0,
        "reward/quality_mean": _mean([t.quality for t in flat]),
        "reward/latency_mean": _mean([t.latency for t in flat]),
        "reward/latency_truncated_mean": _mean([t.latency_truncated for t in flat]),
        "reward/empty_hypotheses": sum(t.empty for t in flat),
        "reward/zero_advantage_groups": zero_groups,
        "reward/zero_advantage_share": zero_groups / max(len(scored.groups), 1),
        "rollout/action_tokens_mean": _mean([sum(t["action_mask"]) for t in trajs]),
        "rollout/length_mean": _mean([len(t["token_ids"]) for t in trajs]),
        "rollout/wait_share": waits / steps if steps else 0.0,
        "rollout/truncated_steps": sum(t["truncated_steps"] for t in trajs),
    }


@dataclass
class DevResult:
    """Greedy interleaved rollouts on the dev set: quality, latency and the dev reward."""

    quality: float
    AL: float
    LAAL: float
    reward: float
    empty: int
    sentences: int
    scorer: str
    wait_share: float = 0.0
    length_ratio: float = float("nan")
    instances: list = field(default_factory=list, repr=False)   # per sentence: dev/<tag>/instances.jsonl

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "instances"}


def evaluate_dev(pool, reward_client, dev: Dataset, cfg: RootConfig) -> DevResult:
    """Greedy rollouts (B=1) on the dev pairs.

    The dev reward is λ·q − l'/|X| per sentence (q on a 0-1 scale: chrF and BLEU divided by 100;
    l' = max(AL, chunk size), divided by the source length so long sentences do not dominate).
    """
    from reward.types import QualityItem, unit_of_language
    from rollout.runner import Sampling

    sources = to_sources(dev.pairs, dev)
    trajs, _ = pool.rollout(sources, 1, Sampling(temperature=0.0))
    unit = unit_of_language(dev.tgt_lang)
    q = reward_client.quality([QualityItem(source=s.text, hypothesis=t["hypothesis"], reference=s.reference or "",
                                           unit=unit) for s, t in zip(sources, trajs)])
    scale = 1.0 if q.scorer.name == "comet" else 100.0
    from orchestration.dev_instances import sentence_records

    rows = sentence_records(sources, trajs, q.scores, scale, cfg.reward.lam, unit)
    lat = [r for r in rows if not r["empty"]]
    return DevResult(quality=_mean(q.scores), AL=_mean([r["AL"] for r in lat]),
                     LAAL=_mean([r["LAAL"] for r in lat]), reward=_mean([r["reward"] for r in rows]),
                     empty=len(rows) - len(lat), sentences=len(sources), scorer=q.scorer.name,
                     wait_share=_mean([r["wait_share"] for r in rows]),
                     length_ratio=_mean([r["length_ratio"] for r in rows]), instances=rows)


SFT_MODEL_DIR = "model"   # where `launch.py sft` writes its policy as a plain HF directory


def policy_path(cfg: RootConfig) -> str:
    """The starting policy: ``model.init_from``'s ``model/`` (an SFT run), else ``model.path``
    (a local directory made absolute, or a hub id)."""
    from pathlib import Path

    from orchestration.config_loader import REPO_ROOT
    from orchestration.errors import UserInputError

    if cfg.model.init_from:
        run = Path(cfg.model.init_from)
        model = (run if run.is_absolute() else REPO_ROOT / run) / SFT_MODEL_DIR
        if not (model / "config.json").is_file():
            raise UserInputError(f"model.init_from={cfg.model.init_from}: {model} holds no model; pass the run "
                                 "directory of a finished `launch.py sft` run (it writes model/ there)")
        return str(model.resolve())
    local = REPO_ROOT / cfg.model.path
    return str(local) if local.exists() else cfg.model.path


def build_learners(cfg: RootConfig, reserved=None, plan=None) -> list:
    """One LearnerWorker per data-parallel rank, each in its slot of the placement plan
    (``orchestration.placement``); without one, the learner part of the config's plan is reserved."""
    import ray

    from learner.config import LearnerConfig
    from learner.worker import LearnerWorker, worker_options
    from orchestration.placement import build_plan, reserve

    lc, timeout = cfg.learner, cfg.ray.start_timeout_s
    if reserved is None:
        plan = build_plan(cfg)
        used = {s.group for s in plan.learner}
        plan.groups = [g for g in plan.groups if g.name in used]
        reserved = reserve(plan, timeout)

    def opts(i: int) -> dict[str, Any]:
        o: dict[str, Any] = worker_options(LearnerConfig.model_validate(lc.model_dump()))
        o.update(reserved.options(plan.learner[i]))
        return o

    @ray.remote(num_cpus=0)
    def master_endpoint() -> tuple[str, int]:
        import socket

        with socket.socket() as s:
            s.bind(("", 0))
            return ray.util.get_node_ip_address(), s.getsockname()[1]

    ep_opts = {k: v for k, v in opts(0).items() if k == "scheduling_strategy"}
    addr, port = ray.get(master_endpoint.options(**ep_opts).remote(), timeout=timeout)
    model = policy_path(cfg)
    workers = [LearnerWorker.options(**opts(i)).remote(lc.model_dump(), model, i, lc.num_ranks, addr, port,
                                                       cfg.run.seed)
               for i in range(lc.num_ranks)]
    ray.get([w.trainable_names.remote() for w in workers], timeout=timeout)   # wait until every rank is up
    return workers


def sync_names(cfg: RootConfig, learners: Sequence) -> list[str] | None:
    """Tensors a merged-LoRA sync sends: the adapted modules' weights plus packed siblings."""
    if cfg.rollout.weight_sync != "merged":
        return None
    import ray

    from rollout.weights import expand_packed

    return expand_packed(ray.get(learners[0].trainable_names.remote(), timeout=cfg.ray.call_timeout_s))


class RunStopped(RuntimeError):
    """A part of the run failed in a way a restart of the driver fixes: the message says what
    failed and which checkpoint ``launch.py train --resume`` continues from."""


def resume_hint(run_dir) -> str:
    from orchestration.checkpoint import newest_checkpoint

    ckpt = newest_checkpoint(run_dir)
    if ckpt is None:
        return f"no checkpoint was written yet; start the run again (run directory {run_dir})"
    return f"last checkpoint: {ckpt}; continue with `launch.py train --resume {run_dir}`"


def wait_ranks(refs: Sequence, what: str, timeout_s: float, run_dir) -> list[Any]:
    """The results of one collective call per learner rank, in rank order.

    Waits for whichever rank finishes first, so a dead rank is reported at once even while
    the others block in a collective waiting for it; nothing waits longer than ``timeout_s``."""
    import time

    import ray
    from ray.exceptions import RayActorError

    start, pending = time.monotonic(), list(refs)
    while pending:
        left = timeout_s - (time.monotonic() - start)
        ready, pending = ray.wait(pending, num_returns=1, timeout=max(left, 0.0))
        if not ready:
            late = sorted(refs.index(r) for r in pending)
            raise RunStopped(f"learner rank(s) {late} did not finish {what} within train.call_timeout_s="
                             f"{timeout_s:g} s; the run stopped. {resume_hint(run_dir)}")
        for ref in ready:
            try:
                ray.get(ref, timeout=0)
            except RayActorError as exc:
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise RunStopped(f"learner rank {refs.index(ref)} died during {what} ({reason}); the run stopped. "
                                 f"{resume_hint(run_dir)}") from None
    return ray.get(list(refs), timeout=max(timeout_s - (time.monotonic() - start), 1.0))


def seed_torch(_actor: Any, seed: int) -> None:
    """Run inside a learner actor (``__ray_call__``): reseed torch for this step."""
    import torch

    torch.manual_seed(seed)


def save_rollouts(run_dir, step: int, sources: Sequence, trajs: Sequence[dict[str, Any]], scored,
                  advantages: Sequence[float]) -> None:
    """``rollouts/step-N.jsonl``: every trajectory of a step with its group, tokens and reward."""
    import json
    import os
    from pathlib import Path

    rewards = [t for g in scored.groups for t in g.trajectories]
    out = Path(run_dir) / "rollouts" / f"step-{step}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for t, r, a in zip(trajs, rewards, advantages):
            f.write(json.dumps({"group": t["meta"]["group"], "source_index": t["meta"]["source_index"],
                                "sample": t["meta"]["sample"], "token_ids": t["token_ids"],
                                "logprobs": t["logprobs"], "hypothesis": t["hypothesis"], "reward": r.reward,
                                "quality": r.quality, "advantage": a}, ensure_ascii=False) + "\n")
    os.replace(tmp, out)
