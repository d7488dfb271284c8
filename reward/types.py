"""Plain data of the reward path: what goes into the reward service and what comes out.

Only the standard library here: these types cross process boundaries (Ray pickles them by
module name) and must import in both the main environment and ``.venv-comet``, where the
reward service runs when the quality scorer is COMET.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Sequence

Unit = Literal["word", "char"]
Quality = Literal["chrf", "chrf1", "chrf_bp", "bleu", "comet"]
Truncate = Literal["raw", "normalized", "none"]
LatencyMetric = Literal["al", "laal"]
Mode = Literal["fused", "gated", "quality_only", "latency_only"]


@dataclass(frozen=True)
class RewardInput:
    """One finished trajectory, as the reward service needs it.

    ``delays[i]`` is the number of source units read when target unit ``i`` of
    ``hypothesis`` was written (one delay per unit; none for an empty hypothesis);
    ``source_length`` is |X| in source units; ``unit`` is the target's latency unit (the
    caller decides it from the language: the reward knows units, not languages);
    ``chunk_size`` is m, the source units per streaming step (the floor of ``truncate="raw"``
    when ``latency_floor`` is None: SeqPO's published truncation).
    """

    source: str
    reference: str
    hypothesis: str
    delays: Sequence[float]
    source_length: int
    unit: Unit
    chunk_size: int


@dataclass(frozen=True)
class QualityItem:
    """One (source, hypothesis, reference) triple for a quality scorer; ``unit`` picks BLEU's tokenizer."""

    source: str
    hypothesis: str
    reference: str
    unit: Unit = "word"


@dataclass(frozen=True)
class RewardSettings:
    """Everything the service needs from ``reward.config.RewardConfig``, as plain values.

    The service may run in ``.venv-comet``, which has no pydantic: the driver converts its
    typed config with ``RewardConfig.settings()`` and sends this instead.
    """

    quality: Quality = "chrf"
    comet_model: str | None = None
    comet_batch_size: int = 32
    device: Literal["cpu", "cuda"] = "cpu"
    lam: float = 2.0
    truncate: Truncate = "raw"
    truncate_c: float = -1.0
    # floor of truncate=raw in source units; None = the chunk size m (SeqPO's published form)
    latency_floor: float | None = 4.0
    latency_metric: LatencyMetric = "laal"
    # (lo, hi) hypothesis/reference length ratio in target units; outside = degenerate; None = off
    length_gate: tuple[float, float] | None = (0.5, 2.0)
    mode: Mode = "fused"
    # mode=gated: latency counts only for quality >= quality_threshold and lag below max_latency
    quality_threshold: float | None = None
    max_latency: float = 10.0
    replicas: int = 1
    num_cpus: float = 1.0
    # Interpreter of the COMET service (relative paths: from the repository root);
    # None runs it in the caller's interpreter. Only used when quality == "comet".
    comet_python: str | None = ".venv-comet/bin/python"


@dataclass(frozen=True)
class ScorerInfo:
    """Which quality scorer produced a score: name, checkpoint (COMET), metric signature, and the
    top of its scale (100 for chrF, its variants and BLEU, 1 for COMET; ``reward.dev_reward``
    divides by it)."""

    name: str
    checkpoint: str | None = None
    signature: str | None = None
    scale: float = 1.0

    def label(self) -> str:
        return self.name if self.checkpoint is None else f"{self.name}:{self.checkpoint}"


@dataclass(frozen=True)
class TrajectoryReward:
    """Every component of one trajectory's reward (DESIGN §2.2).

    ``quality``: q_i as fused (an empty or degenerate hypothesis gets the group floor, see
    ``reward.fusion``); ``latency``: raw AL/LAAL, ``None`` for an empty hypothesis (it has no
    latency score); ``latency_truncated``: l'_i (``raw``: max(l, floor); ``none`` and
    ``normalized``: l), with the worst-of-group stand-in for an empty or degenerate hypothesis;
    ``latency_term``: what enters the latency z-score (l'_i, or in ``gated`` mode the hinge
    h_i); ``z_quality``, ``z_latency``: the two standardised terms (for ``normalized`` the
    latter is max(z, c)); ``reward``: r_i; ``empty``: nothing written; ``gated``: a non-empty
    hypothesis outside ``length_gate`` (degenerate: scored like an empty one).
    """

    quality: float
    latency: float | None
    latency_truncated: float
    z_quality: float
    z_latency: float
    reward: float
    empty: bool
    gated: bool = False
    latency_term: float | None = None


@dataclass(frozen=True)
class GroupReward:
    """The rewards of one group (the B trajectories of one source) and who scored them."""

    trajectories: list[TrajectoryReward]
    scorer: ScorerInfo

    @property
    def rewards(self) -> list[float]:
        return [t.reward for t in self.trajectories]

    @property
    def all_equal(self) -> bool:
        """True when GRPO gets no signal from this group (every reward the same)."""
        return len(set(self.rewards)) <= 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ScoreBatch:
    """The answer to one ``RewardService.score`` call, with the service's own timing.

    ``seconds`` is the whole call inside the service, ``quality_seconds`` its batched
    quality scoring; ``segments`` counts trajectories, ``scored_segments`` those that went
    through the quality scorer (empty hypotheses do not); ``stats`` holds the replica's totals
    and ``degenerate``, this call's count of hypotheses outside the length gate.
    """

    groups: list[GroupReward]
    scorer: ScorerInfo
    segments: int
    scored_segments: int
    seconds: float
    quality_seconds: float
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def segments_per_s(self) -> float:
        return self.segments / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class QualityBatch:
    """Raw quality scores of many items (``RewardService.quality``) with the scoring time."""

    scores: list[float]
    scorer: ScorerInfo
    seconds: float
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def segments_per_s(self) -> float:
        return len(self.scores) / self.seconds if self.seconds > 0 else 0.0
