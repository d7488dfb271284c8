"""Methods added to vLLM's worker (``worker_extension_cls``): load new weights in place.

The direct path (DESIGN §7): each worker joins a torch.distributed group with the learner's
rank 0 (a TCPStore client + ProcessGroupGloo, or NCCL on GPUs) and receives buckets, flat
uint8 buffers laid out by ``rollout.weights.plan_buckets``; they are unpacked into views and fed
lazily to ``reload_weights(weights_iterator=...)``, one bucket at a time. The older path
(``simulrl_load_tensors``: one safetensors ``bytes`` object through ``collective_rpc``, which
turns tensors into lists) stays as the measured baseline of ``launch.py bench sync``.
"""
from __future__ import annotations

import logging
import os
import socket
from contextlib import contextmanager
from datetime import timedelta

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


def _checksum(buf):
    """Same fingerprint as the sender's (``learner.weight_broadcast.buffer_checksum``)."""
    import torch

    step = max(1, buf.numel() // 65536)
    return int(buf[::step].to(torch.int64).sum().item()) * 1_000_003 + int(buf.numel())


class WeightLoaderExtension:
    """Mixed into vLLM's worker class; ``self`` is the worker."""

    def _reload(self, weights) -> None:
        runner = self.model_runner
        with _quiet_partial_reload():
            runner.reload_weights(weights_iterator=weights)
        model = runner.get_model()
        lm_head = getattr(model, "lm_head", None)
        tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
        if tied and lm_head is not None and hasattr(lm_head, "quant_method"):
            # With tied embeddings the CPU lm_head keeps its own packed copy of the weights:
            # repack it from the freshly loaded embedding.
            lm_head.quant_method.process_weights_after_loading(lm_head)

    def simulrl_load_tensors(self, payload: bytes) -> int:
        from safetensors.torch import load

        tensors = load(payload)
        self._reload(iter(tensors.items()))
        return len(tensors)

    def simulrl_take_logprobs(self, keys: list[str]) -> dict[str, dict[int, float]]:
        """Log-probs the seeded sampler recorded for these requests (``rollout.seeded_sampler``)."""
        from rollout.seeded_sampler import take_logprobs

        return take_logprobs(keys)

    # --- the direct path ------------------------------------------------------------------

    def simulrl_join_weight_group(self, host: str, port: int, rank_offset: int, world_size: int,
                                  backend: str, timeout_s: float, generation: int) -> dict:
        """Join the learner's weight group as rank ``rank_offset`` + this worker's rank."""
        import torch
        import torch.distributed as dist

        self.simulrl_leave_weight_group()
        rank = rank_offset + int(getattr(self, "rank", 0))
        timeout = timedelta(seconds=timeout_s)
        store = dist.TCPStore(host, port, world_size, is_master=False, timeout=timeout)
        prefixed = dist.PrefixStore(f"simulrl-weights-{generation}/", store)
        if backend == "nccl":
            opts = dist.ProcessGroupNCCL.Options()
            opts._timeout = timeout
            group = dist.ProcessGroupNCCL(prefixed, rank, world_size, opts)
            device = torch.device("cuda", torch.cuda.current_device())
        else:
            group = dist.ProcessGroupGloo(prefixed, rank, world_size, timeout)
            device = torch.device("cpu")
        self._simulrl_group = (group, store, device, timeout)
        return {"rank": rank, "pid": os.getpid(), "host": socket.gethostname()}

    def simulrl_leave_weight_group(self) -> None:
        self._simulrl_group = None

    def simulrl_receive_weights(self, buckets: list, adapter_dir: str | None = None) -> dict:
        """Receive every bucket; reload them into the model (or, with ``adapter_dir``, write the
        adapter tensors there for ``add_lora``). Returns the checksum of each bucket."""
        import torch

        group_state = getattr(self, "_simulrl_group", None)
        if group_state is None:
            raise RuntimeError("simulrl_receive_weights before simulrl_join_weight_group")
        group, _store, device, timeout = group_state
        sums: list[int] = []
        dtypes = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32,
                  "float64": torch.float64}

        def tensors():
            for bucket in buckets:
                buf = torch.empty(bucket["size"], dtype=torch.uint8, device=device)
                group.broadcast(buf, 0).wait(timeout)
                sums.append(_checksum(buf))
                for name, dtype, shape, offset, nbytes in bucket["tensors"]:
                    yield name, buf[offset:offset + nbytes].view(dtypes[dtype]).reshape(shape)

        if adapter_dir is None:
            self._reload(tensors())
            count = sum(len(b["tensors"]) for b in buckets)
        else:
            from safetensors.torch import save_file

            state = {name: t.to("cpu").clone() for name, t in tensors()}
            count = len(state)
            # every worker of the engine writes the same file: rename makes each write atomic
            tmp = os.path.join(adapter_dir, f".adapter_model.safetensors.{os.getpid()}")
            save_file(state, tmp, metadata={"format": "pt"})
            os.replace(tmp, os.path.join(adapter_dir, "adapter_model.safetensors"))
        return {"tensors": count, "checksums": sums}
