"""Off-policy correction and dynamic sampling on hand-made tensors; the sampled distribution
(temperature, top-p, top-k) in the learner's log-probs against a brute-force reference."""
from __future__ import annotations

import math

import pytest
import torch

from learner.grpo import grpo_token_loss, informative_groups, rollout_importance_weights
from learner.policy import sequence_logprobs, truncate_logits
from learner.step import StepSettings, micro_batch_loss


def test_truncated_importance_weights_hand_computed():
    # ratios pi_old / pi_rollout: e^1 (capped at 2), e^-1, 1; the last token is not an action
    old = torch.tensor([[-1.0, -3.0, -2.0, 0.0]])
    rollout = torch.tensor([[-2.0, -2.0, -2.0, -9.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    iw = rollout_importance_weights(old, rollout, mask, "truncate", cap=2.0)
    assert torch.allclose(iw.weights, torch.tensor([[2.0, math.exp(-1.0), 1.0, 0.0]]))
    assert torch.allclose(iw.raw, torch.tensor([[math.e, math.exp(-1.0), 1.0, 1.0]]))
    assert iw.corrected.tolist() == [[True, False, False, False]]


def test_masked_importance_weights_drop_tokens_outside_the_band():
    old = torch.tensor([[-1.0, -3.0, -2.0, -2.1]])
    rollout = torch.tensor([[-2.0, -2.0, -2.0, -2.0]])
    mask = torch.ones(1, 4)
    iw = rollout_importance_weights(old, rollout, mask, "mask", cap=2.0)
    # e^1 > 2 and e^-1 < 1/2 are masked; 1 and e^-0.1 pass unchanged
    assert torch.allclose(iw.weights, torch.tensor([[0.0, 0.0, 1.0, math.exp(-0.1)]]))
    assert iw.corrected.tolist() == [[True, True, False, False]]
    none = rollout_importance_weights(old, rollout, mask, "none", cap=2.0)
    assert torch.equal(none.weights, torch.ones(1, 4)) and not none.corrected.any()
    with pytest.raises(ValueError, match="cap"):
        rollout_importance_weights(old, rollout, mask, "truncate", cap=0.5)
    with pytest.raises(ValueError, match="unknown"):
        rollout_importance_weights(old, rollout, mask, "clip", cap=2.0)


def test_importance_weights_scale_the_policy_gradient_but_not_the_kl():
    logp = torch.tensor([[-1.0, -1.0]], requires_grad=True)
    old = torch.tensor([[-1.0, -1.0]])
    ref = torch.tensor([[-1.5, -0.5]])
    mask = torch.ones(1, 2)
    weights = torch.tensor([[2.0, 0.0]])
    plain = grpo_token_loss(logp, old, torch.tensor([1.0]), mask, 0.2, 0.2, kl_coef=0.1, ref_logp=ref)
    weighted = grpo_token_loss(logp, old, torch.tensor([1.0]), mask, 0.2, 0.2, kl_coef=0.1, ref_logp=ref,
                               is_weights=weights)
    # ratio 1: pg term -A*1 = -1 per token; KL term identical in both
    kl = 0.1 * plain.kl
    assert torch.allclose(plain.loss, -1.0 + kl)
    assert torch.allclose(weighted.loss, torch.tensor([[-2.0, 0.0]]) + kl)


def test_micro_batch_loss_applies_the_configured_correction():
    logp = torch.tensor([[-1.0, -1.0, -1.0]], requires_grad=True)
    rollout = torch.tensor([[-2.0, -1.0, -1.0]])      # token 0 was 1/e as likely for the sampler
    mask = torch.ones(1, 3)
    adv = torch.tensor([1.0])
    base = StepSettings(kl_beta=0.0)
    loss_none, stats = micro_batch_loss(logp, logp.detach(), None, adv, mask, base, 3, 1, rollout)
    loss_tis, stats_tis = micro_batch_loss(logp, logp.detach(), None, adv, mask,
                                           StepSettings(kl_beta=0.0, is_correction="truncate", is_cap=2.0),
                                           3, 1, rollout)
    assert loss_none.item() == pytest.approx(-1.0)
    assert loss_tis.item() == pytest.approx(-(2.0 + 1.0 + 1.0) / 3)
    assert stats["is_raw_max"].item() == pytest.approx(math.e)
    assert stats_tis["is_corrected"].item() == 1.0 and stats["is_corrected"].item() == 0.0


def test_informative_groups():
    rewards = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.5, 0.0], [2.0, 2.0, 2.0000001]], dtype=torch.float64)
    assert informative_groups(rewards).tolist() == [False, True, True]
    with pytest.raises(ValueError):
        informative_groups(torch.ones(3))


def _brute_force_truncated(logits: torch.Tensor, top_p: float, top_k: int) -> torch.Tensor:
    """Per row, the kept set by definition: top-k by value, then the smallest set of most likely
    tokens whose mass reaches top_p."""
    out = torch.full_like(logits, float("-inf"))
    for r in range(logits.shape[0]):
        row = logits[r]
        order = sorted(range(row.numel()), key=lambda i: -float(row[i]))
        if top_k:
            order = order[:top_k]
        probs = torch.softmax(row[order], dim=0)
        kept, mass = [], 0.0
        for i, p in zip(order, probs.tolist()):
            kept.append(i)
            mass += p
            if mass >= top_p - 1e-7:
                break
        out[r, kept] = row[kept]
    return out


@pytest.mark.parametrize("top_p,top_k", [(1.0, 3), (0.7, 0), (0.9, 5), (0.3, 0)])
def test_truncate_logits_matches_its_definition(top_p, top_k):
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 12, generator=gen) * 2
    ours = truncate_logits(logits, torch.full((6,), top_p), torch.full((6,), top_k, dtype=torch.long))
    assert torch.equal(torch.isinf(ours), torch.isinf(_brute_force_truncated(logits, top_p, top_k)))
    assert torch.equal(ours[~torch.isinf(ours)], logits[~torch.isinf(ours)])


def test_sequence_logprobs_score_temperature_and_nucleus(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 400, (2, 9), generator=gen)
    attn = torch.ones_like(ids)
    temp, top_p = torch.tensor([0.7, 1.3]), torch.tensor([0.9, 1.0])
    with torch.no_grad():
        ours = sequence_logprobs(model, ids, attn, temperature=temp, top_p=top_p)
        logits = model(input_ids=ids, attention_mask=attn).logits.float()[:, :-1]
    for b in range(2):
        scaled = logits[b] / temp[b]
        dist = torch.log_softmax(truncate_logits(scaled, top_p[b].expand(scaled.shape[0])), -1)
        want = dist.gather(-1, ids[b, 1:, None])[:, 0]
        assert torch.allclose(ours[b, 1:], want, atol=1e-5)
    # temperature 1.3 flattens the distribution: not the raw log-probs
    raw = torch.log_softmax(logits[1], -1).gather(-1, ids[1, 1:, None])[:, 0]
    assert not torch.allclose(ours[1, 1:], raw, atol=1e-3)
