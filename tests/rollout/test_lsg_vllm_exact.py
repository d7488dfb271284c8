"""Exact LSG on vLLM: full-vocabulary next-token distributions (``max_logprobs=-1``) make the same
READ/WRITE decisions as transformers' exact distributions, on the CPU demo model (slow).

Both run in float32 so the two implementations differ only by floating-point reassociation;
the paper's De->En thresholds (delta 9.0, alpha 0.6) and its tightest level [1, 4]."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rollout.config import EngineConfig
from rollout.prefix_layout import PrefixPrompter, full_vocabulary_array, run_prefix_policy
from rollout.types import Source
from rollout.simul_policies import LSGPolicy

DEMO = Path(__file__).resolve().parents[2] / "models" / "qwen2.5-coder-0.5b-instruct"
SOURCES = [
    Source(0, "Die Regierung hat am Montag neue Regeln für den Verkehr angekündigt.", "de", "en"),
    Source(1, "Der Zug nach Berlin hat heute zwanzig Minuten Verspätung.", "de", "en"),
    Source(2, "Wir übersetzen den Satz, während der Sprecher noch redet.", "de", "en"),
]


@pytest.mark.slow
def test_vllm_full_vocabulary_lsg_decides_as_transformers():
    import torch

    from rollout.engine import VLLMEngine
    from rollout.hf_backend import HFBackend

    assert (DEMO / "config.json").is_file(), f"{DEMO}: make setup builds the demo model"
    policy = LSGPolicy(delta=9.0, alpha=0.6, L=1, U=4)
    engine = VLLMEngine(str(DEMO), "float32", EngineConfig(max_model_len=1024, cpu_kv_cache_gib=1),
                        max_logprobs=-1)
    try:
        prompter = PrefixPrompter(engine.tokenizer)
        probe = prompter.prompt(SOURCES[0], 3, [])
        full = full_vocabulary_array(engine.next_token_logprobs([probe], -1)[0])
        assert np.exp(full).sum() == pytest.approx(1.0, abs=1e-4)   # the whole distribution
        v_out, v_stats = run_prefix_policy(engine, prompter, policy, SOURCES, top_k=-1,
                                           max_new_tokens_final=64)
    finally:
        engine.shutdown()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        hf = HFBackend(str(DEMO), dtype="float32")
        h_prompter = PrefixPrompter(hf.tokenizer)
        h_full = hf.next_token_logprobs([probe])[0].numpy()
        h_out, h_stats = run_prefix_policy(hf, h_prompter, policy, SOURCES, max_new_tokens_final=64)
    finally:
        torch.set_num_threads(threads)
    assert len(full) == len(h_full)
    assert np.abs(np.exp(full) - np.exp(h_full)).sum() < 1e-3      # total variation of one prompt
    assert v_stats["distribution_calls"] > 0
    model_decisions = 0
    for v, h in zip(v_out, h_out):
        trace = lambda out: [(d["read"], d["written"], d["action"], d["by"]) for d in out.decisions]  # noqa: E731
        assert trace(v) == trace(h), v.index
        assert v.delays == h.delays and v.prediction == h.prediction
        for dv, dh in zip(v.decisions, h.decisions):
            if dv["by"] == "model":
                model_decisions += 1
                assert dv["kl"] == pytest.approx(dh["kl"], rel=1e-3, abs=1e-3)
                assert dv["p_max"] == pytest.approx(dh["p_max"], abs=1e-3)
    assert model_decisions >= 10
