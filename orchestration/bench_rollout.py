"""``launch.py bench rollout``: streaming-rollout throughput, three ways in one run.

The same sources and group size run on vLLM with the prefix cache, on vLLM without it, and
on plain transformers re-encoding the whole prompt each step (the baseline: the reference
runner one prompt at a time, as ``model.generate`` runs; and, reported beside it, the same
runner packing ``HF_BATCH`` prompts per forward, the strongest cache-free baseline). Writes
``OUT/bench_rollout.json`` with tokens/s of each, the share of prompt tokens served from the
cache, and per step the prompt tokens recomputed beside the tokens that step appended.
"""
from __future__ import annotations

import argparse
import gc
import platform
import time
from pathlib import Path
from typing import Any

from orchestration.config_loader import load_config
from orchestration.data import load_pairs
from orchestration.runtime import write_json_atomic

HF_BATCH = 8   # prompts per forward in the batched transformers baseline


def _sources(cfg) -> list:
    from rollout.runner import Source

    ds = load_pairs(cfg.data.test, cfg.data, seed=cfg.run.seed, purpose="test",
                    limit=cfg.data.limit or 16, shuffle=False)
    return [Source(p.index, p.source, ds.src_lang, ds.tgt_lang, p.reference) for p in ds.pairs]


def _run(backend, factory, sources, cfg, label: str) -> dict[str, Any]:
    from tqdm import tqdm

    from rollout.runner import Sampling, run_episodes

    sampling = Sampling(temperature=cfg.rollout.sampling.temperature, top_p=cfg.rollout.sampling.top_p)
    bar = tqdm(desc=f"rollout {label}", unit="step")

    def on_step(step: int, active: int) -> None:
        bar.update(1)
        bar.set_postfix(active=active)

    trajs, stats = run_episodes(backend, factory, sources, cfg.rollout.sampling.group_size, sampling,
                                on_step=on_step)
    bar.close()
    out = stats.as_dict()
    out["tokens_per_s"] = stats.generated_tokens / stats.wall_s
    out["waits"] = sum(p == "" for t in trajs for p in t.pieces[:-1])
    return out


def run_bench(cfg, out_dir: Path) -> dict[str, Any]:
    from rollout.engine import VLLMEngine
    from rollout.hf_backend import HFBackend
    from rollout.runner import EpisodeFactory

    model, dtype = cfg.model.path, cfg.model.dtype
    sources = _sources(cfg)
    runs: dict[str, dict[str, Any]] = {}
    starts: dict[str, float] = {}
    for label, cache in (("vllm_cache", True), ("vllm_nocache", False)):
        engine_cfg = cfg.rollout.engine.model_copy(update={"enable_prefix_caching": cache})
        engine = VLLMEngine(model, dtype, engine_cfg, seed=cfg.run.seed)
        starts[label] = engine.start_s
        factory = EpisodeFactory(engine.tokenizer, cfg.rollout.episode)
        runs[label] = _run(engine, factory, sources, cfg, label)
        engine.shutdown()
        del engine
        gc.collect()
    for label, batch in (("hf", 1), ("hf_batched", HF_BATCH)):
        t0 = time.perf_counter()
        hf = HFBackend(model, dtype=dtype, seed=cfg.run.seed, batch_size=batch)
        starts[label] = time.perf_counter() - t0
        runs[label] = _run(hf, EpisodeFactory(hf.tokenizer, cfg.rollout.episode), sources, cfg,
                           label)
        del hf
        gc.collect()
    tps = {k: v["tokens_per_s"] for k, v in runs.items()}
    cache = runs["vllm_cache"]
    result = {
        "model": model, "dtype": dtype, "data_set": cfg.data.test, "sources": len(sources),
        "group_size": cfg.rollout.sampling.group_size,
        "chunk_size": cfg.rollout.episode.chunk_size, "block_size": cfg.rollout.engine.block_size,
        "tokens_per_s": tps,
        "prefix_cache_hit_share": cache["prefix_cache_hit_share"],
        "speedup_vs_hf": tps["vllm_cache"] / tps["hf"],
        "speedup_vs_hf_batched": tps["vllm_cache"] / tps["hf_batched"],
        "hf_batch_size": HF_BATCH,
        "speedup_cache_vs_nocache": tps["vllm_cache"] / tps["vllm_nocache"],
        "engine_start_s": starts["vllm_cache"], "start_s": starts,
        "per_step_vllm_cache": [
            {k: s[k] for k in ("step", "active", "prompt_tokens", "recomputed_prompt_tokens",
                               "appended_tokens", "generated_tokens", "seconds")}
            for s in cache["per_step"]],
        "runs": {k: {kk: vv for kk, vv in v.items() if kk != "per_step"} for k, v in runs.items()},
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
    }
    write_json_atomic(out_dir / "bench_rollout.json", result)
    return result


def main(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    out_dir = Path(args.out)
    _sources(cfg)                      # validate the data before starting any engine
    result = run_bench(cfg, out_dir)
    print(f"tokens/s  vllm+cache {result['tokens_per_s']['vllm_cache']:.1f}  "
          f"vllm-nocache {result['tokens_per_s']['vllm_nocache']:.1f}  hf {result['tokens_per_s']['hf']:.1f}  "
          f"hf batch {HF_BATCH} {result['tokens_per_s']['hf_batched']:.1f}")
    print(f"prefix cache hit share {result['prefix_cache_hit_share']:.3f}  "
          f"speedup vs hf {result['speedup_vs_hf']:.2f}x (vs batched {result['speedup_vs_hf_batched']:.2f}x)"
          f"  -> {out_dir / 'bench_rollout.json'}")
    return 0
