"""Run many streaming episodes in lock-step over any generation backend (DESIGN §2.1).

Step t of every still-active trajectory goes into ONE batched ``generate`` call, so the
engine sees B·N requests per step and, with vLLM's prefix cache, recomputes only each
trajectory's new user turn. The backend is anything with :meth:`GenerationBackend.generate`:
vLLM (``rollout.engine``) or plain transformers (``rollout.hf_backend``, the baseline).
"""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Callable, Sequence

from rollout.config import EpisodeConfig
from rollout.episode import ChatLayout, Episode, Trajectory, WriteRules, hf_codec, system_prompt_for
from rollout.types import GenerationBackend, RolloutStats, Sampling, Source, derive_seed
from rollout.units import DEFAULT_CHUNK_SIZE, unit_of


class EpisodeFactory:
    """Builds episodes of one model's chat template from the episode config."""

    def __init__(self, tokenizer: Any, cfg: EpisodeConfig, max_total_tokens: int | None = None):
        """``max_total_tokens``: the engine's context (``rollout.engine.max_model_len``)."""
        self.cfg, self.tokenizer, self.max_total_tokens = cfg, tokenizer, max_total_tokens
        self.layout = ChatLayout.from_tokenizer(tokenizer)
        self.encode, self.decode, self.end_of_turn_id = hf_codec(tokenizer)

    def chunk_size(self, src_lang: str) -> int:
        return self.cfg.chunk_size or DEFAULT_CHUNK_SIZE[unit_of(src_lang)]

    def rules(self, schedule_k: int | None = None) -> WriteRules:
        c = self.cfg
        return WriteRules(max_new_tokens_per_step=c.max_new_tokens_per_step,
                          max_new_tokens_final=c.max_new_tokens_final,
                          final_tokens_per_source_unit=c.final_tokens_per_source_unit,
                          units_per_read=c.units_per_read, schedule_k=schedule_k,
                          max_total_tokens=self.max_total_tokens)

    def make(self, source: Source, schedule_k: int | None = None) -> Episode:
        """The episode of ``source``; ``schedule_k`` writes by the fixed wait-k schedule instead of
        the policy's own choice (an evaluation baseline in the training layout)."""
        system = system_prompt_for(self.cfg.prompt_template(), source.src_lang, source.tgt_lang,
                                   self.cfg.end_marker)
        return Episode(self.layout, self.encode, self.decode, source=source.text,
                       system_prompt=system, end_marker=self.cfg.end_marker,
                       source_unit=unit_of(source.src_lang), target_unit=unit_of(source.tgt_lang),
                       chunk_size=self.chunk_size(source.src_lang),
                       end_of_turn_id=self.end_of_turn_id, mode=self.cfg.layout,
                       rules=self.rules(schedule_k))


def run_episodes(backend: GenerationBackend, factory: EpisodeFactory, sources: Sequence[Source],
                 group_size: int, sampling: Sampling,
                 on_step: Callable[[int, int], None] | None = None, schedule_k: int | None = None,
                 ) -> tuple[list[Trajectory], RolloutStats]:
    """Run ``group_size`` episodes per source in lock-step; trajectories come back grouped
    (all of source 0, then source 1, ...) with ``meta`` naming source index, group and sample.

    A seeded source's request for sample i at streaming step t gets the seed
    ``derive_seed(source.seed, i, t)``: what is drawn does not depend on the batch it runs in.
    ``schedule_k`` runs the fixed wait-k schedule in this layout (``EpisodeFactory.make``).
    """
    episodes = [factory.make(src, schedule_k) for src in sources for _ in range(group_size)]
    seeded = [src.seed for src in sources for _ in range(group_size)]
    use_seeds = sampling.temperature > 0 and any(s is not None for s in seeded)
    stats = RolloutStats(trajectories=len(episodes))
    start = time.perf_counter()
    step = 0
    while True:
        live = [k for k, ep in enumerate(episodes) if not ep.done]
        if not live:
            break
        step += 1
        t0 = time.perf_counter()
        # one call per min_tokens value (a fixed schedule withholds the end of turn before the last step)
        calls: dict[int, list[int]] = {}
        for k in live:
            calls.setdefault(episodes[k].min_new_tokens(), []).append(k)
        results: dict[int, Any] = {}
        for min_tokens, ks in calls.items():
            prompts = [episodes[k].prompt_ids for k in ks]
            caps = [episodes[k].max_new_tokens() for k in ks]
            call_sampling = replace(sampling, min_tokens=max(sampling.min_tokens, min_tokens))
            if use_seeds:
                seeds = [None if seeded[k] is None else derive_seed(seeded[k], k % group_size, episodes[k].step)
                         for k in ks]
                out = backend.generate(prompts, caps, call_sampling, seeds=seeds)
            else:
                out = backend.generate(prompts, caps, call_sampling)
            results.update(zip(ks, out))
        dt = time.perf_counter() - t0
        appended = 0
        for k in live:
            ep, res = episodes[k], results[k]
            tokens, actions = len(ep.token_ids), sum(ep.action_mask)
            ep.add_action(res.token_ids, res.logprobs)
            appended += (len(ep.token_ids) - tokens) - (sum(ep.action_mask) - actions)
        step_prompt = sum(results[k].prompt_tokens for k in live)
        step_cached = sum(results[k].cached_prompt_tokens for k in live)
        step_gen = sum(len(results[k].token_ids) for k in live)
        stats.steps = step
        stats.generated_tokens += step_gen
        stats.prompt_tokens += step_prompt
        stats.cached_prompt_tokens += step_cached
        stats.appended_tokens += appended
        stats.generate_s += dt
        stats.per_step.append({
            "step": step, "active": len(live), "prompt_tokens": step_prompt,
            "recomputed_prompt_tokens": step_prompt - step_cached,
            "appended_tokens": appended, "generated_tokens": step_gen, "seconds": dt})
        if on_step is not None:
            on_step(step, len(live))
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
