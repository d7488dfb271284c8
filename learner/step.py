"""One GRPO update of a rollout batch on one data-parallel rank (DESIGN §2.3).

The loop is written against a small ``RankOps`` interface (score, backward, step, all-reduce)
so it runs on a DeepSpeed engine in the learner actor and on a plain torch model in tests.

Exactness across ranks and accumulation: every micro-batch's loss is its share of the loss of
the *global* minibatch (``grpo.aggregate_loss`` with global token / sequence counts), times the
world size to undo the data-parallel gradient averaging. Summed over micro-batches and averaged
over ranks this is exactly the gradient of the whole minibatch on one rank.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Protocol

import torch

from learner.batch import TrainBatch, TrainTrajectory
from learner.config import LearnerConfig
from learner.grpo import aggregate_loss, grpo_token_loss, rollout_importance_weights
from learner.policy import collate, pad_rows


class RankOps(Protocol):
    """What the update loop needs from a rank."""

    world_size: int

    def logprobs(self, inputs: dict[str, torch.Tensor], *, reference: bool, grad: bool) -> torch.Tensor:
        """Per-token log-probs [B, T] of ``inputs`` scored on its action tokens."""

    def backward(self, loss: torch.Tensor, boundary: bool) -> None:
        """Accumulate gradients; ``boundary`` marks the last micro-batch before ``step``."""

    def step(self) -> float:
        """Apply the optimizer; return the global gradient norm before clipping."""

    def all_reduce(self, values: torch.Tensor, op: str) -> torch.Tensor:
        """Sum ("sum") or maximum ("max") of a float64 tensor over ranks."""


@dataclass(frozen=True)
class StepSettings:
    """The parts of ``LearnerConfig`` the update loop uses."""

    clip_low: float = 0.2
    clip_high: float = 0.28
    kl_beta: float = 0.0
    loss_agg: str = "token-mean"
    ppo_epochs: int = 1
    num_minibatches: int = 1
    micro_batch_size: int = 8
    is_correction: str = "none"
    is_cap: float = 2.0

    @classmethod
    def from_config(cls, cfg: LearnerConfig) -> "StepSettings":
        return cls(cfg.clip_low, cfg.clip_high, cfg.kl_beta, cfg.loss_agg, cfg.ppo_epochs,
                   cfg.num_minibatches, cfg.micro_batch_size, cfg.is_correction, cfg.is_cap)


# Sums reduced over ranks at the end of a step (index -> metric accumulator).
_SUMS = ("loss", "tokens_seen", "kl", "clipped", "ratio", "logprob", "mismatch", "mismatch_tokens",
         "forward_tokens", "padded_tokens", "is_weight", "is_raw", "is_corrected")
_MAXES = ("ratio_max", "neg_ratio_min", "mismatch_max", "is_raw_max")


def micro_batch_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None,
                     advantages: torch.Tensor, action_mask: torch.Tensor, settings: StepSettings,
                     global_tokens: int, global_sequences: int,
                     rollout_logp: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """This micro-batch's share of the global minibatch loss, and detached metric sums.

    With ``rollout_logp`` (the sampler's log-probs) the policy-gradient term is reweighted by
    ``settings.is_correction`` (see :func:`learner.grpo.rollout_importance_weights`).
    """
    kl_coef = settings.kl_beta if ref_logp is not None else 0.0
    on = action_mask > 0
    iw = None
    if rollout_logp is not None:
        iw = rollout_importance_weights(old_logp, rollout_logp, action_mask, settings.is_correction,
                                        settings.is_cap)
    out = grpo_token_loss(logp, old_logp, advantages, action_mask, settings.clip_low, settings.clip_high,
                          kl_coef=kl_coef, ref_logp=ref_logp,
                          is_weights=iw.weights if iw is not None and settings.is_correction != "none" else None)
    loss = aggregate_loss(out.loss, action_mask, settings.loss_agg, global_tokens, global_sequences)
    ratio = out.ratio.detach()
    stats = {
        "loss": loss.detach().double(),
        "tokens_seen": on.sum().double(),
        "kl": out.kl.detach().sum().double(),
        "clipped": out.clipped.sum().double(),
        "ratio": ratio[on].sum().double(),
        "logprob": logp.detach()[on].sum().double(),
        "ratio_max": ratio[on].max().double() if on.any() else torch.tensor(-math.inf, dtype=torch.float64),
        "neg_ratio_min": (-ratio[on]).max().double() if on.any() else torch.tensor(-math.inf, dtype=torch.float64),
    }
    if iw is not None:
        stats["is_weight"] = iw.weights[on].sum().double()
        stats["is_raw"] = iw.raw[on].sum().double()
        stats["is_corrected"] = iw.corrected.sum().double()
        stats["is_raw_max"] = iw.raw[on].max().double() if on.any() else torch.tensor(-math.inf, dtype=torch.float64)
    return loss, stats


def split_minibatches(n: int, parts: int) -> list[list[int]]:
    """Contiguous, near-equal index ranges (some empty when ``n < parts``)."""
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [list(range(bounds[i], bounds[i + 1])) for i in range(parts)]


def plan_micro_batches(indices: list[int], lengths: list[int], size: int,
                       count: int, filler: int) -> list[tuple[list[int], float]]:
    """``count`` micro-batches of at most ``size`` trajectories, as (indices, weight).

    Sorted by length so each micro-batch pads little. Ranks must run the same number of
    forwards/backwards (ZeRO-2/3 communicate in each), so a rank with less work adds
    zero-weight micro-batches holding one ``filler`` trajectory.
    """
    order = sorted(indices, key=lambda i: lengths[i], reverse=True)
    chunks = [(order[i:i + size], 1.0) for i in range(0, len(order), size)]
    if len(chunks) > count:
        raise ValueError(f"{len(chunks)} micro-batches planned but only {count} agreed")
    return chunks + [([filler], 0.0)] * (count - len(chunks))


def _micro_count(n: int, size: int) -> int:
    return -(-n // size)


def _score_all(rank: RankOps, trajs: list[TrainTrajectory], lengths: list[int], size: int,
               reference: bool) -> list[torch.Tensor]:
    """No-grad log-probs of every local trajectory (1-D tensors, one per trajectory)."""
    count = int(rank.all_reduce(torch.tensor([_micro_count(len(trajs), size)], dtype=torch.float64), "max"))
    out: list[torch.Tensor | None] = [None] * len(trajs)
    for idx, weight in plan_micro_batches(list(range(len(trajs))), lengths, size, count, filler=0):
        inputs = collate([trajs[i] for i in idx])
        logp = rank.logprobs(inputs, reference=reference, grad=False)
        if weight:
            for row, i in enumerate(idx):
                out[i] = logp[row, :lengths[i]].detach().float().cpu().clone()
    return out  # type: ignore[return-value]


def grpo_step(rank: RankOps, shard: TrainBatch, settings: StepSettings,
              global_counts: dict[str, int] | None = None) -> dict[str, float]:
    """Run all updates of one rollout batch on this rank's ``shard``; return global metrics.

    Old log-probs: with a single update per batch they are the current forward's detached
    values (ratio = 1 exactly); with several, one no-grad pass before the first update.
    ``global_counts`` ({"tokens", "sequences"} of the whole batch, see ``TrainBatch.counts``)
    is checked against what the ranks hold together.
    """
    trajs = shard.trajectories
    if not trajs:
        raise ValueError("a learner rank got no trajectories; give every rank at least one")
    start = time.perf_counter()
    lengths = [len(t.token_ids) for t in trajs]
    size = settings.micro_batch_size
    minibatches = split_minibatches(len(trajs), settings.num_minibatches)
    local = torch.tensor([[sum(trajs[i].num_actions for i in mb),
                           sum(1 for i in mb if trajs[i].num_actions > 0),
                           _micro_count(len(mb), size)] for mb in minibatches], dtype=torch.float64)
    counts = rank.all_reduce(local[:, :2].contiguous(), "sum").long().tolist()
    micro_counts = rank.all_reduce(local[:, 2].contiguous(), "max").long().tolist()
    if global_counts is not None:
        held = {"tokens": sum(c[0] for c in counts), "sequences": sum(c[1] for c in counts)}
        if held != {k: int(global_counts[k]) for k in held}:
            raise ValueError(f"ranks hold {held} but the batch has {global_counts}: a shard was lost or duplicated")

    timings = {"seconds_reference": 0.0, "seconds_old_logprobs": 0.0}
    ref = old = None
    if settings.kl_beta > 0:
        t0 = time.perf_counter()
        ref = _score_all(rank, trajs, lengths, size, reference=True)
        timings["seconds_reference"] = time.perf_counter() - t0
    if settings.ppo_epochs * settings.num_minibatches > 1:
        t0 = time.perf_counter()
        old = _score_all(rank, trajs, lengths, size, reference=False)
        timings["seconds_old_logprobs"] = time.perf_counter() - t0

    t_update = time.perf_counter()
    sums = dict.fromkeys(_SUMS, 0.0)
    maxes = dict.fromkeys(_MAXES, -math.inf)
    grad_norms: list[float] = []
    for epoch in range(settings.ppo_epochs):
        for mb, (tokens, seqs), count in zip(minibatches, counts, micro_counts):
            plan = plan_micro_batches(mb, lengths, size, count, filler=mb[0] if mb else 0)
            for m, (idx, weight) in enumerate(plan):
                inputs = collate([trajs[i] for i in idx])
                width = inputs["input_ids"].shape[1]
                logp = rank.logprobs(inputs, reference=False, grad=True)
                dev = logp.device
                mask = inputs["action_mask"].to(dev)
                old_logp = pad_rows((old[i] for i in idx), width).to(dev) if old is not None else logp.detach()
                ref_logp = pad_rows((ref[i] for i in idx), width).to(dev) if ref is not None else None
                loss, stats = micro_batch_loss(logp, old_logp, ref_logp, inputs["advantages"].to(dev), mask,
                                               settings, tokens, seqs, inputs["rollout_logprobs"].to(dev))
                rank.backward(loss * (weight * rank.world_size), boundary=m == len(plan) - 1)
                if not weight:
                    continue
                for key in stats:
                    if key in maxes:
                        maxes[key] = max(maxes[key], float(stats[key]))
                    else:
                        sums[key] += float(stats[key])
                sums["forward_tokens"] += float(inputs["attention_mask"].sum())
                sums["padded_tokens"] += float(mask.shape[0] * width)
                if epoch == 0:   # sampler vs learner before any update of this batch
                    diff = (inputs["rollout_logprobs"].to(dev) - old_logp).abs()[mask > 0]
                    sums["mismatch"] += float(diff.sum())
                    sums["mismatch_tokens"] += float(diff.numel())
                    maxes["mismatch_max"] = max(maxes["mismatch_max"], float(diff.max()) if diff.numel() else 0.0)
            grad_norms.append(float(rank.step()))
    timings["seconds_update"] = time.perf_counter() - t_update

    total = rank.all_reduce(torch.tensor([sums[k] for k in _SUMS], dtype=torch.float64), "sum")
    peak = rank.all_reduce(torch.tensor([maxes[k] for k in _MAXES], dtype=torch.float64), "max")
    s = dict(zip(_SUMS, total.tolist()))
    mx = dict(zip(_MAXES, peak.tolist()))
    seen = max(s["tokens_seen"], 1.0)
    updates = len(grad_norms)
    seconds = time.perf_counter() - start
    return {
        "loss": s["loss"] / updates,
        "kl": s["kl"] / seen,
        "clip_frac": s["clipped"] / seen,
        "ratio_mean": s["ratio"] / seen,
        "ratio_max": mx["ratio_max"],
        "ratio_min": -mx["neg_ratio_min"],
        "logprob_mean": s["logprob"] / seen,
        "grad_norm": sum(grad_norms) / updates,
        "grad_norm_max": max(grad_norms),
        "logprob_mismatch": s["mismatch"] / max(s["mismatch_tokens"], 1.0),
        "logprob_mismatch_max": max(mx["mismatch_max"], 0.0),
        # pi_old / pi_rollout per action token, over every update of the batch
        "is_weight_mean": s["is_weight"] / seen,
        "is_ratio_mean": s["is_raw"] / seen,
        "is_ratio_max": max(mx["is_raw_max"], 0.0),
        "is_corrected_frac": s["is_corrected"] / seen,
        "tokens": float(sum(c[0] for c in counts)),
        "sequences": float(sum(c[1] for c in counts)),
        "forward_tokens": s["forward_tokens"],
        "padding_share": 1.0 - s["forward_tokens"] / max(s["padded_tokens"], 1.0),
        "updates": float(updates),
        **timings,
        "seconds": seconds,
        "tokens_per_s": s["forward_tokens"] / max(timings["seconds_update"], 1e-9),
    }
