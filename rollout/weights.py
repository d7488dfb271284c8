"""Which tensors must travel together when new weights are pushed into a running engine.

vLLM stores some checkpoint tensors packed into one (q/k/v into ``qkv_proj``, gate/up into
``gate_up_proj``) and reloads a packed tensor only when all of its parts arrive; a partial
group would leave the missing parts unset. So a sender that changed ``q_proj`` and
``v_proj`` (a LoRA on q/v) also sends the unchanged ``k_proj``.
"""
from __future__ import annotations

from typing import Iterable

PACKED_GROUPS: tuple[tuple[str, ...], ...] = (
    ("q_proj", "k_proj", "v_proj"),
    ("gate_proj", "up_proj"),
)


def expand_packed(names: Iterable[str]) -> list[str]:
    """The checkpoint names to send for a change of ``names``, packed siblings added (sorted)."""
    out = set(names)
    for name in list(out):
        parts = name.split(".")
        for group in PACKED_GROUPS:
            for i, part in enumerate(parts):
                if part in group:
                    out.update(".".join(parts[:i] + [sib] + parts[i + 1:]) for sib in group)
    return sorted(out)


DTYPE_SIZES = {"bfloat16": 2, "float16": 2, "float32": 4, "float64": 8}
ALIGN = 64   # byte offset of every tensor in a bucket (any dtype can be viewed in place)


def plan_buckets(layout: Iterable[tuple[str, str, list[int]]], max_bytes: int) -> list[dict]:
    """Group (name, dtype, shape) rows, in order, into buckets of at most ``max_bytes``
    (a larger tensor travels alone). Each bucket: ``{"size": bytes, "tensors": [(name, dtype,
    shape, offset, nbytes)]}``, the layout of one flat uint8 buffer that sender and receivers share."""
    buckets: list[dict] = []
    current: list[tuple[str, str, list[int], int, int]] = []
    size = 0
    for name, dtype, shape in layout:
        if dtype not in DTYPE_SIZES:
            raise ValueError(f"{name}: dtype {dtype} cannot be sent (one of {sorted(DTYPE_SIZES)})")
        numel = 1
        for d in shape:
            numel *= int(d)
        nbytes = numel * DTYPE_SIZES[dtype]
        offset = -(-size // ALIGN) * ALIGN
        if current and offset + nbytes > max_bytes:
            buckets.append({"size": size, "tensors": current})
            current, offset = [], 0
        current.append((name, dtype, list(shape), offset, nbytes))
        size = offset + nbytes
    if current:
        buckets.append({"size": size, "tensors": current})
    return buckets


def bucket_bytes(buckets: Iterable[dict]) -> int:
    return sum(b["size"] for b in buckets)
