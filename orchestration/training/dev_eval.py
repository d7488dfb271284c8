"""The dev evaluation of ``train`` and ``sft``: greedy rollouts on the dev pairs, scored by the
reward service's quality scorer, with SimulEval latency and the dev reward (``reward.dev_reward``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from orchestration.data import Dataset
from orchestration.training.trajectories import mean_finite, to_sources


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
    length_ratio: float = float("nan")
    instances: list = field(default_factory=list, repr=False)   # per sentence: dev/<tag>/instances.jsonl

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "instances"}


def evaluate_dev(pool, reward_client, dev: Dataset) -> DevResult:
    """Greedy rollouts (B=1) on the dev pairs; per sentence (``orchestration.training.dev_instances``)
    quality, latency, waits, length ratio and the dev reward (``reward.dev_reward``: a fixed
    yardstick, none of the run's reward settings enter it); the means over sentences, with
    ``wait_share`` the mean of the sentences' shares."""
    from orchestration.training.dev_instances import sentence_records
    from reward.types import QualityItem
    from rollout.types import Sampling
    from rollout.units import unit_of

    sources = to_sources(dev.pairs, dev)
    trajs, _ = pool.rollout(sources, 1, Sampling(temperature=0.0))
    unit = unit_of(dev.tgt_lang)
    q = reward_client.quality([QualityItem(source=s.text, hypothesis=t["hypothesis"], reference=s.reference or "",
                                           unit=unit) for s, t in zip(sources, trajs)])
    rows = sentence_records(sources, trajs, q.scores, q.scorer.scale, unit)
    lat = [r for r in rows if not r["empty"]]
    return DevResult(quality=mean_finite(q.scores), AL=mean_finite([r["AL"] for r in lat]),
                     LAAL=mean_finite([r["LAAL"] for r in lat]), reward=mean_finite([r["reward"] for r in rows]),
                     empty=len(rows) - len(lat), sentences=len(sources), scorer=q.scorer.name,
                     wait_share=mean_finite([r["wait_share"] for r in rows]),
                     length_ratio=mean_finite([r["length_ratio"] for r in rows]), instances=rows)
