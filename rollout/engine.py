"""The vLLM engine of a rollout worker: token-in/token-out generation and live weight updates.

Everything vLLM-specific, including the CPU build's quirks (DESIGN §4), lives here:
environment variables that must be set before the engine starts, the smallest prefix-cache
block the CPU build accepts, per-request seeds through our own sampling logits processor
(vLLM's ``SamplingParams(seed=...)`` kills the CPU worker: ``rollout.seeded_sampler``), and
resetting the prefix cache after new weights (cached KV was computed with the old ones).
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
SEEDED_SAMPLER = "rollout.seeded_sampler:SeededSampler"


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
            worker_extension_cls=WORKER_EXTENSION, disable_log_stats=True,
            logits_processors=[SEEDED_SAMPLER])
        if cfg.block_size is not None:
            kwargs["block_size"] = cfg.block_size
        if cfg.enable_lora:
            kwargs.update(enable_lora=True, max_lora_rank=cfg.max_lora_rank, max_loras=1)
        self.llm = LLM(**kwargs)
        self.start_s = time.perf_counter() - start
        self.tokenizer = self.llm.get_tokenizer()
        self.weight_version = 0
        self._lora = None          # the active LoRARequest, if any
        self._adapter_dir: tempfile.TemporaryDirectory | None = None

    # --- generation -----------------------------------------------------------------------

    def generate(self, prompts: Sequence[list[int]], max_new_tokens: Sequence[int],
                 sampling: Sampling, seeds: Sequence[int | None] | None = None) -> list[GenerationResult]:
        """``seeds[i]`` (when given and not None) makes request i's sample a function of its
        prompt and seed alone: vLLM's argmax of the one token our sampler left (``rollout.seeded_sampler``)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        from rollout.seeded_sampler import SEED_KEY, TEMPERATURE_KEY, TOP_P_KEY

        def params_for(cap: int, seed: int | None) -> SamplingParams:
            common = dict(max_tokens=cap, logprobs=0, detokenize=False, min_tokens=min(sampling.min_tokens, cap))
            if seed is None or sampling.temperature <= 0:
                return SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p, **common)
            return SamplingParams(temperature=0.0, extra_args={
                SEED_KEY: int(seed), TEMPERATURE_KEY: sampling.temperature, TOP_P_KEY: sampling.top_p}, **common)

        seeds = list(seeds) if seeds is not None else [None] * len(prompts)
        params = [params_for(cap, seed) for cap, seed in zip(max_new_tokens, seeds)]
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
        from vllm.lora.request import LoRARequest

        if not self.cfg.enable_lora:
            raise RuntimeError("weight_sync=adapter needs rollout.engine.enable_lora=true")
        start = time.perf_counter()
        new_dir = tempfile.TemporaryDirectory(prefix=f"simulrl-adapter-v{version}-")
        for name, data in files.items():
            (Path(new_dir.name) / name).write_bytes(data)
        # a new id per version: vLLM caches adapters by id
        request = LoRARequest(f"policy-v{version}", version + 1, new_dir.name)
        self.llm.llm_engine.add_lora(request)
        self._drop_adapter()
        self._lora, self._adapter_dir = request, new_dir
        self.llm.reset_prefix_cache()
        self.weight_version = version
        return {"seconds": time.perf_counter() - start, "tensors": float(len(files))}

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
