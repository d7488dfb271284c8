"""SimulMask attention masks with ExPosST position ids for the prefix layout (DESIGN §2.5).

A prefix-layout training sequence is four segments::

    [prompt P] [source S] [middle M] [target N]

(middle = end of the user turn and the assistant header). The layout itself is defined once,
by the rollout's prefix-layout prompter (``rollout.prefix_layout.PrefixPrompter.segments``
gives these four token segments); the learner only counts them here. A simultaneous policy writes
target token i after reading ``reads[i]`` source tokens. Training on the whole sequence in
one pass is policy-consistent only if every row sees what inference saw when it computed
that row's keys and values:

- prompt: causal; source token j: prompt + source[:j+1] (read before any output exists);
- middle: prompt + source[:reads[0]] + middle (computed once, before the first write);
- the row of target token i predicts token i+1, so it sees source[:reads[i+1]] (the last
  row: source[:reads[-1]]), all of middle and target[:i+1].

Positions (ExPosST): source token j sits in reserved slot P+j whatever has been read, the
middle and target follow the ``source_slots`` reserved slots, so no position ever shifts
as the source grows. With RoPE, plain contiguous positions put every target token where it
would be after reading the whole source, which is not where inference put it.

Plain torch; no model code beyond a transformers forward that accepts a 4-D mask.
"""
from __future__ import annotations

from typing import Sequence

import torch

from learner.batch import PrefixSegments, check_reads

__all__ = ["PrefixSegments", "additive_mask", "collate_prefix", "contiguous_positions", "expost_positions",
           "masked_logprobs", "simulmask", "wait_k_reads"]


def wait_k_reads(k: int, num_target: int, num_source: int) -> list[int]:
    """Source tokens read when writing each target token under wait-k: min(k + i, S)."""
    if k < 0:
        raise ValueError("k must be >= 0")
    return [min(k + i, num_source) for i in range(num_target)]


def simulmask(seg: PrefixSegments, reads: Sequence[int]) -> torch.Tensor:
    """Boolean [L, L] mask, ``mask[q, k]`` True where row q may attend to key k."""
    check_reads(seg, reads)
    P, S, M, N = seg.prompt, seg.source, seg.middle, seg.target
    L = seg.length
    mask = torch.tril(torch.ones(L, L, dtype=torch.bool))
    src0, mid0, tgt0 = P, P + S, P + S + M
    first = reads[0] if N else S
    # middle rows: only the first read of the source
    mask[mid0:tgt0, src0 + first:mid0] = False
    # target rows: the source read before the token they predict
    for i in range(N):
        visible = reads[min(i + 1, N - 1)]
        mask[tgt0 + i, src0 + visible:mid0] = False
    return mask


def expost_positions(seg: PrefixSegments) -> torch.Tensor:
    """Position ids [L]: source in reserved slots, middle and target after all slots."""
    P, S, M, N, R = seg.prompt, seg.source, seg.middle, seg.target, seg.slots
    return torch.cat([torch.arange(P + S), torch.arange(P + R, P + R + M + N)])


def contiguous_positions(seg: PrefixSegments) -> torch.Tensor:
    """Plain 0..L-1 positions (what naive masked training uses)."""
    return torch.arange(seg.length)


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean [L, L] or [B, L, L] mask as transformers' 4-D additive mask [B, 1, L, L]."""
    if allowed.dim() == 2:
        allowed = allowed.unsqueeze(0)
    out = torch.zeros(allowed.shape, dtype=dtype)
    out.masked_fill_(~allowed, torch.finfo(dtype).min)
    return out.unsqueeze(1)


def collate_prefix(samples: Sequence[tuple[Sequence[int], PrefixSegments, Sequence[int]]],
                   pad_id: int = 0, expost: bool = True) -> dict[str, torch.Tensor]:
    """Right-pad ``(token_ids, segments, reads)`` sentences into model inputs.

    Returns ``input_ids`` [B, T], ``attention_mask`` bool [B, T, T] (pad rows see only
    themselves, so no softmax row is empty), ``position_ids`` [B, T] and ``target_mask``
    [B, T] (1 on target tokens).
    """
    T = max(seg.length for _, seg, _ in samples)
    B = len(samples)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    allowed = torch.eye(T, dtype=torch.bool).repeat(B, 1, 1)
    pos = torch.zeros(B, T, dtype=torch.long)
    target = torch.zeros(B, T, dtype=torch.float32)
    for b, (tokens, seg, reads) in enumerate(samples):
        if len(tokens) != seg.length:
            raise ValueError(f"sample {b}: {len(tokens)} tokens but segments sum to {seg.length}")
        n = seg.length
        ids[b, :n] = torch.tensor(list(tokens), dtype=torch.long)
        allowed[b, :n, :n] = simulmask(seg, reads)
        pos[b, :n] = expost_positions(seg) if expost else contiguous_positions(seg)
        pos[b, n:] = torch.arange(T - n) + (int(pos[b, n - 1]) + 1 if n else 0)
        target[b, n - seg.target:n] = 1.0
    return {"input_ids": ids, "attention_mask": allowed, "position_ids": pos, "target_mask": target}


def masked_logprobs(model, input_ids: torch.Tensor, allowed: torch.Tensor, position_ids: torch.Tensor,
                    token_mask: torch.Tensor) -> torch.Tensor:
    """``out[b, k] = log p(input_ids[b, k] | visible keys of row k-1)`` under the mask, fp32.

    One forward of a transformers causal LM with a 4-D additive mask and explicit positions;
    only positions where ``token_mask`` is 1 are scored, the rest are 0.
    """
    dtype = next(model.parameters()).dtype
    mask = additive_mask(allowed, dtype).to(input_ids.device)
    logits = model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                   use_cache=False).logits
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    out = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    out[:, 1:] = picked * token_mask[:, 1:].to(picked.device)
    return out
