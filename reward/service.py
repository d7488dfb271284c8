"""The reward service: batched quality scoring + latency + fusion, as a Ray actor.

``score_groups`` is the whole computation as a plain function; ``RewardWorker`` holds a
scorer and times its calls; ``RewardService`` is that class made a Ray actor, and
``create_reward_service`` starts one with the right options: with ``quality="comet"`` the
actor runs in ``.venv-comet`` through ``runtime_env={"py_executable": ...}`` (comet cannot
share an environment with vLLM, DESIGN §4). Everything imported here must therefore import
in both environments: no pydantic, no orchestration, no numpy types in results.

One ``score`` call takes many groups and sends every non-empty hypothesis of all of them
to the quality scorer in one batched call, so COMET never runs per sample.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import ray

from reward.fusion import fuse_group, length_ratio, raw_latency
from reward.scorers import QualityScorer, build_scorer
from reward.types import (
    GroupReward, QualityBatch, QualityItem, RewardInput, RewardSettings, ScoreBatch)

REPO_ROOT = Path(__file__).resolve().parent.parent


def _check_group(group: Sequence[RewardInput], index: int) -> None:
    """A group is the trajectories of one source: fusion compares them with each other."""
    if not group:
        raise ValueError(f"group {index} is empty")
    first = group[0]
    for item in group[1:]:
        if (item.source, item.reference, item.source_length, item.chunk_size, item.unit) != \
                (first.source, first.reference, first.source_length, first.chunk_size, first.unit):
            raise ValueError(f"group {index} mixes sources: every trajectory of a group must share "
                             f"source, reference, source_length, chunk_size and unit")


def score_groups(groups: Sequence[Sequence[RewardInput]], scorer: QualityScorer,
                 settings: RewardSettings) -> tuple[list[GroupReward], int, float]:
    """Rewards of every group -> (group rewards, hypotheses scored, seconds in the scorer)."""
    for i, group in enumerate(groups):
        _check_group(group, i)
    latencies = [[raw_latency(item, settings.latency_metric) for item in group] for group in groups]
    # Empty hypotheses (latency None) never reach the scorer: fusion gives them the floor.
    batch = [QualityItem(item.source, item.hypothesis, item.reference, item.unit)
             for group, lats in zip(groups, latencies)
             for item, lat in zip(group, lats) if lat is not None]
    start = time.perf_counter()
    raw = scorer.score(batch)
    quality_seconds = time.perf_counter() - start
    if len(raw) != len(batch):
        raise RuntimeError(f"scorer {scorer.info.name} returned {len(raw)} scores for {len(batch)} items")
    scores = iter(raw)

    out = []
    for group, lats in zip(groups, latencies):
        qualities = [None if lat is None else next(scores) for lat in lats]
        out.append(fuse_group(
            qualities, lats, chunk_size=group[0].chunk_size, source_length=group[0].source_length,
            lam=settings.lam, truncate=settings.truncate, truncate_c=settings.truncate_c,
            latency_floor=settings.latency_floor, mode=settings.mode,
            length_ratios=[length_ratio(item) for item in group], length_gate=settings.length_gate,
            quality_threshold=settings.quality_threshold, max_latency=settings.max_latency,
            scorer=scorer.info))
    return out, len(batch), quality_seconds


class RewardWorker:
    """One scorer and its running totals; the body of the ``RewardService`` actor."""

    def __init__(self, settings: RewardSettings) -> None:
        self.settings = settings
        self.scorer = build_scorer(settings)
        self._calls = 0
        self._segments = 0
        self._seconds = 0.0
        # Ray restarts a dead replica itself (``actor_options``); the first answer of a
        # restarted one says so, which is how the client counts restarts.
        self._restarted = _reconstructed()

    def score(self, groups: Sequence[Sequence[RewardInput]]) -> ScoreBatch:
        """Fused rewards of many groups, with this call's scoring time and its count of
        ``degenerate`` hypotheses (outside the length gate)."""
        start = time.perf_counter()
        results, scored, quality_seconds = score_groups(groups, self.scorer, self.settings)
        seconds = time.perf_counter() - start
        segments = sum(len(g) for g in groups)
        self._record(segments, seconds)
        degenerate = sum(t.gated for g in results for t in g.trajectories)
        return ScoreBatch(results, self.scorer.info, segments, scored, seconds, quality_seconds,
                          {**self.stats(), "degenerate": degenerate})

    def quality(self, items: Sequence[QualityItem]) -> QualityBatch:
        """Raw quality of each item, scored as given (empty hypotheses included), in one batch.

        For metric checks against human judgements (``bench reward``) and batching checks.
        """
        start = time.perf_counter()
        scores = self.scorer.score(list(items))
        seconds = time.perf_counter() - start
        self._record(len(items), seconds)
        return QualityBatch(scores, self.scorer.info, seconds, self.stats())

    def _record(self, segments: int, seconds: float) -> None:
        self._calls += 1
        self._segments += segments
        self._seconds += seconds

    def stats(self) -> dict[str, Any]:
        """Running totals of this replica: calls, segments, seconds, segments per second; and
        ``restarted`` (1) in the first answer of a replica Ray restarted."""
        out = {"calls": self._calls, "segments": self._segments, "seconds": self._seconds,
               "segments_per_s": self._segments / self._seconds if self._seconds > 0 else 0.0}
        if self._restarted:
            out["restarted"], self._restarted = 1, False
        return out

    def info(self) -> dict[str, Any]:
        """Who this replica is: scorer, process id, interpreter."""
        return {"scorer": self.scorer.info, "pid": os.getpid(), "python": sys.executable}

    def pid(self) -> int:
        return os.getpid()


RewardService = ray.remote(RewardWorker)
# A replica keeps no state between calls, so Ray may restart a dead one and retry the calls it
# was running (at-least-once is exactly-once here); a replica failing this often is given up.
MAX_RESTARTS = 3


def _reconstructed() -> bool:
    try:
        return bool(ray.get_runtime_context().was_current_actor_reconstructed)
    except Exception:  # noqa: BLE001 - not inside an actor (a RewardWorker used in-process)
        return False


def resolve_python(path: str) -> str:
    """An interpreter path; relative paths are taken from the repository root."""
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = REPO_ROOT / p
    if not p.is_file():
        raise FileNotFoundError(f"reward.comet_python: interpreter {p} not found; "
                                f"`make setup` creates .venv-comet")
    # No resolve(): a venv's python is a symlink and only the venv path selects its packages.
    return str(p)


def actor_options(settings: RewardSettings) -> dict[str, Any]:
    """Ray options of one replica: resources, and the COMET interpreter when needed."""
    opts: dict[str, Any] = {"num_cpus": settings.num_cpus, "max_restarts": MAX_RESTARTS,
                            "max_task_retries": MAX_RESTARTS}
    if settings.device == "cuda":
        opts["num_gpus"] = 1
    if settings.quality == "comet" and settings.comet_python:
        opts["runtime_env"] = {
            "py_executable": resolve_python(settings.comet_python),
            # The other interpreter must find this repository's packages from any cwd.
            "env_vars": {"PYTHONPATH": str(REPO_ROOT)},
        }
    return opts


def create_reward_service(settings: RewardSettings) -> "ray.actor.ActorHandle":
    """Start one ``RewardService`` replica (non-blocking; errors surface on the first call)."""
    return RewardService.options(**actor_options(settings)).remote(settings)
