"""Between the rollout, the reward and the learner: the plain data each expects of the others.

Sources for the rollout, reward inputs per group (matched by group id), the learner's batch,
one step's reward and rollout metrics, and the step's trajectories on disk.
"""
from __future__ import annotations

import math
import statistics
from typing import Any, Sequence

from orchestration.data import Dataset, Pair


def to_sources(pairs: Sequence[Pair], ds: Dataset, groups: Sequence[int] | None = None,
               seeds: Sequence[int] | None = None) -> list:
    """Rollout sources; ``groups`` (unique ids of these draws) and ``seeds`` (their sampling
    seeds) are set for training batches, where one pair may be drawn twice."""
    from rollout.types import Source

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
    from rollout.units import unit_of

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
                                   unit=unit_of(src.tgt_lang), chunk_size=t["meta"]["chunk_size"])
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


def mean_finite(xs: Sequence[float | None]) -> float:
    """Mean of the finite values; NaN when there are none (e.g. every hypothesis empty)."""
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return statistics.fmean(xs) if xs else float("nan")


def wait_share(trajs: Sequence[dict[str, Any]]) -> float:
    """Share of the streaming steps before the last that wrote nothing (the policy waited)."""
    waits = sum(not p.strip() for t in trajs for p in t["pieces"][:-1])
    steps = sum(len(t["pieces"]) - 1 for t in trajs)
    return waits / steps if steps else 0.0


def group_metrics(scored, trajs: Sequence[dict[str, Any]], zero_groups: int) -> dict[str, float]:
    """Reward components and rollout shape of one step."""
    flat = [t for g in scored.groups for t in g.trajectories]
    rewards = [t.reward for t in flat]
    return {
        "reward/mean": mean_finite(rewards), "reward/std": statistics.pstdev(rewards) if rewards else 0.0,
        "reward/quality_mean": mean_finite([t.quality for t in flat]),
        "reward/latency_mean": mean_finite([t.latency for t in flat]),
        "reward/latency_truncated_mean": mean_finite([t.latency_truncated for t in flat]),
        "reward/empty_hypotheses": sum(t.empty for t in flat),
        "reward/degenerate": sum(t.gated for t in flat),
        "reward/zero_advantage_groups": zero_groups,
        "reward/zero_advantage_share": zero_groups / max(len(scored.groups), 1),
        "rollout/action_tokens_mean": mean_finite([sum(t["action_mask"]) for t in trajs]),
        "rollout/length_mean": mean_finite([len(t["token_ids"]) for t in trajs]),
        "rollout/wait_share": wait_share(trajs),
        "rollout/truncated_steps": sum(t["truncated_steps"] for t in trajs),
        "rollout/cut_steps": sum(t.get("cut_steps", 0) for t in trajs),
    }


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
                                "quality": r.quality, "degenerate": r.gated, "advantage": a}, ensure_ascii=False) + "\n")
    os.replace(tmp, out)
