"""``launch.py bench rollout``: streaming-rollout throughput, measured in one run.

On one vLLM engine with the prefix cache, the same sources and group size run
- ``vllm_lockstep``: one batched ``generate`` per streaming step (each step waits for its
  slowest request, the batch shrinks as sources end);
- ``vllm_streaming``: continuous batching, each trajectory's next turn submitted when its
  previous turn ends (``rollout.stream_runner``);
- ``vllm_floor``: the same engine generating exactly the same number of tokens per request
  without streaming (one request per trajectory, its first prompt, ``min_tokens = max_tokens``):
  the ceiling streaming is measured against.
Then the cache-free baselines on plain transformers, re-encoding the whole prompt every step,
on the first ``HF_SOURCES`` sources (their tokens/s do not depend on how many episodes run):
``hf`` one prompt per forward (as ``model.generate`` runs) and ``hf_batched`` with ``HF_BATCH``
prompts per forward. Writes ``OUT/bench_rollout.json``: generated and computed prompt tokens
per second of each, the ratios, the prefix-cache share and, per lock-step step, the prompt
tokens recomputed beside the tokens that step appended.
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

HF_BATCH = 8     # prompts per forward in the batched transformers baseline
HF_SOURCES = 4   # sources the transformers baselines run (one prompt per forward is slow)


def _sources(cfg) -> list:
    from rollout.types import Source

    ds = load_pairs(cfg.data.test, cfg.data, seed=cfg.run.seed, purpose="test",
                    limit=cfg.data.limit or 16, shuffle=False)
    return [Source(p.index, p.source, ds.src_lang, ds.tgt_lang, p.reference) for p in ds.pairs]


def _summary(trajs, stats) -> dict[str, Any]:
    out = stats.as_dict()
    out["tokens_per_s"] = stats.generated_tokens / stats.wall_s
    out["computed_prompt_tokens_per_s"] = stats.recomputed_prompt_tokens / stats.wall_s
    out["waits"] = sum(not p.strip() for t in trajs for p in t.pieces[:-1])
    return out


def _episodes(backend, factory, sources, cfg, label: str, runner: str):
    from tqdm import tqdm

    from rollout.types import Sampling
    from rollout.stream_runner import run_rollout

    sampling = Sampling(temperature=cfg.rollout.sampling.temperature, top_p=cfg.rollout.sampling.top_p)
    print(f"rollout {label}: {len(sources)} sources x {cfg.rollout.sampling.group_size}", flush=True)
    trajs, stats = run_rollout(backend, factory, sources, cfg.rollout.sampling.group_size, sampling,
                               runner, cfg.rollout.max_in_flight)
    return trajs, _summary(trajs, stats)


def _floor(engine, factory, sources, trajs, cfg) -> dict[str, Any]:
    """Each trajectory's token count generated in one request, without streaming."""
    from rollout.types import Sampling

    group = cfg.rollout.sampling.group_size
    prompts = [factory.make(sources[k // group]).prompt_ids for k in range(len(trajs))]
    counts = [max(1, sum(t.action_mask)) for t in trajs]
    t0 = time.perf_counter()
    results = []
    for prompt, n in zip(prompts, counts):   # one Sampling per count: exactly n tokens each
        engine.submit(f"floor-{len(results)}", prompt, n,
                      Sampling(cfg.rollout.sampling.temperature, cfg.rollout.sampling.top_p, min_tokens=n))
        results.append(n)
    done = []
    while engine.in_flight():
        done.extend(engine.poll())
    wall = time.perf_counter() - t0
    generated = sum(len(r.token_ids) for _, r in done)
    computed = sum(r.prompt_tokens - r.cached_prompt_tokens for _, r in done)
    return {"generated_tokens": generated, "requests": len(done), "wall_s": wall,
            "tokens_per_s": generated / wall, "computed_prompt_tokens_per_s": computed / wall}


def run_bench(cfg, out_dir: Path) -> dict[str, Any]:
    from rollout.engine import VLLMEngine
    from rollout.hf_backend import HFBackend
    from rollout.runner import EpisodeFactory

    model, dtype = cfg.model.path, cfg.model.dtype
    sources = _sources(cfg)
    t_all = time.perf_counter()
    runs: dict[str, dict[str, Any]] = {}
    starts: dict[str, float] = {}
    engine = VLLMEngine(model, dtype, cfg.rollout.engine, seed=cfg.run.seed)
    starts["vllm"] = engine.start_s
    factory = EpisodeFactory(engine.tokenizer, cfg.rollout.episode)
    _, runs["vllm_lockstep"] = _episodes(engine, factory, sources, cfg, "vllm lockstep", "lockstep")
    engine.llm.reset_prefix_cache()     # the second run must not reuse the first one's KV
    stream_trajs, runs["vllm_streaming"] = _episodes(engine, factory, sources, cfg, "vllm streaming", "streaming")
    engine.llm.reset_prefix_cache()
    print("vllm floor: the same token counts without streaming", flush=True)
    runs["vllm_floor"] = _floor(engine, factory, sources, stream_trajs, cfg)
    engine.shutdown()
    del engine
    gc.collect()
    hf_sources = sources[:HF_SOURCES]
    for label, batch in (("hf", 1), ("hf_batched", HF_BATCH)):
        t0 = time.perf_counter()
        hf = HFBackend(model, dtype=dtype, seed=cfg.run.seed, batch_size=batch)
        starts[label] = time.perf_counter() - t0
        _, runs[label] = _episodes(hf, EpisodeFactory(hf.tokenizer, cfg.rollout.episode), hf_sources, cfg,
                                   label, "lockstep")
        del hf
        gc.collect()
    tps = {k: v["tokens_per_s"] for k, v in runs.items()}
    lock, stream = runs["vllm_lockstep"], runs["vllm_streaming"]
    result = {
        "model": model, "dtype": dtype, "data_set": cfg.data.test, "sources": len(sources),
        "hf_sources": len(hf_sources), "group_size": cfg.rollout.sampling.group_size,
        "chunk_size": cfg.rollout.episode.chunk_size, "block_size": cfg.rollout.engine.block_size,
        "max_in_flight": cfg.rollout.max_in_flight,
        "tokens_per_s": tps,
        "computed_prompt_tokens_per_s": {k: v["computed_prompt_tokens_per_s"] for k, v in runs.items()},
        "streaming_vs_lockstep": tps["vllm_streaming"] / tps["vllm_lockstep"],
        "streaming_vs_floor": tps["vllm_streaming"] / tps["vllm_floor"],
        "lockstep_vs_floor": tps["vllm_lockstep"] / tps["vllm_floor"],
        "prefix_cache_hit_share": {"lockstep": lock["prefix_cache_hit_share"],
                                   "streaming": stream["prefix_cache_hit_share"]},
        "speedup_vs_hf": tps["vllm_streaming"] / tps["hf"],
        "speedup_vs_hf_batched": tps["vllm_streaming"] / tps["hf_batched"],
        "hf_batch_size": HF_BATCH,
        "engine_start_s": starts["vllm"], "start_s": starts,
        "per_step_lockstep": [
            {k: s[k] for k in ("step", "active", "prompt_tokens", "recomputed_prompt_tokens",
                               "appended_tokens", "generated_tokens", "seconds")}
            for s in lock["per_step"]],
        "runs": {k: {kk: vv for kk, vv in v.items() if kk != "per_step"} for k, v in runs.items()},
        "bench_s": time.perf_counter() - t_all,
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
    }
    write_json_atomic(out_dir / "bench_rollout.json", result)
    return result


def main(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    out_dir = Path(args.out)
    _sources(cfg)                      # validate the data before starting any engine
    result = run_bench(cfg, out_dir)
    t = result["tokens_per_s"]
    print(f"tokens/s  streaming {t['vllm_streaming']:.1f}  lockstep {t['vllm_lockstep']:.1f}  "
          f"floor {t['vllm_floor']:.1f}  hf {t['hf']:.1f}  hf batch {HF_BATCH} {t['hf_batched']:.1f}")
    print(f"streaming/lockstep {result['streaming_vs_lockstep']:.2f}x  streaming/floor "
          f"{result['streaming_vs_floor']:.2f}  cache share {result['prefix_cache_hit_share']['streaming']:.3f}  "
          f"vs hf {result['speedup_vs_hf']:.2f}x (batched {result['speedup_vs_hf_batched']:.2f}x)  "
          f"{result['bench_s']:.0f} s -> {out_dir / 'bench_rollout.json'}")
    return 0
