"""What the learner trains on: trajectories as token ids, action masks, advantages and the
rollout's log-probs (DESIGN §2.1 token-in / token-out). No chat templates, no chunks.

Plain Python (no torch import) so the driver can build and shard batches cheaply.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence


@dataclass(frozen=True)
class PrefixSegments:
    """Token counts of the four segments of one prefix-layout sequence (``learner.simulmask``):
    prompt, source, middle (end of the user turn, assistant header) and target."""

    prompt: int
    source: int
    middle: int
    target: int
    source_slots: int | None = None     # reserved source positions (ExPosST); None = ``source``

    def __post_init__(self) -> None:
        if min(self.prompt, self.source, self.middle, self.target) < 0:
            raise ValueError(f"negative segment length in {self}")
        if self.source_slots is not None and self.source_slots < self.source:
            raise ValueError(f"source_slots={self.source_slots} < source={self.source}")

    @property
    def length(self) -> int:
        return self.prompt + self.source + self.middle + self.target

    @property
    def slots(self) -> int:
        return self.source if self.source_slots is None else self.source_slots


def check_reads(seg: PrefixSegments, reads: Sequence[int]) -> None:
    """``reads[i]``: source tokens read when target token i was written; non-decreasing, in [0, source]."""
    if len(reads) != seg.target:
        raise ValueError(f"{len(reads)} reads for {seg.target} target tokens")
    if any(r < 0 or r > seg.source for r in reads) or any(a > b for a, b in zip(reads, reads[1:])):
        raise ValueError(f"reads must be non-decreasing in [0, {seg.source}]: {list(reads)}")


@dataclass
class TrainTrajectory:
    """One trajectory. ``action_mask[k] == 1`` marks a sampled token; it is scored by the model's
    prediction at position k-1, so ``action_mask[0]`` must be 0. ``rollout_logprobs`` has one
    value per token (the sampler's log-prob on action tokens, ignored elsewhere).

    ``temperature``/``top_p``/``top_k`` name the distribution the actions were drawn from; the
    learner scores that same distribution (logits / temperature, then the nucleus / top-k
    truncation renormalised), so ratios and the sampler mismatch compare like with like.
    Greedy rollouts (temperature 0) are scored at temperature 1.

    ``segments`` and ``reads`` make it a prefix-layout sequence trained in one pass with a
    SimulMask mask and ExPosST positions (``learner.simulmask``): the actions are then exactly
    its target segment."""

    token_ids: list[int]
    action_mask: list[int]
    advantage: float
    rollout_logprobs: list[float]
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0            # 0 = no top-k truncation
    segments: PrefixSegments | None = None
    reads: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        n = len(self.token_ids)
        if n == 0:
            raise ValueError("empty trajectory")
        if len(self.action_mask) != n or len(self.rollout_logprobs) != n:
            raise ValueError(f"token_ids ({n}), action_mask ({len(self.action_mask)}) and rollout_logprobs "
                             f"({len(self.rollout_logprobs)}) must have the same length")
        if self.action_mask[0]:
            raise ValueError("action_mask[0] must be 0: the first token has no prediction")
        if any(m not in (0, 1) for m in self.action_mask):
            raise ValueError("action_mask holds 0/1 only")
        if self.temperature < 0 or not 0.0 < self.top_p <= 1.0 or self.top_k < 0:
            raise ValueError(f"sampling temperature={self.temperature} top_p={self.top_p} top_k={self.top_k}: "
                             "need temperature >= 0, 0 < top_p <= 1, top_k >= 0")
        if (self.segments is None) != (self.reads is None):
            raise ValueError("a prefix-layout trajectory needs both segments and reads")
        if self.segments is not None:
            seg = self.segments
            if seg.length != n:
                raise ValueError(f"{n} tokens but the prefix segments sum to {seg.length}")
            check_reads(seg, self.reads)
            if self.action_mask != [0] * (n - seg.target) + [1] * seg.target:
                raise ValueError("a prefix-layout trajectory's actions are its target segment")

    @property
    def scoring_temperature(self) -> float:
        """The temperature the learner divides logits by (greedy decoding is scored at 1)."""
        return self.temperature if self.temperature > 0 else 1.0

    @property
    def num_actions(self) -> int:
        return sum(self.action_mask)


@dataclass
class TrainBatch:
    """A list of trajectories: a whole rollout batch or one rank's shard of it."""

    trajectories: list[TrainTrajectory] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.trajectories)

    def counts(self) -> dict[str, int]:
        """Action tokens, and trajectories with at least one action (the aggregation denominators)."""
        return {"tokens": sum(t.num_actions for t in self.trajectories),
                "sequences": sum(1 for t in self.trajectories if t.num_actions > 0)}

    def split(self, n: int) -> list["TrainBatch"]:
        """``n`` shards balanced in trajectories (±1) and in tokens: deal longest-first round-robin.

        The order inside a shard does not change the update (aggregation is over the global batch).
        """
        if n < 1:
            raise ValueError("n must be >= 1")
        if len(self.trajectories) < n:
            raise ValueError(f"{len(self.trajectories)} trajectories cannot fill {n} shards")
        order = sorted(range(len(self.trajectories)), key=lambda i: -len(self.trajectories[i].token_ids))
        shards: list[list[TrainTrajectory]] = [[] for _ in range(n)]
        for pos, i in enumerate(order):
            # boustrophedon: 0..n-1, n-1..0, ... keeps token counts close
            lap, k = divmod(pos, n)
            shards[k if lap % 2 == 0 else n - 1 - k].append(self.trajectories[i])
        return [TrainBatch(s) for s in shards]
