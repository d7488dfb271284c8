"""Calling RewardService replicas: sharding, and restarting a replica that died.

``RewardClient`` owns ``settings.replicas`` actors. A call splits its groups into one
contiguous shard per replica, runs the shards in parallel and concatenates the answers in
input order. A replica whose process dies is restarted by Ray and the shard it was scoring
is retried there (``max_restarts``/``max_task_retries`` in ``reward.service.actor_options``);
the service keeps no state between calls, so redoing a shard loses and double-counts
nothing. The client counts the restarts its answers report; a replica that keeps dying is
given up by Ray and the call raises.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence, TypeVar

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from reward.service import create_reward_service
from reward.types import (
    QualityBatch, QualityItem, RewardInput, RewardSettings, ScoreBatch, ScorerInfo)

T = TypeVar("T")
CALL_TIMEOUT_S = 3600.0   # no call waits forever: a hung replica raises GetTimeoutError
ActorFactory = Callable[[RewardSettings], Any]


def shard(items: Sequence[T], parts: int) -> list[list[T]]:
    """Split into at most ``parts`` contiguous, non-empty, near-equal shards (order kept)."""
    parts = max(1, min(parts, len(items)))
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(list(items[start:end]))
        start = end
    return [s for s in out if s]


class RewardClient:
    """Replicas of the reward service behind one ``score`` / ``quality`` call."""

    def __init__(self, settings: RewardSettings, factory: ActorFactory = create_reward_service,
                 placement: Sequence[dict[str, Any]] | None = None, timeout_s: float | None = None) -> None:
        """``placement``: Ray options of replica i (its placement-group bundle) from the driver's plan;
        ``timeout_s``: longest wait for one call (None = no limit)."""
        self.settings = settings
        self._factory = factory
        self._placement = list(placement) if placement is not None else None
        self.timeout_s = timeout_s
        self.actors = [self._new_actor(i) for i in range(settings.replicas)]
        self.restarts = 0

    def _new_actor(self, index: int):
        return self._factory(self.settings) if self._placement is None else self._placed_factory(index)

    def _placed_factory(self, index: int):
        from reward.service import RewardService, actor_options

        return RewardService.options(**{**actor_options(self.settings), **self._placement[index]}).remote(self.settings)

    def wait_ready(self, timeout_s: float | None = None) -> list[dict[str, Any]]:
        """Block until every replica has built its scorer; a failed start raises RuntimeError."""
        try:
            limit = timeout_s or self.timeout_s or CALL_TIMEOUT_S
            return ray.get([a.info.remote() for a in self.actors], timeout=limit)
        except GetTimeoutError:
            raise RuntimeError(f"the reward service did not start within {limit:g} s") from None
        except RayActorError as exc:
            # Usually the scorer's constructor failed (missing checkpoint, bad interpreter).
            raise RuntimeError(f"a reward service replica failed to start: {exc}") from None

    def _call(self, method: str, shards: list[list[Any]]) -> list[Any]:
        """``method(shard)`` on replica i for shard i (Ray retries it on a restarted replica)."""
        refs = [getattr(self.actors[i], method).remote(s) for i, s in enumerate(shards)]
        try:
            results = ray.get(refs, timeout=self.timeout_s or CALL_TIMEOUT_S)
        except RayActorError as exc:
            raise RuntimeError(f"a reward service replica died more often than Ray restarts it: {exc}") from None
        self.restarts += sum(int(r.stats.get("restarted", 0)) for r in results)
        return results

    def score(self, groups: Sequence[Sequence[RewardInput]]) -> ScoreBatch:
        """Fused rewards of every group, in input order, with timing of the slowest replica."""
        start = time.perf_counter()
        batches: list[ScoreBatch] = self._call("score", shard(groups, len(self.actors))) if groups else []
        wall = time.perf_counter() - start
        if not batches:
            return ScoreBatch([], self._scorer_placeholder(), 0, 0, 0.0, 0.0,
                              {"client_seconds": wall, "degenerate": 0})
        return ScoreBatch(
            groups=[g for b in batches for g in b.groups], scorer=batches[0].scorer,
            segments=sum(b.segments for b in batches), scored_segments=sum(b.scored_segments for b in batches),
            seconds=max(b.seconds for b in batches), quality_seconds=max(b.quality_seconds for b in batches),
            stats={"client_seconds": wall, "replicas": len(batches), "restarts": self.restarts,
                   "degenerate": sum(int(b.stats.get("degenerate", 0)) for b in batches)})

    def quality(self, items: Sequence[QualityItem]) -> QualityBatch:
        """Raw quality scores of ``items`` in order (see ``RewardWorker.quality``)."""
        start = time.perf_counter()
        batches: list[QualityBatch] = self._call("quality", shard(items, len(self.actors))) if items else []
        wall = time.perf_counter() - start
        if not batches:
            return QualityBatch([], self._scorer_placeholder(), 0.0, {"client_seconds": wall})
        return QualityBatch(
            scores=[s for b in batches for s in b.scores], scorer=batches[0].scorer,
            seconds=max(b.seconds for b in batches),
            stats={"client_seconds": wall, "replicas": len(batches), "restarts": self.restarts})

    def _scorer_placeholder(self) -> ScorerInfo:
        # Nothing was scored: name the configured scorer without asking a replica.
        return ScorerInfo(self.settings.quality, self.settings.comet_model)

    def close(self) -> None:
        """Stop every replica."""
        for actor in self.actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # already dead
                pass
        self.actors = []
