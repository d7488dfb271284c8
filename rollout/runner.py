"""Run many streaming episodes in lock-step over any generation backend (DESIGN §2.1).

Step t of every still-active trajectory goes into ONE batched ``generate`` call, so the
engine sees B·N requests per step and, with vLLM's prefix cache, recomputes only each
trajectory's new user turn. The backend is anything with :meth:`GenerationBackend.generate`:
vLLM (``rollout.engine``) or plain transformers (``rollout.hf_backend``, the baseline).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

from rollout.config import EpisodeConfig
from rollout.episode import ChatLayout, Episode, Trajectory, hf_codec, system_prompt_for
from rollout.types import GenerationBackend, RolloutStats, Sampling, Source, derive_seed
from rollout.units import DEFAULT_CHUNK_SIZE, unit_of


class EpisodeFactory:
    """Builds episodes of one model's chat template from the episode config."""

    def __init__(self, tokenizer: Any, cfg: EpisodeConfig):
        self.cfg, self.tokenizer = cfg, tokenizer
        self.layout = ChatLayout.from_tokenizer(tokenizer)
        self.encode, self.decode, self.end_of_turn_id = hf_codec(tokenizer)

    def chunk_size(self, src_lang: str) -> int:
        return self.cfg.chunk_size or DEFAULT_CHUNK_SIZE[unit_of(src_lang)]

    def make(self, source: Source) -> Episode:
        system = system_prompt_for(self.cfg.system_prompt, source.src_lang, source.tgt_lang,
                                   self.cfg.end_marker)
        return Episode(self.layout, self.encode, self.decode, source=source.text,
                       system_prompt=system, end_marker=self.cfg.end_marker,
                       source_unit=unit_of(source.src_lang), target_unit=unit_of(source.tgt_lang),
                       chunk_size=self.chunk_size(source.src_lang),
                       end_of_turn_id=self.end_of_turn_id)


def run_episodes(backend: GenerationBackend, factory: EpisodeFactory, sources: Sequence[Source],
                 group_size: int, sampling: Sampling,
                 on_step: Callable[[int, int], None] | None = None
                 ) -> tuple[list[Trajectory], RolloutStats]:
    """Run ``group_size`` episodes per source in lock-step; trajectories come back grouped
    (all of source 0, then source 1, ...) with ``meta`` naming source index, group and sample.

    A seeded source's request for sample i at streaming step t gets the seed
    ``derive_seed(source.seed, i, t)``: what is drawn does not depend on the batch it runs in.
    """
    cfg = factory.cfg
    episodes = [factory.make(src) for src in sources for _ in range(group_size)]
    seeded = [src.seed for src in sources for _ in range(group_size)]
    use_seeds = sampling.temperature > 0 and any(s is not None for s in seeded)
    stats = RolloutStats(trajectories=len(episodes))
    start = time.perf_counter()
    step = 0
    while True:
        live = [k for k, ep in enumerate(episodes) if not ep.done]
        if not live:
            break
        active = [episodes[k] for k in live]
        step += 1
        prompts = [ep.prompt_ids for ep in active]
        caps = [cfg.max_new_tokens_final if ep.is_last_step else cfg.max_new_tokens_per_step
                for ep in active]
        t0 = time.perf_counter()
        if use_seeds:
            seeds = [None if seeded[k] is None else derive_seed(seeded[k], k % group_size, episodes[k].step)
                     for k in live]
            results = backend.generate(prompts, caps, sampling, seeds=seeds)
        else:
            results = backend.generate(prompts, caps, sampling)
        dt = time.perf_counter() - t0
        appended = 0
        for ep, res in zip(active, results):
            before = len(ep.token_ids) + len(res.token_ids)
            ep.add_action(res.token_ids, res.logprobs)
            appended += len(ep.token_ids) - before
        step_prompt = sum(r.prompt_tokens for r in results)
        step_cached = sum(r.cached_prompt_tokens for r in results)
        step_gen = sum(len(r.token_ids) for r in results)
        stats.steps = step
        stats.generated_tokens += step_gen
        stats.prompt_tokens += step_prompt
        stats.cached_prompt_tokens += step_cached
        stats.appended_tokens += appended
        stats.generate_s += dt
        stats.per_step.append({
            "step": step, "active": len(active), "prompt_tokens": step_prompt,
            "recomputed_prompt_tokens": step_prompt - step_cached,
            "appended_tokens": appended, "generated_tokens": step_gen, "seconds": dt})
        if on_step is not None:
            on_step(step, len(active))
    stats.wall_s = time.perf_counter() - start
    return grouped_trajectories(episodes, sources, group_size), stats


def grouped_trajectories(episodes: Sequence[Episode], sources: Sequence[Source], group_size: int) -> list[Trajectory]:
    """Finished episodes (``group_size`` per source, in source order) as trajectories whose ``meta``
    names source index, group and sample: the order and format every runner returns."""
    trajectories = []
    for k, ep in enumerate(episodes):
        src = sources[k // group_size]
        group = src.group if src.group is not None else k // group_size
        trajectories.append(ep.trajectory(source_index=src.index, group=group, sample=k % group_size,
                                          chunk_size=ep.chunk_size))
    return trajectories
