"""Sending weights from learner rank 0 straight into the rollout engines' workers (DESIGN §7).

Learner rank 0 hosts a ``TCPStore`` and is rank 0 of a torch.distributed group (gloo on CPU,
NCCL when both sides hold GPUs) whose other members are every rollout engine's vLLM workers.
Weights travel in buckets: each bucket is one flat ``uint8`` buffer holding several tensors at
the byte offsets of a layout the driver computed (``rollout.weights.plan_buckets``) and gave to
both ends, so nothing but that small layout passes through the driver. Every collective has a
timeout. A checksum of each buffer lets the driver check that every engine got what was sent.
"""
from __future__ import annotations

import socket
from datetime import timedelta
from typing import Sequence

import torch

GROUP_PREFIX = "simulrl-weights"
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def new_group(host: str, port: int, rank: int, world_size: int, backend: str, timeout_s: float,
              generation: int):
    """One process group (rank ``rank`` of ``world_size``) over a TCPStore at host:port; rank 0 hosts it."""
    import torch.distributed as dist

    timeout = timedelta(seconds=timeout_s)
    store = dist.TCPStore(host, port, world_size, is_master=rank == 0, timeout=timeout, wait_for_workers=False)
    prefixed = dist.PrefixStore(f"{GROUP_PREFIX}-{generation}/", store)
    if backend == "nccl":
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        return dist.ProcessGroupNCCL(prefixed, rank, world_size, opts), store
    return dist.ProcessGroupGloo(prefixed, rank, world_size, timeout), store


def buffer_checksum(buf: torch.Tensor) -> int:
    """A cheap fingerprint of a bucket (about 64k sampled bytes); the receivers compute the same."""
    step = max(1, buf.numel() // 65536)
    return int(buf[::step].to(torch.int64).sum().item()) * 1_000_003 + int(buf.numel())


class WeightSender:
    """Rank 0 of the weight group, inside learner rank 0."""

    def __init__(self, host: str, port: int, world_size: int, backend: str, timeout_s: float, generation: int):
        self.backend, self.timeout = backend, timedelta(seconds=timeout_s)
        self.device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        self.group, self._store = new_group(host, port, 0, world_size, backend, timeout_s, generation)

    def send(self, bucket: dict, tensors: dict[str, torch.Tensor]) -> tuple[int, int]:
        """Pack ``tensors`` at the offsets of ``bucket`` and broadcast it: (bytes, checksum)."""
        buf = torch.empty(bucket["size"], dtype=torch.uint8, device=self.device)
        for name, _dtype, _shape, offset, nbytes in bucket["tensors"]:
            t = tensors[name]
            buf[offset:offset + nbytes].copy_(t.detach().contiguous().reshape(-1).view(torch.uint8))
        self.group.broadcast(buf, 0).wait(self.timeout)
        return int(buf.numel()), buffer_checksum(buf)

    def close(self) -> None:
        self.group = None
        self._store = None


def tensor_layout(items: Sequence[tuple[str, torch.dtype, Sequence[int]]]) -> list[tuple[str, str, list[int]]]:
    """(name, dtype name, shape) rows as the driver's bucket planner takes them."""
    return [(name, str(dtype).removeprefix("torch."), [int(d) for d in shape]) for name, dtype, shape in items]
