"""RolloutWorker Ray actors (one vLLM engine each) and the pool that shards work over them.

A group of B trajectories of one source always runs on one replica, so the B requests share
their prompt prefixes in that engine's cache. If a replica dies, the pool starts a new one,
replays the latest weights into it and re-runs that replica's shard: no trajectory is lost
or returned twice.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, replace
from typing import Any, Sequence

from rollout.config import RolloutConfig, weight_target
from rollout.types import Sampling, Source

log = logging.getLogger(__name__)


class RolloutWorker:
    """Owns one engine; runs whole streaming episodes for a shard of sources."""

    def __init__(self, model: str, dtype: str, cfg: dict[str, Any], seed: int, index: int = 0):
        from rollout.engine import VLLMEngine
        from rollout.runner import EpisodeFactory

        self.cfg = RolloutConfig.model_validate(cfg)
        self.index = index
        self.engine = VLLMEngine(model, dtype, self.cfg.engine, seed=seed + index)
        self.factory = EpisodeFactory(self.engine.tokenizer, self.cfg.episode, self.cfg.engine.max_model_len)

    def info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "index": self.index, "engine_start_s": self.engine.start_s,
                "weight_version": self.engine.weight_version}

    def rollout(self, sources: Sequence[dict[str, Any]], group_size: int,
                temperature: float, top_p: float) -> dict[str, Any]:
        from rollout.stream_runner import run_rollout

        srcs = [Source(**s) for s in sources]
        trajs, stats = run_rollout(self.engine, self.factory, srcs, group_size,
                                   Sampling(temperature=temperature, top_p=top_p),
                                   self.cfg.runner, self.cfg.max_in_flight)
        version = self.engine.weight_version
        out = []
        for t in trajs:
            d = asdict(t)
            d["meta"]["weight_version"] = version
            d["meta"]["worker"] = self.index
            d["meta"]["temperature"], d["meta"]["top_p"] = temperature, top_p   # what the learner scores
            out.append(d)
        return {"trajectories": out, "stats": stats.as_dict(), "weight_version": version}

    def update_weights(self, version: int, mode: str, payload: Any) -> dict[str, float]:
        """mode: 'merged' or 'full' (safetensors bytes), 'adapter' ({filename: bytes})."""
        load = {"adapter": self.engine.load_adapter, "base": self.engine.load_tensors}[weight_target(mode)]
        return load(payload, version)

    def join_weight_group(self, host: str, port: int, rank_offset: int, world_size: int, backend: str,
                          timeout_s: float, generation: int) -> list[dict]:
        return self.engine.join_weight_group(host, port, rank_offset, world_size, backend, timeout_s, generation)

    def receive_weights(self, version: int, mode: str, buckets: list[dict], adapter_config: str | None,
                        timeout_s: float) -> dict[str, Any]:
        return self.engine.receive_weights(version, mode, buckets, adapter_config, timeout_s)

    def shutdown(self) -> None:
        self.engine.shutdown()


def shard_sources(sources: Sequence[Source], num_shards: int) -> list[list[Source]]:
    """Contiguous, balanced shards by total source length (each group stays whole)."""
    shards: list[list[Source]] = [[] for _ in range(num_shards)]
    loads = [0] * num_shards
    # longest first onto the least-loaded shard: steps run in lock-step, so balance length
    for src in sorted(sources, key=lambda s: -len(s.text)):
        k = loads.index(min(loads))
        shards[k].append(src)
        loads[k] += len(src.text)
    return shards


class RolloutPool:
    """N RolloutWorker replicas; restarts a dead one and redoes its shard."""

    def __init__(self, model: str, dtype: str, cfg: RolloutConfig, seed: int,
                 slots: Sequence[dict[str, Any]] | None = None, max_restarts: int = 3,
                 start_timeout_s: float = 900.0, call_timeout_s: float = 600.0):
        """``slots``: Ray options of worker i (resources, placement-group strategy, env) from the
        driver's placement plan; without them each worker asks for the config's CPUs/GPUs."""
        self.model, self.dtype, self.cfg, self.seed = model, dtype, cfg, seed
        self.slots = list(slots) if slots is not None else None
        self.max_restarts = max_restarts
        self.start_timeout_s, self.call_timeout_s = start_timeout_s, call_timeout_s
        self.restarts = 0
        # called with a replacement worker's index once it is up, to give it the current weights;
        # without it the pool replays the last driver-path update (``update_weights``)
        self.on_replace: Any = None
        self._last_update: tuple[int, str, Any] | None = None
        self.workers = [self._start(i) for i in range(cfg.num_workers)]
        self.infos = self._ray().get([w.info.remote() for w in self.workers], timeout=start_timeout_s)

    @staticmethod
    def _ray():
        import ray

        return ray

    def _start(self, index: int):
        ray = self._ray()
        options: dict[str, Any] = dict(num_cpus=self.cfg.num_cpus_per_worker,
                                       num_gpus=self.cfg.num_gpus_per_worker, max_restarts=0)
        if self.slots is not None:
            options.update(self.slots[index])
        actor = ray.remote(RolloutWorker).options(**options).remote(
            self.model, self.dtype, self.cfg.model_dump(), self.seed, index)
        return actor

    def _restart(self, index: int) -> None:
        ray = self._ray()
        self.restarts += 1
        if self.restarts > self.max_restarts:
            raise RuntimeError(f"rollout worker {index} died {self.restarts} times; giving up")
        log.warning("rollout worker %d died; restarting it and redoing its shard", index)
        try:
            ray.kill(self.workers[index])
        except Exception:  # noqa: BLE001 - already gone
            pass
        self.workers[index] = self._start(index)
        self.infos[index] = ray.get(self.workers[index].info.remote(), timeout=self.start_timeout_s)
        if self.on_replace is not None:
            self.on_replace(index)
        elif self._last_update is not None:
            version, mode, payload = self._last_update
            ray.get(self.workers[index].update_weights.remote(version, mode, payload), timeout=self.call_timeout_s)

    def rollout(self, sources: Sequence[Source], group_size: int, sampling: Sampling,
                timeout_s: float = 3600.0) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """All B·N trajectories, ordered by the order of ``sources`` then sample index.

        Each source is one group (``Source.group``; its position when unset): a source that
        appears twice gives two groups, never one merged one. A shard that takes longer than
        ``timeout_s`` raises TimeoutError naming its worker."""
        ray = self._ray()
        from ray.exceptions import ActorDiedError, GetTimeoutError, RayActorError

        sources = [s if s.group is not None else replace(s, group=k) for k, s in enumerate(sources)]
        order = {s.group: k for k, s in enumerate(sources)}
        if len(order) != len(sources):
            raise ValueError("two sources of one rollout call share a group id")
        shards = shard_sources(sources, len(self.workers))
        start = time.perf_counter()
        pending = {i: self._submit(i, shard, group_size, sampling)
                   for i, shard in enumerate(shards) if shard}
        results: dict[int, dict[str, Any]] = {}
        while pending:
            i, ref = next(iter(pending.items()))
            try:
                results[i] = ray.get(ref, timeout=max(timeout_s - (time.perf_counter() - start), 1.0))
                del pending[i]
            except GetTimeoutError:
                raise TimeoutError(f"rollout worker {i} did not finish its shard within {timeout_s:g} s") from None
            except (RayActorError, ActorDiedError):
                self._restart(i)
                pending[i] = self._submit(i, shards[i], group_size, sampling)
        trajs = [t for r in results.values() for t in r["trajectories"]]
        trajs.sort(key=lambda t: (order[t["meta"]["group"]], t["meta"]["sample"]))
        stats = merge_stats([r["stats"] for r in results.values()])
        stats["wall_s"] = time.perf_counter() - start
        stats["weight_versions"] = sorted({r["weight_version"] for r in results.values()})
        return trajs, stats

    def _submit(self, i: int, shard: list[Source], group_size: int, sampling: Sampling):
        return self.workers[i].rollout.remote([asdict(s) for s in shard], group_size,
                                              sampling.temperature, sampling.top_p)

    def update_weights(self, version: int, mode: str, payload: Any) -> dict[str, float]:
        """The driver path: ``payload`` bytes through the object store into every engine (the
        baseline of ``launch.py bench sync``; training broadcasts, ``orchestration.weight_sync``)."""
        ray = self._ray()
        start = time.perf_counter()
        self._last_update = (version, mode, payload)
        ref = ray.put(payload)   # one copy in the object store for all replicas
        infos = ray.get([w.update_weights.remote(version, mode, ref) for w in self.workers],
                        timeout=self.call_timeout_s)
        return {"seconds": time.perf_counter() - start,
                "engine_seconds": max(i["seconds"] for i in infos)}

    def shutdown(self) -> None:
        ray = self._ray()
        for w in self.workers:
            try:
                ray.get(w.shutdown.remote(), timeout=60)
            except Exception:  # noqa: BLE001 - best effort at exit
                pass
            ray.kill(w)


def merge_stats(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Sum the counters of several workers' rollout stats."""
    keys = ("trajectories", "generated_tokens", "prompt_tokens", "cached_prompt_tokens",
            "appended_tokens", "recomputed_prompt_tokens", "generate_s")
    out: dict[str, Any] = {k: sum(p.get(k, 0) for p in parts) for k in keys}
    out["steps"] = max((p.get("steps", 0) for p in parts), default=0)
    out["prefix_cache_hit_share"] = (out["cached_prompt_tokens"] / out["prompt_tokens"]
                                     if out["prompt_tokens"] else 0.0)
    return out
