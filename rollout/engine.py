"""The vLLM engine of a rollout worker: token-in/token-out generation and live weight updates.

Everything vLLM-specific, including the CPU build's quirks (DESIGN §4), lives here:
environment variables that must be set before the engine starts, the smallest prefix-cache
block the CPU build accepts, per-request seeds through our own sampling logits processor
(vLLM's ``SamplingParams(seed=...)`` kills the CPU worker: ``rollout.seeded_sampler``), and
resetting the prefix cache after new weights (cached KV was computed with the old ones).
"""
from __future__ import annotations

import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from rollout.config import EngineConfig, weight_target
from rollout.types import GenerationResult, Sampling

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
    """One vLLM engine; ``generate`` implements :class:`rollout.types.GenerationBackend`."""

    def __init__(self, model: str, dtype: str, cfg: EngineConfig, seed: int = 0,
                 max_logprobs: int | None = None):
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
        if max_logprobs is not None:   # -1: the whole vocabulary (exact LSG distributions)
            kwargs["max_logprobs"] = max_logprobs
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
        self._seeds = random.Random(seed)   # seeds of sampled requests that bring none
        self._requests = 0
        self._pending: dict[str, tuple[str, int, bool]] = {}   # id -> (caller's key, prompt length, sampled)
        self._adapter_dir: tempfile.TemporaryDirectory | None = None

    # --- generation -----------------------------------------------------------------------

    def _params(self, cap: int, sampling: Sampling, seed: int | None, key: str):
        """Sampled requests run through the seeded Gumbel-max sampler (module docstring of
        ``rollout.seeded_sampler``): greedy in vLLM over perturbed logits, the real temperature,
        top-p and seed in ``extra_args``. A request without a seed gets one from the engine's
        own seeded stream. Greedy requests (temperature 0) go to vLLM as they are."""
        from vllm import SamplingParams

        from rollout.seeded_sampler import KEY_KEY, SEED_KEY, TEMPERATURE_KEY, TOP_P_KEY

        common = dict(max_tokens=cap, logprobs=0, detokenize=False, min_tokens=min(sampling.min_tokens, cap))
        if sampling.temperature <= 0:
            return SamplingParams(temperature=0.0, **common)
        if seed is None:
            seed = self._seeds.getrandbits(62)
        return SamplingParams(temperature=0.0, extra_args={
            SEED_KEY: int(seed), TEMPERATURE_KEY: sampling.temperature, TOP_P_KEY: sampling.top_p,
            KEY_KEY: key}, **common)

    def _key(self) -> str:
        self._requests += 1
        return f"simulrl-{self._requests}"

    def _results(self, items: Sequence[tuple[str, int, Any]], sampled: bool) -> list[GenerationResult]:
        """GenerationResults of finished outputs ``(key, prompt length, RequestOutput)``.

        A sampled request's log-probs are those of the distribution it was drawn from
        (temperature and top-p applied), recorded by the sampler inside the worker; vLLM's own
        log-probs of a greedy request are the model's raw ones (what temperature 1 scores)."""
        drawn = self.llm.collective_rpc("simulrl_take_logprobs", args=([k for k, _, _ in items],))[0] \
            if sampled and items else {}
        results = []
        for key, prompt_len, out in items:
            comp = out.outputs[0]
            ids = list(comp.token_ids)
            if sampled:
                per_pos = drawn.get(key, {})
                lps = [float(per_pos[j]) for j in range(len(ids))]
            else:   # logprobs=0 returns the chosen token's log-prob at every position
                lps = [step[tok].logprob for tok, step in zip(ids, comp.logprobs or [])]
            results.append(GenerationResult(ids, lps, prompt_tokens=prompt_len,
                                            cached_prompt_tokens=int(out.num_cached_tokens or 0)))
        return results

    def generate(self, prompts: Sequence[list[int]], max_new_tokens: Sequence[int],
                 sampling: Sampling, seeds: Sequence[int | None] | None = None) -> list[GenerationResult]:
        """``seeds[i]`` (when given and not None) makes request i's sample a function of its
        prompt and seed alone, never of the batch it shares (``rollout.seeded_sampler``)."""
        from vllm.inputs import TokensPrompt

        seeds = list(seeds) if seeds is not None else [None] * len(prompts)
        keys = [self._key() for _ in prompts]
        params = [self._params(cap, sampling, seed, key) for cap, seed, key in zip(max_new_tokens, seeds, keys)]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params,
                                 lora_request=self._lora, use_tqdm=False)
        return self._results([(k, len(p), o) for k, p, o in zip(keys, prompts, outs)],
                             sampled=sampling.temperature > 0)

    # --- continuous batching (rollout.stream_runner) ---------------------------------------

    def submit(self, key: str, prompt: list[int], max_new_tokens: int, sampling: Sampling,
               seed: int | None = None) -> None:
        """Queue one request; it joins the running batch at the engine's next step."""
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        internal = self._key()
        params = self._params(max_new_tokens, sampling, seed, internal)
        params.output_kind = RequestOutputKind.FINAL_ONLY
        self._pending[internal] = (key, len(prompt), sampling.temperature > 0)
        self.llm.llm_engine.add_request(internal, TokensPrompt(prompt_token_ids=list(prompt)), params,
                                        lora_request=self._lora)

    def poll(self) -> list[tuple[str, GenerationResult]]:
        """Run one engine step; return ``(key, result)`` of the requests that finished in it."""
        finished = [(out, self._pending.pop(out.request_id)) for out in self.llm.llm_engine.step() if out.finished]
        done = []
        for sampled in (True, False):
            part = [(out, key, n) for out, (key, n, was_sampled) in finished if was_sampled == sampled]
            items = [(out.request_id, n, out) for out, _, n in part]
            done.extend((key, res) for (_, key, _), res in zip(part, self._results(items, sampled)))
        return done

    def in_flight(self) -> int:
        return len(self._pending)

    def next_token_logprobs(self, prompts: Sequence[list[int]], top_k: int) -> list[dict[int, float]]:
        """The ``top_k`` most likely next tokens of each prompt with their log-probs (an
        approximation of the full distribution; vLLM caps ``top_k`` at its ``max_logprobs``).
        ``top_k=-1`` returns every token of the vocabulary: the exact distribution (the engine
        must be started with ``max_logprobs=-1``)."""
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
        receive = {"adapter": self._receive_adapter, "base": self._receive_base}[weight_target(mode)]
        infos = receive(version, buckets, adapter_config, timeout_s)
        return {"seconds": time.perf_counter() - start, "tensors": float(infos[0]["tensors"]),
                "checksums": [i["checksums"] for i in infos], "weight_version": version}

    def _receive_adapter(self, version: int, buckets: list[dict], adapter_config: str | None,
                         timeout_s: float) -> list[dict]:
        if not self.cfg.enable_lora:
            raise RuntimeError("weight_sync=adapter needs rollout.engine.enable_lora=true")
        new_dir = tempfile.TemporaryDirectory(prefix=f"simulrl-adapter-v{version}-")
        (Path(new_dir.name) / "adapter_config.json").write_text(adapter_config or "", encoding="utf-8")
        infos = self.llm.collective_rpc("simulrl_receive_weights", timeout=timeout_s, args=(buckets, new_dir.name))
        self._activate_adapter(new_dir, version)
        return infos

    def _receive_base(self, version: int, buckets: list[dict], adapter_config: str | None,
                      timeout_s: float) -> list[dict]:
        infos = self.llm.collective_rpc("simulrl_receive_weights", timeout=timeout_s, args=(buckets, None))
        self._drop_adapter()
        self.llm.reset_prefix_cache()
        self.weight_version = version
        return infos

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
