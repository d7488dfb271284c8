"""The rollout's shared plain data: what a rollout is asked for (``Source``, ``Sampling``), what
a generation backend returns (``GenerationResult``), the backend protocol, per-request seeds,
and a rollout call's counters. Kept apart from the runners so the engine and the runners
import these without importing each other.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence


@dataclass(frozen=True)
class Sampling:
    """Sampling of one rollout call; temperature 0 means greedy. ``min_tokens``: stop tokens
    are not chosen before that many tokens (vLLM's ``min_tokens``)."""

    temperature: float = 1.0
    top_p: float = 1.0
    min_tokens: int = 0


@dataclass
class GenerationResult:
    """What a backend returns per prompt."""

    token_ids: list[int]
    logprobs: list[float]
    prompt_tokens: int
    cached_prompt_tokens: int = 0     # prompt tokens served from a prefix cache


class GenerationBackend(Protocol):
    """``seeds`` (one per prompt) fix each request's randomness: the same prompt and seed give
    the same tokens whatever else is in the batch. The runner passes it only for seeded sources
    sampled at a temperature above 0, so a backend without seeded sampling may omit it."""

    def generate(self, prompts: Sequence[list[int]], max_new_tokens: Sequence[int],
                 sampling: Sampling, seeds: Sequence[int | None] | None = None) -> list[GenerationResult]: ...


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any parts (run seed, step, group, sample, turn ...): the same parts give
    the same seed in every process, so sampling depends on what is sampled, never on history."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


@dataclass(frozen=True)
class Source:
    """One sentence to translate, with its place in the data set.

    ``group`` names this draw of the source (a batch may hold a source twice: each draw is its
    own group, scored against its own reference); ``seed`` fixes the sampling of the group's
    trajectories (None: the engine's own randomness)."""

    index: int
    text: str
    src_lang: str
    tgt_lang: str
    reference: str | None = None
    group: int | None = None
    seed: int | None = None


@dataclass
class RolloutStats:
    """Counters of one rollout call (summed over steps)."""

    steps: int = 0
    trajectories: int = 0
    generated_tokens: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    appended_tokens: int = 0          # observation tokens appended after step 1 (new user turns)
    generate_s: float = 0.0
    wall_s: float = 0.0
    per_step: list[dict[str, float]] = field(default_factory=list)

    @property
    def recomputed_prompt_tokens(self) -> int:
        return self.prompt_tokens - self.cached_prompt_tokens

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "per_step"}
        d["recomputed_prompt_tokens"] = self.recomputed_prompt_tokens
        d["prefix_cache_hit_share"] = (self.cached_prompt_tokens / self.prompt_tokens
                                       if self.prompt_tokens else 0.0)
        d["generated_tokens_per_s"] = self.generated_tokens / self.wall_s if self.wall_s else 0.0
        d["per_step"] = self.per_step
        return d
