"""Methods added to vLLM's worker (``worker_extension_cls``): load new weights in place.

``collective_rpc`` turns tensors into lists on the way, so tensors travel as one
safetensors-serialised ``bytes`` object and are rebuilt inside the worker.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager

# A partial reload (the merged LoRA delta: a few tensors per layer) is expected to leave most
# layers untouched; vLLM warns about every such layer at each sync. Those two loggers are quiet
# for the duration of our reloads only.
_PARTIAL_RELOAD_LOGGERS = ("vllm.model_executor.model_loader.reload.layerwise",
                           "vllm.model_executor.model_loader.reload.inplace")


@contextmanager
def _quiet_partial_reload():
    loggers = [logging.getLogger(name) for name in _PARTIAL_RELOAD_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


class WeightLoaderExtension:
    """Mixed into vLLM's worker class; ``self`` is the worker."""

    def simulrl_load_tensors(self, payload: bytes) -> int:
        from safetensors.torch import load

        tensors = load(payload)
        runner = self.model_runner
        with _quiet_partial_reload():
            runner.reload_weights(weights_iterator=iter(tensors.items()))
        model = runner.get_model()
        lm_head = getattr(model, "lm_head", None)
        tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
        if tied and lm_head is not None and hasattr(lm_head, "quant_method"):
            # With tied embeddings the CPU lm_head keeps its own packed copy of the weights:
            # repack it from the freshly loaded embedding.
            lm_head.quant_method.process_weights_after_loading(lm_head)
        return len(tensors)

    def simulrl_take_logprobs(self, keys: list[str]) -> dict[str, dict[int, float]]:
        """Log-probs the seeded sampler recorded for these requests (``rollout.seeded_sampler``)."""
        from rollout.seeded_sampler import take_logprobs

        return take_logprobs(keys)
