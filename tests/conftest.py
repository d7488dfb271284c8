"""Shared test fixtures: one tiny model directory and tokenizer per test session."""
from __future__ import annotations

import pytest

from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Path of a tiny random Qwen2 model + ChatML tokenizer (built once per session)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def sharp_tiny_model(tiny_model_dir):
    """The tiny model in fp32 with eager attention, its q/k sharpened so positions and masks matter
    (a random init attends almost uniformly, position-blind). Read-only: tests must not train it."""
    import torch
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        for layer in m.model.layers:
            layer.self_attn.q_proj.weight.mul_(25.0)
            layer.self_attn.k_proj.weight.mul_(25.0)
    return m.eval()


@pytest.fixture(scope="session")
def ray_local():
    """One local 2-CPU Ray instance for the whole session (reused if one is running)."""
    import os

    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")   # local Ray without a token
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()
