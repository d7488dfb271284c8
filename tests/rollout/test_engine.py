"""vLLM engine: streaming rollouts on the tiny model and the three weight-update modes.

Each update must leave the running engine producing exactly the greedy outputs of a fresh
engine started on the new weights.
"""
from __future__ import annotations

import shutil

import pytest

from rollout.config import EngineConfig, EpisodeConfig
from rollout.runner import EpisodeFactory, run_episodes
from rollout.types import Sampling, Source
from rollout.weights import expand_packed

pytestmark = pytest.mark.slow

SOURCES = [Source(0, "Die Katze sitzt auf der Matte und schaut aus dem Fenster", "de", "en"),
           Source(1, "Der Zug nach Berlin hat heute Verspätung", "de", "en"),
           Source(2, "我们在说话人还在讲话的时候翻译", "zh", "en")]
ENGINE_CFG = EngineConfig(max_model_len=1024, cpu_kv_cache_gib=1, enable_lora=True, max_lora_rank=8)
EPISODE_CFG = EpisodeConfig(chunk_size=3, max_new_tokens_per_step=6, max_new_tokens_final=12)


def greedy(engine, tokenizer):
    trajs, _ = run_episodes(engine, EpisodeFactory(tokenizer, EPISODE_CFG), SOURCES, 1,
                            Sampling(temperature=0.0))
    return [t.token_ids for t in trajs]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from rollout.engine import VLLMEngine

    eng = VLLMEngine(str(tiny_model_dir), "float32", ENGINE_CFG, seed=0)
    yield eng
    eng.shutdown()


def fresh_greedy(model_dir, tokenizer):
    from rollout.engine import VLLMEngine

    eng = VLLMEngine(str(model_dir), "float32", ENGINE_CFG.model_copy(update={"enable_lora": False}))
    try:
        return greedy(eng, tokenizer)
    finally:
        eng.shutdown()


def test_streaming_rollout_invariants(engine, tiny_tokenizer):
    factory = EpisodeFactory(tiny_tokenizer, EPISODE_CFG)
    trajs, stats = run_episodes(engine, factory, SOURCES, 3, Sampling(temperature=1.0))
    eot = factory.end_of_turn_id
    assert len(trajs) == 9
    for t in trajs:
        assert len(t.token_ids) == len(t.action_mask) == len(t.logprobs)
        sampled = [lp for lp, m in zip(t.logprobs, t.action_mask) if m]
        assert sampled and all(lp <= 0.0 for lp in sampled)
        assert t.token_ids[-1] == eot                   # every episode ends its last turn
        assert all(a <= b <= t.source_length for a, b in zip(t.delays, t.delays[1:] + [t.source_length]))
        assert t.num_steps == len(t.pieces)
    # later steps reuse the earlier steps' KV
    assert stats.cached_prompt_tokens > 0
    assert stats.per_step[-1]["recomputed_prompt_tokens"] < stats.per_step[-1]["prompt_tokens"]


