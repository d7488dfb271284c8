"""Exact LSG on vLLM: full-vocabulary next-token distributions (``max_logprobs=-1``) make the same
READ/WRITE decisions as transformers' exact distributions (slow).

Both run in float32 on the tiny model so the two implementations differ only by floating-point
reassociation. Its q/k projections are sharpened (as ``sharp_tiny_model`` does) so the source
prefix moves the next-token distribution: the KL divergences the decisions compare then lie in
0.005-0.06, far above the implementations' float differences (~1e-7). The thresholds sit at the
tiny model's scale, so the model decides both ways: KL and p_max each trigger some WRITEs."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from rollout.config import EngineConfig
from rollout.prefix_layout import PrefixPrompter, full_vocabulary_array, run_prefix_policy
from rollout.types import Source
from rollout.simul_policies import LSGPolicy

SOURCES = [
    Source(0, "Die Regierung hat am Montag neue Regeln für den Verkehr angekündigt.", "de", "en"),
    Source(1, "Der Zug nach Berlin hat heute zwanzig Minuten Verspätung.", "de", "en"),
    Source(2, "Wir übersetzen den Satz, während der Sprecher noch redet.", "de", "en"),
]
DELTA, ALPHA = 0.02, 0.0039


def sharpened_copy(src: Path, dst: Path, factor: float = 25.0) -> Path:
    """The tiny model with its q/k projections scaled (attention that depends on positions)."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    weights = load_file(dst / "model.safetensors")
    for name, w in weights.items():
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            weights[name] = (w * factor).contiguous()
    save_file(weights, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


@pytest.mark.slow
def test_vllm_full_vocabulary_lsg_decides_as_transformers(tiny_model_dir, tmp_path):
    import torch

    from rollout.engine import VLLMEngine
    from rollout.hf_backend import HFBackend

    model = sharpened_copy(tiny_model_dir, tmp_path / "sharp")
    policy = LSGPolicy(delta=DELTA, alpha=ALPHA, L=1, U=4)
    engine = VLLMEngine(str(model), "float32", EngineConfig(max_model_len=1024, cpu_kv_cache_gib=1),
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
        hf = HFBackend(str(model), dtype="float32")
        h_prompter = PrefixPrompter(hf.tokenizer)
        h_full = hf.next_token_logprobs([probe])[0].numpy()
        h_out, h_stats = run_prefix_policy(hf, h_prompter, policy, SOURCES, max_new_tokens_final=64)
    finally:
        torch.set_num_threads(threads)
    assert len(full) == len(h_full)
    assert np.abs(np.exp(full) - np.exp(h_full)).sum() < 1e-3      # total variation of one prompt
    assert v_stats["distribution_calls"] > 0
    by_model = {"read": 0, "write by kl": 0, "write by p_max": 0}
    for v, h in zip(v_out, h_out):
        trace = lambda out: [(d["read"], d["written"], d["action"], d["by"]) for d in out.decisions]  # noqa: E731
        assert trace(v) == trace(h), v.index
        assert v.delays == h.delays and v.prediction == h.prediction
        for dv, dh in zip(v.decisions, h.decisions):
            if dv["by"] == "model":
                assert dv["kl"] == pytest.approx(dh["kl"], rel=1e-3, abs=1e-6)
                assert dv["p_max"] == pytest.approx(dh["p_max"], abs=1e-6)
                if dv["action"] == "read":
                    by_model["read"] += 1
                else:
                    by_model["write by kl" if dh["kl"] > DELTA else "write by p_max"] += 1
    assert sum(by_model.values()) >= 10 and min(by_model.values()) > 0, by_model
