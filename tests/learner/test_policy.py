"""Policy building, batching, one-forward log-probs, the reference policy and weight export."""
from __future__ import annotations

import pytest
import torch

from learner.batch import TrainBatch, TrainTrajectory
from learner.config import LearnerConfig, LoraConfig
from learner.export import adapter_files, export_tensors, trainable_names
from learner.policy import PolicyLogprobs, collate, load_policy, sequence_logprobs


def _lora_policy(model_dir, targets=("q_proj", "v_proj")):
    cfg = LearnerConfig(dtype="float32", lora=LoraConfig(target_modules=list(targets)))
    policy, reference = load_policy(model_dir, cfg, seed=0)
    assert reference is None
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():   # B starts at 0 (adapter = identity): give it a real delta
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return policy.eval()


def _inputs(lengths, vocab=500, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (len(lengths), max(lengths)), generator=gen)
    attn = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        attn[i, :n] = 1
    return ids, attn


def _hf_logprobs(model, ids, attn):
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attn).logits.float()
    ref = torch.zeros(ids.shape)
    ref[:, 1:] = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
    return ref * attn


def test_sequence_logprobs_equal_a_plain_forward_with_padding(tiny_model_dir):
    policy = _lora_policy(tiny_model_dir)
    ids, attn = _inputs([12, 7, 3])
    with torch.no_grad():
        ours = sequence_logprobs(policy, ids, attn)
    assert torch.allclose(ours, _hf_logprobs(policy, ids, attn), atol=1e-5)
    assert (ours[:, 0] == 0).all() and (ours[attn == 0] == 0).all()
    # scoring only some positions gives the same values there and 0 elsewhere
    mask = torch.zeros_like(attn)
    mask[0, 5:9] = 1
    mask[1, 6] = 1
    with torch.no_grad():
        part = sequence_logprobs(policy, ids, attn, mask)
    assert torch.allclose(part[mask > 0], ours[mask > 0], atol=1e-6) and (part[mask == 0] == 0).all()


def test_reference_is_the_base_model_with_the_adapter_disabled(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    policy = _lora_policy(tiny_model_dir)
    module = PolicyLogprobs(policy)
    ids, attn = _inputs([10, 6], seed=3)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = module(ids, attn, reference=True)
        pol = module(ids, attn)
    assert torch.allclose(ref, _hf_logprobs(base, ids, attn), atol=1e-5)
    assert (ref - pol).abs().max() > 1e-3     # the adapter matters, and is back on afterwards


def test_full_finetuning_keeps_a_frozen_reference_only_with_kl(tiny_model_dir):
    policy, reference = load_policy(tiny_model_dir, LearnerConfig(dtype="float32", kl_beta=0.1,
                                                                   lora=LoraConfig(enabled=False)))
    assert reference is not None and not any(p.requires_grad for p in reference.parameters())
    assert all(p.requires_grad for p in policy.parameters())
    assert set(trainable_names(policy)) == set(dict(policy.named_parameters()))
    _, none = load_policy(tiny_model_dir, LearnerConfig(dtype="float32", kl_beta=0.0,
                                                         lora=LoraConfig(enabled=False)))
    assert none is None
    with pytest.raises(ValueError, match="LoRA"):
        PolicyLogprobs(policy)(*_inputs([4]), reference=True)


def test_collate_pads_right_and_validates():
    a = TrainTrajectory([5, 6, 7, 8], [0, 0, 1, 1], 0.5, [0.0, 0.0, -1.0, -2.0])
    b = TrainTrajectory([9, 10], [0, 1], -1.0, [0.0, -0.5])
    out = collate(TrainBatch([a, b]), pad_id=0)
    assert out["input_ids"].tolist() == [[5, 6, 7, 8], [9, 10, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert out["action_mask"].tolist() == [[0, 0, 1, 1], [0, 1, 0, 0]]
    assert out["rollout_logprobs"].tolist() == [[0, 0, -1, -2], [0, -0.5, 0, 0]]
    assert out["advantages"].tolist() == [0.5, -1.0]
    assert TrainBatch([a, b]).counts() == {"tokens": 3, "sequences": 2}
    with pytest.raises(ValueError, match="action_mask\\[0\\]"):
        TrainTrajectory([1, 2], [1, 0], 0.0, [0.0, 0.0])
    with pytest.raises(ValueError, match="same length"):
        TrainTrajectory([1, 2], [0, 1], 0.0, [0.0])


def test_split_keeps_every_trajectory_once_and_balances_tokens():
    trajs = [TrainTrajectory(list(range(n)), [0] + [1] * (n - 1), float(n), [0.0] * n)
             for n in (3, 9, 4, 12, 5, 7, 8)]
    shards = TrainBatch(trajs).split(2)
    assert sorted(t.advantage for s in shards for t in s.trajectories) == sorted(t.advantage for t in trajs)
    assert [len(s) for s in shards] in ([4, 3], [3, 4])
    tokens = [sum(len(t.token_ids) for t in s.trajectories) for s in shards]
    assert abs(tokens[0] - tokens[1]) <= 12
    with pytest.raises(ValueError):
        TrainBatch(trajs[:1]).split(2)


def test_merged_and_adapter_exports_reproduce_the_peft_model(tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    policy = _lora_policy(tiny_model_dir)
    ids, attn = _inputs([11, 5], seed=7)
    with torch.no_grad():
        want = policy(input_ids=ids, attention_mask=attn).logits
    names = trainable_names(policy)
    assert names == sorted(f"model.layers.{i}.self_attn.{m}.weight" for i in (0, 1) for m in ("q_proj", "v_proj"))
    # the driver asks for packed siblings too: k_proj comes back unchanged
    asked = names + ["model.layers.0.self_attn.k_proj.weight"]
    merged = export_tensors(policy, asked)
    fresh = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    state = fresh.state_dict()
    k_proj = "model.layers.0.self_attn.k_proj.weight"
    assert torch.equal(merged[k_proj], state[k_proj])
    assert not torch.allclose(merged[names[0]], state[names[0]])
    fresh.load_state_dict(merged, strict=False)
    with torch.no_grad():
        got = fresh(input_ids=ids, attention_mask=attn).logits
    assert torch.allclose(got, want, atol=1e-5)
    # full export: every checkpoint weight, LoRA merged
    full = export_tensors(policy)
    assert set(full) == set(state) and torch.equal(full[names[0]], merged[names[0]])
    with pytest.raises(KeyError):
        export_tensors(policy, ["model.layers.0.self_attn.q_proj.lora_A.weight"])
    # adapter export: peft files that load on the base model
    files = adapter_files(policy)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(files)
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    loaded = PeftModel.from_pretrained(base, tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids, attention_mask=attn).logits, want, atol=1e-5)