def test_greedy_matches_transformers_reference(engine, tiny_model_dir, tiny_tokenizer):
    """Token-identical to plain transformers greedy decoding (fp32, tiny model)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    factory = EpisodeFactory(tiny_tokenizer, EPISODE_CFG)
    trajs, _ = run_episodes(engine, factory, SOURCES[:2], 1, Sampling(temperature=0.0))
    for traj in trajs:
        ids, mask = traj.token_ids, traj.action_mask
        # every action span must be what HF greedy would write from the same prefix
        k = 0
        while k < len(ids):
            if mask[k] == 1:
                end = k
                while end < len(ids) and mask[end] == 1:
                    end += 1
                out = model.generate(torch.tensor([ids[:k]]), max_new_tokens=end - k, do_sample=False,
                                     eos_token_id=factory.end_of_turn_id, pad_token_id=0)
                assert out[0, k:].tolist() == ids[k:end]
                k = end
            else:
                k += 1


def test_streaming_runner_equals_lock_step_on_greedy(engine, tiny_tokenizer):
    """Continuous batching changes which requests share a batch, never a trajectory."""
    from rollout.stream_runner import run_episodes_streaming

    factory = EpisodeFactory(tiny_tokenizer, EPISODE_CFG)
    lock, _ = run_episodes(engine, factory, SOURCES, 2, Sampling(temperature=0.0))
    stream, stats = run_episodes_streaming(engine, factory, SOURCES, 2, Sampling(temperature=0.0),
                                           max_in_flight=2)
    assert [t.token_ids for t in stream] == [t.token_ids for t in lock]
    assert [t.action_mask for t in stream] == [t.action_mask for t in lock]
    assert [t.delays for t in stream] == [t.delays for t in lock]
    for a, b in zip(stream, lock):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
    assert engine.in_flight() == 0 and stats.cached_prompt_tokens > 0


def test_streaming_runner_equals_lock_step_on_seeded_sampling(engine, tiny_tokenizer):
    """Per-request seeds make sampled trajectories a function of (source, seed, sample, turn):
    the streaming runner draws exactly what the lock-step runner draws, log-probs included."""
    from rollout.stream_runner import run_episodes_streaming

    factory = EpisodeFactory(tiny_tokenizer, EPISODE_CFG)
    seeded = [Source(s.index, s.text, s.src_lang, s.tgt_lang, group=g, seed=500 + g) for g, s in enumerate(SOURCES)]
    sampling = Sampling(temperature=0.9, top_p=0.95)
    lock, _ = run_episodes(engine, factory, seeded, 3, sampling)
    stream, _ = run_episodes_streaming(engine, factory, seeded, 3, sampling, max_in_flight=4)
    assert [t.token_ids for t in stream] == [t.token_ids for t in lock]
    assert len({tuple(t.token_ids) for t in lock}) > 3
    for a, b in zip(stream, lock):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


@pytest.mark.parametrize("temperature,top_p", [(0.7, 1.0), (1.4, 0.9)])
def test_learner_scores_the_distribution_vllm_sampled(engine, tiny_model_dir, tiny_tokenizer,
                                                      temperature, top_p):
    """vLLM's processed log-probs (temperature and top-p applied) equal the learner's."""
    import torch
    from transformers import AutoModelForCausalLM

    from learner.policy import sequence_logprobs

    factory = EpisodeFactory(tiny_tokenizer, EPISODE_CFG)
    trajs, _ = run_episodes(engine, factory, SOURCES, 2, Sampling(temperature=temperature, top_p=top_p))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    worst = 0.0
    for t in trajs:
        ids = torch.tensor([t.token_ids])
        mask = torch.tensor([t.action_mask])
        with torch.no_grad():
            ours = sequence_logprobs(model, ids, torch.ones_like(ids), mask,
                                     temperature=torch.tensor([temperature]), top_p=torch.tensor([top_p]))
            raw = sequence_logprobs(model, ids, torch.ones_like(ids), mask)
        on = mask[0] > 0
        sampled = torch.tensor(t.logprobs)[on]
        worst = max(worst, float((ours[0][on] - sampled).abs().max()))
        assert torch.isfinite(ours[0][on]).all()
        assert (raw[0][on] - sampled).abs().max() > 1e-2     # the raw distribution is a different one
    assert worst < 2e-3


def test_seeded_sampling_depends_on_the_seed_not_the_batch(engine, tiny_model_dir, tiny_tokenizer):
    """Seeded rollouts (our sampling logits processor) repeat exactly in another batch and
    order; their log-probs are those of the distribution sampled from (top-p renormalised)."""
    import torch
    from transformers import AutoModelForCausalLM

    factory = EpisodeFactory(tiny_tokenizer, EPISODE_CFG)
    seeded = [Source(s.index, s.text, s.src_lang, s.tgt_lang, group=g, seed=100 + g) for g, s in enumerate(SOURCES)]
    sampling = Sampling(temperature=1.0, top_p=0.95)
    a, _ = run_episodes(engine, factory, seeded, 3, sampling)
    b, _ = run_episodes(engine, factory, [seeded[2], seeded[0]], 3, sampling)
    ids = [t.token_ids for t in a]
    assert [t.token_ids for t in b] == ids[6:9] + ids[0:3]
    assert len({tuple(x) for x in ids[0:3]}) > 1                      # samples of a group differ
    other = [Source(s.index, s.text, s.src_lang, s.tgt_lang, group=s.group, seed=s.seed + 7) for s in seeded]
    c, _ = run_episodes(engine, factory, other, 3, sampling)
    assert [t.token_ids for t in c] != ids
    from learner.policy import sequence_logprobs

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    for t in a[:3]:
        ids = torch.tensor([t.token_ids])
        with torch.no_grad():
            want = sequence_logprobs(model, ids, torch.ones_like(ids), top_p=torch.tensor([0.95]))[0, 1:]
        mask = torch.tensor(t.action_mask[1:], dtype=torch.bool)
        got = torch.tensor(t.logprobs[1:])
        assert torch.allclose(got[mask], want[mask], atol=1e-4)


def perturbed_copy(src, dst, names_filter, seed):
    """A copy of the tiny model with some tensors changed; returns the changed tensors."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    state = load_file(dst / "model.safetensors")
    gen = torch.Generator().manual_seed(seed)
    changed = {}
    for name, t in state.items():
        if names_filter(name):
            changed[name] = (t + 0.05 * torch.randn(t.shape, generator=gen)).contiguous()
    state.update(changed)
    save_file(state, dst / "model.safetensors", metadata={"format": "pt"})
    return changed


