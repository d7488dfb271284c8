"""Supervised fine-tuning on action tokens (DESIGN §2.5): cross-entropy where the action mask
is 1, one forward/backward per sequence, one optimizer step per batch.

Written against the same ``RankOps`` interface as the GRPO step (``learner.step``), so it runs
on the DeepSpeed engine of a learner rank and on a plain model in tests. The loss of every
micro-batch is its share of the mean over the *global* batch's action tokens, times the world
size to undo data-parallel gradient averaging: the update equals one rank holding the batch.
"""
from __future__ import annotations

import time

import torch

from learner.batch import TrainBatch
from learner.policy import collate
from learner.step import RankOps, plan_micro_batches


def sft_token_loss(logp: torch.Tensor, action_mask: torch.Tensor, global_tokens: float) -> torch.Tensor:
    """Summed negative log-likelihood of the action tokens divided by ``global_tokens``."""
    return -(logp * action_mask).sum() / max(float(global_tokens), 1.0)


def _micro_count(n: int, size: int) -> int:
    return -(-n // size)


def _plan(rank: RankOps, shard: TrainBatch, size: int) -> tuple[list[tuple[list[int], float]], float]:
    """Micro-batches (the same count on every rank) and the global number of action tokens."""
    trajs = shard.trajectories
    if not trajs:
        raise ValueError("a learner rank got no sequences; give every rank at least one")
    local = torch.tensor([float(sum(t.num_actions for t in trajs)), float(_micro_count(len(trajs), size))],
                         dtype=torch.float64)
    tokens = float(rank.all_reduce(local[:1].clone(), "sum")[0])
    count = int(rank.all_reduce(local[1:].clone(), "max")[0])
    lengths = [len(t.token_ids) for t in trajs]
    return plan_micro_batches(list(range(len(trajs))), lengths, size, count, filler=0), tokens


def sft_step(rank: RankOps, shard: TrainBatch, micro_batch_size: int,
             global_tokens: int | None = None) -> dict[str, float]:
    """One optimizer step on this rank's ``shard``; global metrics (equal on every rank).

    ``global_tokens`` (action tokens of the whole batch) is checked against what the ranks hold.
    """
    start = time.perf_counter()
    plan, tokens = _plan(rank, shard, micro_batch_size)
    if global_tokens is not None and int(tokens) != int(global_tokens):
        raise ValueError(f"ranks hold {int(tokens)} action tokens but the batch has {global_tokens}")
    trajs = shard.trajectories
    sums = torch.zeros(4, dtype=torch.float64)   # nll, forward tokens, padded tokens, sequences
    for m, (idx, weight) in enumerate(plan):
        inputs = collate([trajs[i] for i in idx])
        logp = rank.logprobs(inputs, reference=False, grad=True)
        mask = inputs["action_mask"].to(logp.device)
        loss = sft_token_loss(logp, mask, tokens)
        rank.backward(loss * (weight * rank.world_size), boundary=m == len(plan) - 1)
        if weight:
            real = sum(len(trajs[i].token_ids) for i in idx)   # a prefix batch's mask is [B, T, T]
            sums += torch.tensor([float(-(logp.detach() * mask).sum()), float(real),
                                  float(mask.numel()), float(len(idx))], dtype=torch.float64)
    grad_norm = float(rank.step())
    total = rank.all_reduce(sums, "sum").tolist()
    seconds = time.perf_counter() - start
    return {"loss": total[0] / max(tokens, 1.0), "tokens": tokens, "sequences": total[3],
            "forward_tokens": total[1], "padding_share": 1.0 - total[1] / max(total[2], 1.0),
            "grad_norm": grad_norm, "seconds": seconds, "tokens_per_s": total[1] / max(seconds, 1e-9)}


def sft_eval(rank: RankOps, shard: TrainBatch, micro_batch_size: int) -> dict[str, float]:
    """Mean cross-entropy per action token over the ranks' shards, without gradients."""
    plan, tokens = _plan(rank, shard, micro_batch_size)
    nll = 0.0
    for idx, weight in plan:
        inputs = collate([shard.trajectories[i] for i in idx])
        logp = rank.logprobs(inputs, reference=False, grad=False)
        if weight:
            nll += float(-(logp.detach() * inputs["action_mask"].to(logp.device)).sum())
    total = float(rank.all_reduce(torch.tensor([nll], dtype=torch.float64), "sum")[0])
    return {"loss": total / max(tokens, 1.0), "tokens": tokens}
