"""GRPO math against hand-computed values."""
from __future__ import annotations

import math

import pytest
import torch

from learner.grpo import aggregate_loss, group_advantages, grpo_token_loss, k3_kl


def test_group_advantages_hand_computed():
    rewards = torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])
    out = group_advantages(rewards, eps=0.0)
    # group 1: mean 2, unbiased std 1 -> (-1, 0, 1); group 2: all equal -> 0
    assert torch.allclose(out.advantages, torch.tensor([[-1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]))
    assert out.zero_groups == 1
    drgrpo = group_advantages(torch.tensor([[1.0, 3.0]]), scale_by_std=False)
    assert torch.allclose(drgrpo.advantages, torch.tensor([[-1.0, 1.0]]))
    single = group_advantages(torch.tensor([[4.0]]))
    assert single.advantages.item() == 0.0 and single.zero_groups == 1
    assert not torch.isnan(group_advantages(torch.zeros(3, 4)).advantages).any()


def test_k3_is_zero_at_equality_and_positive_elsewhere():
    logp = torch.tensor([-1.0, -2.0, -0.5])
    assert torch.allclose(k3_kl(logp, logp), torch.zeros(3))
    ref = torch.tensor([-1.5, -1.0, -0.5])
    expected = [math.exp(-0.5) + 0.5 - 1, math.exp(1.0) - 1.0 - 1, 0.0]
    assert torch.allclose(k3_kl(logp, ref), torch.tensor(expected))


def test_token_loss_clipping_hand_computed():
    # token 0: ratio e^0.5 ~ 1.65 with A=+1 -> clipped at 1.2; token 1: ratio e^-0.5 ~ 0.61, A=+1
    # -> unclipped (min of ratio terms); token 2 masked out
    logp = torch.tensor([[0.5, -0.5, 3.0]])
    old = torch.zeros(1, 3)
    mask = torch.tensor([[1, 1, 0]])
    out = grpo_token_loss(logp, old, torch.tensor([1.0]), mask, clip_low=0.2, clip_high=0.2)
    assert torch.allclose(out.loss, torch.tensor([[-1.2, -math.exp(-0.5), 0.0]]))
    assert out.clipped.tolist() == [[True, False, False]]
    # negative advantage: ratio 0.61 < 0.8 is clipped to 0.8, ratio 1.65 is not
    neg = grpo_token_loss(logp, old, torch.tensor([-1.0]), mask, clip_low=0.2, clip_high=0.2)
    assert torch.allclose(neg.loss, torch.tensor([[math.exp(0.5), 0.8, 0.0]]))
    assert neg.clipped.tolist() == [[False, True, False]]


def test_token_loss_adds_kl_and_needs_reference():
    logp = torch.tensor([[-1.0, -1.0]])
    ref = torch.tensor([[-2.0, -1.0]])
    out = grpo_token_loss(logp, logp.clone(), torch.tensor([0.0]), torch.ones(1, 2),
                          0.2, 0.28, kl_coef=0.1, ref_logp=ref)
    assert torch.allclose(out.loss, 0.1 * k3_kl(logp, ref))
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_token_loss(logp, logp, torch.tensor([0.0]), torch.ones(1, 2), 0.2, 0.2, kl_coef=0.1)


def test_first_step_gradient_is_minus_advantage_over_tokens():
    # ratio 1 on the first minibatch: d loss / d logp = -A / global_tokens on each action token
    logp = torch.zeros(2, 3, requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    out = grpo_token_loss(logp, logp.detach(), torch.tensor([2.0, -1.0]), mask, 0.2, 0.2)
    aggregate_loss(out.loss, mask, "token-mean", global_tokens=3, global_sequences=2).backward()
    assert torch.allclose(logp.grad, torch.tensor([[-2 / 3, -2 / 3, 0.0], [1 / 3, 0.0, 0.0]]))


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
def test_aggregation_is_split_invariant(mode):
    gen = torch.Generator().manual_seed(0)
    loss = torch.randn(6, 5, generator=gen)
    mask = (torch.rand(6, 5, generator=gen) > 0.3).long()
    mask[:, 0] = 1
    tokens, seqs = int(mask.sum()), mask.shape[0]
    whole = aggregate_loss(loss, mask, mode, tokens, seqs)
    parts = sum(aggregate_loss(loss[i:i + 2], mask[i:i + 2], mode, tokens, seqs) for i in range(0, 6, 2))
    assert torch.allclose(whole, parts)
    if mode == "token-mean":
        assert torch.allclose(whole, (loss * mask).sum() / tokens)
    else:
        per_seq = (loss * mask).sum(1) / mask.sum(1)
        assert torch.allclose(whole, per_seq.mean())
    with pytest.raises(ValueError, match="unknown aggregation"):
        aggregate_loss(loss, mask, "sum", tokens, seqs)


def test_off_action_positions_cannot_overflow_into_nan():
    # a prompt position where the recomputed log-prob is far from the value passed as old/ref
    # (e.g. 0 from the rollout): exp overflows to inf, and inf * mask 0 would be NaN
    logp = torch.tensor([[-200.0, -1.0]], requires_grad=True)
    zeros = torch.zeros(1, 2)
    mask = torch.tensor([[0, 1]])
    out = grpo_token_loss(logp, zeros - 1.0, torch.tensor([1.0]), mask, 0.2, 0.2,
                          kl_coef=0.1, ref_logp=zeros)
    total = aggregate_loss(out.loss, mask, "token-mean", 1, 1)
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(logp.grad).all() and logp.grad[0, 0] == 0
    assert out.ratio[0, 0] == 1.0 and out.kl[0, 0] == 0.0