def test_full_and_merged_updates_equal_fresh_engines(engine, tiny_model_dir, tiny_tokenizer, tmp_path):
    from safetensors.torch import load_file, save

    base = greedy(engine, tiny_tokenizer)
    full = perturbed_copy(tiny_model_dir, tmp_path / "full", lambda n: True, seed=1)
    info = engine.load_tensors(save(full), version=1)
    assert engine.weight_version == 1 and info["tensors"] == len(full)
    after_full = greedy(engine, tiny_tokenizer)
    assert after_full != base
    assert after_full == fresh_greedy(tmp_path / "full", tiny_tokenizer)

    # merged: only the attention projections a LoRA would touch are pushed
    merged = perturbed_copy(tiny_model_dir, tmp_path / "merged",
                            lambda n: n.endswith(("q_proj.weight", "v_proj.weight")), seed=2)
    engine.load_tensors(save(load_file(tiny_model_dir / "model.safetensors")), version=2)  # back to base
    assert greedy(engine, tiny_tokenizer) == base
    # vLLM packs q/k/v into one tensor: the unchanged k travels with them
    names = expand_packed(merged)
    assert set(names) == set(merged) | {n.replace("q_proj", "k_proj") for n in merged if "q_proj" in n}
    state = load_file(tmp_path / "merged" / "model.safetensors")
    engine.load_tensors(save({n: state[n] for n in names}), version=3)
    assert greedy(engine, tiny_tokenizer) == fresh_greedy(tmp_path / "merged", tiny_tokenizer)


def test_adapter_update_equals_fresh_engine_on_merged_weights(engine, tiny_model_dir, tiny_tokenizer, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save
    from transformers import AutoModelForCausalLM

    engine.load_tensors(save(load_file(tiny_model_dir / "model.safetensors")), version=4)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    peft_model.save_pretrained(tmp_path / "adapter")
    files = {f.name: f.read_bytes() for f in (tmp_path / "adapter").iterdir() if f.is_file()}
    engine.load_adapter(files, version=5)
    with_adapter = greedy(engine, tiny_tokenizer)
    merged_dir = tmp_path / "merged"
    shutil.copytree(tiny_model_dir, merged_dir)
    peft_model.merge_and_unload().save_pretrained(merged_dir, safe_serialization=True)
    assert with_adapter == fresh_greedy(merged_dir, tiny_tokenizer)
    # a later adapter version replaces the earlier one
    engine.load_adapter(files, version=6)
    assert set(engine.llm.llm_engine.list_loras()) == {7}
