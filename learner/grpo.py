"""GRPO math (DESIGN §2.3) on plain tensors: group advantages, the clipped token loss with a
k3 KL penalty, and loss aggregation that is exact across ranks and accumulation steps.

No DeepSpeed, no Ray: the learner actor calls these on micro-batches.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

Aggregation = Literal["token-mean", "seq-mean-token-mean"]
ISCorrection = Literal["none", "truncate", "mask"]


@dataclass(frozen=True)
class GroupAdvantages:
    advantages: torch.Tensor  # [num_groups, group_size], one value per trajectory
    zero_groups: int          # groups whose rewards are all equal (advantage 0: no signal)


def group_advantages(rewards: torch.Tensor, scale_by_std: bool = True,
                     eps: float = 1e-6) -> GroupAdvantages:
    """A_i = (r_i - mean_g r) / (std_g r + eps); with ``scale_by_std=False`` (Dr. GRPO) no division.

    ``rewards`` is [num_groups, group_size]. The std is the unbiased sample std (as verl and TRL
    use); a group of one trajectory or of equal rewards gets advantage 0, never NaN.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [num_groups, group_size], got shape {tuple(rewards.shape)}")
    rewards = rewards.to(torch.float64)
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    spread = rewards.max(dim=1).values - rewards.min(dim=1).values
    zero = spread == 0
    if scale_by_std and rewards.shape[1] > 1:
        std = rewards.std(dim=1, unbiased=True, keepdim=True)
        centred = centred / (std + eps)
    centred[zero] = 0.0
    return GroupAdvantages(advantages=centred.to(torch.float32), zero_groups=int(zero.sum()))


@dataclass
class ImportanceWeights:
    weights: torch.Tensor     # [batch, seq] detached per-token factor on the policy-gradient term
    raw: torch.Tensor         # [batch, seq] pi_old / pi_rollout before truncation or masking (1 off actions)
    corrected: torch.Tensor   # bool [batch, seq]: action tokens whose weight was capped or masked


def rollout_importance_weights(old_logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor,
                               mode: ISCorrection, cap: float) -> ImportanceWeights:
    """Token-level correction for sampling from another distribution than the learner's pi_old.

    The sampler's policy differs from the learner's when rollouts ran on older weights
    (overlapped training) or when vLLM's kernels disagree numerically with the learner's. The
    per-token ratio w = pi_old / pi_rollout = exp(old_logp - rollout_logp) then reweights the
    clipped objective:
    - ``truncate``: min(w, cap), truncated importance sampling (bias traded for bounded variance);
    - ``mask``: w where 1/cap <= w <= cap, else 0: tokens too far off-policy carry no gradient;
    - ``none``: 1 everywhere (the weights are still reported).
    Off-action positions get weight 0 and raw ratio 1. No gradient flows through the weights.
    """
    if cap < 1.0:
        raise ValueError(f"importance-weight cap must be >= 1, got {cap}")
    on = mask > 0
    log_w = torch.where(on, old_logp.detach() - rollout_logp.detach(), torch.zeros_like(old_logp))
    raw = torch.exp(log_w.clamp(max=80.0))   # exp(80) is finite in fp32; larger is capped anyway
    if mode == "none":
        weights, corrected = torch.ones_like(raw), torch.zeros_like(on)
    elif mode == "truncate":
        corrected = (raw > cap) & on
        weights = raw.clamp(max=cap)
    elif mode == "mask":
        corrected = ((raw > cap) | (raw < 1.0 / cap)) & on
        weights = torch.where(corrected, torch.zeros_like(raw), raw)
    else:
        raise ValueError(f"unknown importance-sampling correction {mode!r}; use none, truncate or mask")
    return ImportanceWeights(weights=weights * on.to(raw.dtype), raw=raw, corrected=corrected)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 estimator of KL(pi || ref) per token: exp(ref - logp) - (ref - logp) - 1 (>= 0)."""
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1.0


@dataclass
class TokenLoss:
    loss: torch.Tensor        # per-token loss, same shape as logp (0 where mask is 0)
    clipped: torch.Tensor     # bool per token: the clipped branch was the active one
    kl: torch.Tensor          # per-token k3 KL
    ratio: torch.Tensor       # per-token pi / pi_old


def grpo_token_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                    mask: torch.Tensor, clip_low: float, clip_high: float,
                    kl_coef: float = 0.0, ref_logp: torch.Tensor | None = None,
                    is_weights: torch.Tensor | None = None) -> TokenLoss:
    """Clipped policy-gradient loss per token plus ``kl_coef`` * k3 KL to the reference.

    ``logp``/``old_logp``/``ref_logp``/``mask`` are [batch, seq]; ``advantages`` is [batch]
    (one value per trajectory, broadcast to its action tokens). ``is_weights`` ([batch, seq],
    from :func:`rollout_importance_weights`) multiplies the policy-gradient term only.
    """
    mask = mask.to(logp.dtype)
    on = mask > 0
    adv = advantages.to(logp.dtype).unsqueeze(-1)
    # Off-action positions are forced to ratio 1 / KL 0 before exp: a large log-ratio there would
    # overflow to inf, and inf * 0 (the mask) is NaN in the loss and its gradient.
    ratio = torch.exp(torch.where(on, logp - old_logp, torch.zeros_like(logp)))
    unclipped = -adv * ratio
    clipped_obj = -adv * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped_obj)
    if is_weights is not None:
        loss = loss * is_weights.detach().to(loss.dtype)
    clipped = (clipped_obj > unclipped) & on
    if kl_coef > 0.0:
        if ref_logp is None:
            raise ValueError("kl_coef > 0 needs ref_logp")
        kl = k3_kl(logp, torch.where(on, ref_logp, logp))
        loss = loss + kl_coef * kl
    else:
        kl = torch.zeros_like(logp)
    return TokenLoss(loss=loss * mask, clipped=clipped, kl=kl * mask, ratio=ratio)


def aggregate_loss(token_loss: torch.Tensor, mask: torch.Tensor, mode: Aggregation,
                   global_tokens: int, global_sequences: int) -> torch.Tensor:
    """This micro-batch's share of the global-batch loss.

    Summing the returned values over every micro-batch of every rank gives exactly the loss of
    the whole global batch, so gradients do not depend on how the batch was split. (The caller
    undoes the data-parallel gradient averaging by scaling with the world size.)
    - ``token-mean``: sum of token losses / action tokens in the global batch.
    - ``seq-mean-token-mean``: each sequence's mean over its action tokens, summed, / sequences.
    """
    mask = mask.to(token_loss.dtype)
    if mode == "token-mean":
        return (token_loss * mask).sum() / max(global_tokens, 1)
    if mode == "seq-mean-token-mean":
        per_seq = (token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        return per_seq.sum() / max(global_sequences, 1)
    raise ValueError(f"unknown aggregation {mode!r}; use token-mean or seq-mean-token-mean")


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    mask = mask.to(values.dtype)
    return float((values * mask).sum() / mask.sum().clamp(min=1.0))


def informative_groups(rewards: torch.Tensor) -> torch.Tensor:
    """bool [num_groups]: groups whose rewards are not all equal (only these carry a gradient)."""
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [num_groups, group_size], got shape {tuple(rewards.shape)}")
    return (rewards.max(dim=1).values - rewards.min(dim=1).values) > 0
