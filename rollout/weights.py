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
