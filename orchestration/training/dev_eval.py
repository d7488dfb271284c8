"""The dev evaluation of ``train`` and ``sft``: greedy rollouts on the dev pairs, scored by the
reward service's quality scorer, with SimulEval latency and the dev reward (``reward.dev_reward``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from orchestration.data import Dataset
from orchestration.training.trajectories import mean_finite, to_sources, wait_share


@dataclass
class DevResult:
    """Greedy interleaved rollouts on the dev set: quality, latency, waits and the dev reward."""

    quality: float
    AL: float
    LAAL: float
    reward: float
    empty: int
    sentences: int
    scorer: str
    wait_share: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_dev(pool, reward_client, dev: Dataset, lam: float) -> DevResult:
    """Greedy rollouts (B=1) on the dev pairs; the per-sentence dev reward is
    ``reward.dev_reward.dev_reward`` with λ = ``lam``."""
    from reward.dev_reward import dev_reward
    from reward.latency import al, laal
    from reward.text_metrics import reference_length
    from reward.types import QualityItem
    from rollout.types import Sampling
    from rollout.units import unit_of

    sources = to_sources(dev.pairs, dev)
    trajs, _ = pool.rollout(sources, 1, Sampling(temperature=0.0))
    unit = unit_of(dev.tgt_lang)
    q = reward_client.quality([QualityItem(source=s.text, hypothesis=t["hypothesis"], reference=s.reference or "",
                                           unit=unit) for s, t in zip(sources, trajs)])
    als, laals, rewards = [], [], []
    for s, t, qs in zip(sources, trajs, q.scores):
        a = None
        if t["delays"]:
            ref_len = reference_length(s.reference, unit) if s.reference else None
            a = al(t["delays"], t["source_length"], ref_len)
            als.append(a)
            laals.append(laal(t["delays"], t["source_length"], ref_len))
        rewards.append(dev_reward(qs, a, source_length=t["source_length"], chunk_size=t["meta"]["chunk_size"],
                                  lam=lam, quality_scale=q.scorer.scale))
    return DevResult(quality=mean_finite(q.scores), AL=mean_finite(als), LAAL=mean_finite(laals),
                     reward=mean_finite(rewards), empty=sum(not t["delays"] for t in trajs),
                     sentences=len(sources), scorer=q.scorer.name, wait_share=wait_share(trajs))
