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
