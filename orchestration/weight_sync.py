"""Weight sync from the learner into the rollout engines, without the driver (DESIGN §7).

``WeightSync`` forms one torch.distributed group: learner rank 0 (rank 0) and every worker of
every rollout engine (ranks 1..N·tp). A sync asks the learner ranks to send the buckets
(``broadcast_weights``: under ZeRO-3 every rank gathers each bucket in turn) while the engines
receive them straight into ``reload_weights`` (or into a new LoRA adapter). Only the bucket
layout, a few kilobytes, passes through the driver. Each engine returns a checksum of every
bucket it received; a mismatch, or an engine that reports another version, is an error, so the
next rollout provably runs on the weights just sent. A replacement rollout worker makes the
group re-form with it and receive the current weights.

``push_via_driver`` is the older path (learner → driver → object store → engines as one
safetensors ``bytes`` object), kept as the baseline of ``launch.py bench sync``.
"""
from __future__ import annotations

import time
from typing import Any, Sequence


def backend_for(cfg) -> str:
    """NCCL when learner rank 0 and the engines hold whole GPUs of their own, else gloo.

    NCCL refuses two ranks of one group on the same GPU: colocation, or fractional GPUs that
    Ray may pack onto one device, would create that."""
    whole = cfg.learner.num_gpus_per_rank >= 1 and cfg.rollout.num_gpus_per_worker >= 1
    return "nccl" if whole and cfg.ray.placement == "disaggregate" else "gloo"


class WeightSync:
    def __init__(self, learners: Sequence, pool, mode: str, names: list[str] | None, *, tensor_parallel: int,
                 backend: str, bucket_mb: int, timeout_s: float):
        self.learners, self.pool, self.mode, self.names = list(learners), pool, mode, names
        self.tp, self.backend, self.bucket_bytes, self.timeout_s = tensor_parallel, backend, bucket_mb * 2**20, timeout_s
        self.generation, self.version = 0, None
        self.buckets: list[dict] = []
        self.adapter_config: str | None = None

    def _get(self, refs):
        import ray
        from ray.exceptions import GetTimeoutError

        try:
            return ray.get(refs, timeout=self.timeout_s)
        except GetTimeoutError:
            raise RuntimeError(f"weight sync: no answer within ray.sync_timeout_s={self.timeout_s:g} s "
                               "(a learner rank or an engine is stuck or gone)") from None

    def connect(self) -> dict[str, Any]:
        """(Re)form the group with the pool's current workers; plan the buckets once."""
        from rollout.weights import plan_buckets

        start = time.perf_counter()
        self.generation += 1
        self.learners[0].leave_weight_group.remote()
        host, port = self._get(self.learners[0].weight_endpoint.remote())
        world = 1 + len(self.pool.workers) * self.tp
        refs = [self.learners[0].join_weight_group.remote(host, port, world, self.backend, self.timeout_s,
                                                          self.generation)]
        refs += [w.join_weight_group.remote(host, port, 1 + i * self.tp, world, self.backend, self.timeout_s,
                                            self.generation) for i, w in enumerate(self.pool.workers)]
        members = self._get(refs)
        if not self.buckets:
            layout = self._get(self.learners[0].weight_layout.remote(self.mode, self.names))
            self.buckets = plan_buckets(layout["tensors"], self.bucket_bytes)
            self.adapter_config = layout["adapter_config"]
        return {"seconds": time.perf_counter() - start, "world_size": world, "members": members[1:]}

    def push(self, version: int) -> dict[str, float]:
        """Send the current weights to every engine as ``version``; checked end to end."""
        start = time.perf_counter()
        if self.generation == 0:
            self.connect()
        lrefs = [lw.broadcast_weights.remote(self.mode, self.buckets) for lw in self.learners]
        wrefs = [w.receive_weights.remote(version, self.mode, self.buckets, self.adapter_config, self.timeout_s)
                 for w in self.pool.workers]
        results = self._get(lrefs + wrefs)
        sent, received = results[0], results[len(lrefs):]
        for i, info in enumerate(received):
            if info["weight_version"] != version or any(sums != sent["checksums"] for sums in info["checksums"]):
                raise RuntimeError(f"weight sync: rollout worker {i} did not receive version {version} as sent")
        self.version = version
        return {"seconds": time.perf_counter() - start, "send_s": sent["seconds"], "bytes": float(sent["bytes"]),
                "engine_seconds": max(i["seconds"] for i in received), "buckets": float(len(self.buckets))}

    def replace(self, index: int) -> None:
        """A replacement rollout worker is up: re-form the group and resend the current weights."""
        self.connect()
        if self.version is not None:
            self.push(self.version)

    def close(self) -> None:
        for lw in self.learners[:1]:
            lw.leave_weight_group.remote()


def push_via_driver(learners: Sequence, pool, mode: str, names: list[str] | None, version: int,
                    timeout_s: float) -> dict[str, float]:
    """The driver path: rank 0's export as bytes, through the driver and the object store."""
    import ray

    start = time.perf_counter()
    payload = ray.get([lw.export_weights.remote(mode, names) for lw in learners], timeout=timeout_s)[0]
    export_s = time.perf_counter() - start
    info = pool.update_weights(version, mode, payload)
    size = sum(len(v) for v in payload.values()) if isinstance(payload, dict) else len(payload)
    return {"seconds": time.perf_counter() - start, "export_s": export_s, "bytes": float(size),
            "engine_seconds": info["engine_seconds"]}
