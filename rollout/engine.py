"""The vLLM engine of a rollout worker: token-in/token-out generation and live weight updates.

Everything vLLM-specific, including the CPU build's quirks (DESIGN §4), lives here:
environment variables that must be set before the engine starts, the smallest prefix-cache
block the CPU build accepts, no per-request seeds (they kill the CPU worker: the engine is
seeded instead), and resetting the prefix cache after new weights (cached KV was computed
with the old ones).
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from rollout.config import EngineConfig
from rollout.runner import GenerationResult, Sampling

REPO_ROOT = Path(__file__).resolve().parent.parent
WORKER_EXTENSION = "rollout.vllm_ext.WeightLoaderExtension"


def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def configure_cpu_env(cfg: EngineConfig) -> None:
    """Environment the CPU engine reads at start; explicit user settings win."""
    if cfg.cpu_threads == "all":
        cores = sorted(os.sched_getaffinity(0))
        bind = f"{cores[0]}-{cores[-1]}" if cores == list(range(cores[0], cores[-1] + 1)) \
            else ",".join(map(str, cores))
    else:
        bind = cfg.cpu_threads
    # The default reserves a core for the frontend: 1.75-2x slower on 2 cores.
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", bind)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cfg.cpu_kv_cache_gib))


def configure_common_env() -> None:
    os.environ.setdefault("VLLM_CACHE_ROOT", str(REPO_ROOT / ".cache" / "vllm"))
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "1")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class VLLMEngine:
    """One vLLM engine; ``generate`` implements :class:`rollout.runner.GenerationBackend`."""

    def __init__(self, model: str, dtype: str, cfg: EngineConfig, seed: int = 0):
        configure_common_env()
        self.gpu = on_gpu()
        if not self.gpu:
            configure_cpu_env(cfg)
        from vllm import LLM

        self.cfg = cfg
        self.model = model
        start = time.perf_counter()
        kwargs: dict[str, Any] = dict(
            model=model, dtype=dtype, max_model_len=cfg.max_model_len, seed=seed,
            enable_prefix_caching=cfg.enable_prefix_caching, enforce_eager=cfg.enforce_eager,
            tensor_parallel_size=cfg.tensor_parallel_size,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            worker_extension_cls=WORKER_EXTENSION, disable_log_stats=True)
        if cfg.block_size is not None:
            kwargs["block_size"] = cfg.block_size
        if cfg.enable_lora:
            kwargs.update(enable_lora=True, max_lora_rank=cfg.max_lora_rank, max_loras=1)
        if cfg.tensor_parallel_size > 1 and self.gpu:
            # TP workers as Ray actors in the engine's placement-group bundles (orchestration.placement)
            kwargs["distributed_executor_backend"] = "ray"
        self.llm = LLM(**kwargs)
        self.start_s = time.perf_counter() - start
        self.tokenizer = self.llm.get_tokenizer()
        self.weight_version = 0
        self._lora = None          # the active LoRARequest, if any
        self._adapter_dir: tempfile.TemporaryDirectory | None = None

    # --- generation -----------------------------------------------------------------------

    def generate(self, prompts: Sequence[list[int]], max_new_tokens: Sequence[int],
                 sampling: Sampling) -> list[GenerationResult]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = [SamplingParams(max_tokens=cap, temperature=sampling.temperature,
                                 top_p=sampling.top_p, logprobs=0, detokenize=False,
                                 min_tokens=min(sampling.min_tokens, cap))
                  for cap in max_new_tokens]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params,
                                 lora_request=self._lora, use_tqdm=False)
        results = []
        for prompt, out in zip(prompts, outs):
            comp = out.outputs[0]
            ids = list(comp.token_ids)
            # logprobs=0 returns the sampled token's log-prob at every position
            lps = [step[tok].logprob for tok, step in zip(ids, comp.logprobs or [])]
            results.append(GenerationResult(ids, lps, prompt_tokens=len(prompt),
                                            cached_prompt_tokens=int(out.num_cached_tokens or 0)))
        return results

    def next_token_logprobs(self, prompts: Sequence[list[int]], top_k: int) -> list[dict[int, float]]:
        """The ``top_k`` most likely next tokens of each prompt with their log-probs (an
        approximation of the full distribution; vLLM caps ``top_k`` at its ``max_logprobs``)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=top_k, detokenize=False)
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params,
                                 lora_request=self._lora, use_tqdm=False)
        return [{int(tok): float(lp.logprob) for tok, lp in out.outputs[0].logprobs[0].items()}
                for out in outs]

    # --- weights --------------------------------------------------------------------------

    def load_tensors(self, payload: bytes, version: int) -> dict[str, float]:
        """Load safetensors-serialised tensors (HF names) into the running engine.

        Used for a merged LoRA delta (only the changed tensors) and for full weights.
        """
        start = time.perf_counter()
        counts = self.llm.collective_rpc("simulrl_load_tensors", args=(payload,))
        self._drop_adapter()
        self.llm.reset_prefix_cache()
        self.weight_version = version
        return {"seconds": time.perf_counter() - start, "tensors": float(counts[0])}

    def load_adapter(self, files: dict[str, bytes], version: int) -> dict[str, float]:
        """Activate a new LoRA adapter version (peft files: adapter_config.json, weights)."""
        if not self.cfg.enable_lora:
            raise RuntimeError("weight_sync=adapter needs rollout.engine.enable_lora=true")
        start = time.perf_counter()
        new_dir = tempfile.TemporaryDirectory(prefix=f"simulrl-adapter-v{version}-")
        for name, data in files.items():
            (Path(new_dir.name) / name).write_bytes(data)
        self._activate_adapter(new_dir, version)
        return {"seconds": time.perf_counter() - start, "tensors": float(len(files))}

    def _activate_adapter(self, new_dir: tempfile.TemporaryDirectory, version: int) -> None:
        from vllm.lora.request import LoRARequest

        # a new id per version: vLLM caches adapters by id
        request = LoRARequest(f"policy-v{version}", version + 1, new_dir.name)
        self.llm.llm_engine.add_lora(request)
        self._drop_adapter()
        self._lora, self._adapter_dir = request, new_dir
        self.llm.reset_prefix_cache()
        self.weight_version = version

    # --- the direct path: a weight group with the learner (rollout.vllm_ext) ----------------

    def join_weight_group(self, host: str, port: int, rank_offset: int, world_size: int, backend: str,
                          timeout_s: float, generation: int) -> list[dict]:
        """Every worker of this engine joins the learner's weight group (ranks from ``rank_offset``)."""
        return self.llm.collective_rpc("simulrl_join_weight_group", timeout=timeout_s,
                                       args=(host, port, rank_offset, world_size, backend, timeout_s, generation))

    def receive_weights(self, version: int, mode: str, buckets: list[dict], adapter_config: str | None,
                        timeout_s: float) -> dict[str, Any]:
        """Receive one sync broadcast by the learner and make it the engine's weights.

        ``merged``/``full``: reloaded in place bucket by bucket; ``adapter``: written as a peft
        directory and activated as a new LoRA version. Returns each worker's bucket checksums."""
        start = time.perf_counter()
        if mode == "adapter":
            if not self.cfg.enable_lora:
                raise RuntimeError("weight_sync=adapter needs rollout.engine.enable_lora=true")
            new_dir = tempfile.TemporaryDirectory(prefix=f"simulrl-adapter-v{version}-")
            (Path(new_dir.name) / "adapter_config.json").write_text(adapter_config or "", encoding="utf-8")
            infos = self.llm.collective_rpc("simulrl_receive_weights", timeout=timeout_s,
                                            args=(buckets, new_dir.name))
            self._activate_adapter(new_dir, version)
        elif mode in ("merged", "full"):
            infos = self.llm.collective_rpc("simulrl_receive_weights", timeout=timeout_s, args=(buckets, None))
            self._drop_adapter()
            self.llm.reset_prefix_cache()
            self.weight_version = version
        else:
            raise ValueError(f"unknown weight update mode {mode!r}")
        return {"seconds": time.perf_counter() - start, "tensors": float(infos[0]["tensors"]),
                "checksums": [i["checksums"] for i in infos], "weight_version": version}

    def _drop_adapter(self) -> None:
        if self._lora is not None:
            self.llm.llm_engine.remove_lora(self._lora.lora_int_id)
            self._lora = None
        if self._adapter_dir is not None:
            self._adapter_dir.cleanup()
            self._adapter_dir = None

    def shutdown(self) -> None:
        self._drop_adapter()
        engine = getattr(self.llm, "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
