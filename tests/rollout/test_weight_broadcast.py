"""The direct weight path into a running vLLM engine: a gloo group between a sender (the
learner's ``WeightSender``, here in a thread of the test process) and the engine's worker
process, tensors in many small buckets, fed to ``reload_weights`` one bucket at a time.

The engine must then produce exactly the greedy outputs of a fresh engine on the new weights;
an adapter sent the same way must act exactly like the same adapter loaded from files.
"""
from __future__ import annotations

import shutil
import threading

import pytest

from rollout.config import EngineConfig, EpisodeConfig
from rollout.runner import EpisodeFactory, run_episodes
from rollout.types import Sampling, Source

pytestmark = pytest.mark.slow

SOURCES = [Source(0, "Die Katze sitzt auf der Matte und schaut aus dem Fenster", "de", "en"),
           Source(1, "我们在说话人还在讲话的时候翻译", "zh", "en")]
ENGINE_CFG = EngineConfig(max_model_len=1024, cpu_kv_cache_gib=1, enable_lora=True, max_lora_rank=8)
EPISODE = EpisodeConfig(chunk_size=3, max_new_tokens_per_step=6, max_new_tokens_final=12)
BUCKET = 16 * 1024      # small on purpose: the tiny model's weights take many buckets


def greedy(engine, tokenizer):
    trajs, _ = run_episodes(engine, EpisodeFactory(tokenizer, EPISODE), SOURCES, 1, Sampling(temperature=0.0))
    return [t.token_ids for t in trajs]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from rollout.engine import VLLMEngine

    eng = VLLMEngine(str(tiny_model_dir), "float32", ENGINE_CFG, seed=0)
    yield eng
    eng.shutdown()


def broadcast(engine, tensors: dict, version: int, mode: str = "full", adapter_config: str | None = None):
    """Send ``tensors`` from a thread over a fresh 2-member group; returns (engine info, sent checksums)."""
    from learner.weight_broadcast import WeightSender, free_port, tensor_layout
    from rollout.weights import plan_buckets

    buckets = plan_buckets(tensor_layout([(n, t.dtype, t.shape) for n, t in tensors.items()]), BUCKET)
    port, sent, errors = free_port(), [], []

    def send():
        try:
            sender = WeightSender("127.0.0.1", port, 2, "gloo", 60, version)
            sent.extend(sender.send(b, tensors)[1] for b in buckets)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    thread = threading.Thread(target=send)
    thread.start()
    members = engine.join_weight_group("127.0.0.1", port, 1, 2, "gloo", 60, version)
    info = engine.receive_weights(version, mode, buckets, adapter_config, 60)
    thread.join(60)
    assert not errors and members[0]["rank"] == 1
    return info, sent, buckets


def test_broadcast_full_weights_equal_a_fresh_engine(engine, tiny_model_dir, tiny_tokenizer, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from rollout.engine import VLLMEngine

    base = greedy(engine, tiny_tokenizer)
    state = load_file(tiny_model_dir / "model.safetensors")
    gen = torch.Generator().manual_seed(11)
    new = {n: (t + 0.05 * torch.randn(t.shape, generator=gen)).contiguous() for n, t in state.items()}
    info, sent, buckets = broadcast(engine, new, version=1)
    assert len(buckets) > 5 and info["weight_version"] == 1 and info["tensors"] == len(new)
    assert info["checksums"] == [sent]                  # the one worker got every bucket as sent
    after = greedy(engine, tiny_tokenizer)
    assert after != base
    shutil.copytree(tiny_model_dir, tmp_path / "new")
    save_file(new, tmp_path / "new" / "model.safetensors", metadata={"format": "pt"})
    fresh = VLLMEngine(str(tmp_path / "new"), "float32", ENGINE_CFG.model_copy(update={"enable_lora": False}))
    try:
        assert after == greedy(fresh, tiny_tokenizer)
    finally:
        fresh.shutdown()
    broadcast(engine, state, version=2)                  # back to the base weights
    assert greedy(engine, tiny_tokenizer) == base


def test_broadcast_adapter_acts_like_the_same_adapter_from_files(engine, tiny_model_dir, tiny_tokenizer, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    peft_model.save_pretrained(tmp_path / "adapter")
    files = {f.name: f.read_bytes() for f in (tmp_path / "adapter").iterdir() if f.is_file()}
    engine.load_adapter(files, version=3)
    from_files = greedy(engine, tiny_tokenizer)
    tensors = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    info, _, _ = broadcast(engine, tensors, version=4, mode="adapter",
                           adapter_config=(tmp_path / "adapter" / "adapter_config.json").read_text())
    assert info["weight_version"] == 4 and engine._lora.lora_int_id == 5
    assert greedy(engine, tiny_tokenizer) == from_files
