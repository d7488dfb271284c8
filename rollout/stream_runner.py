"""Streaming episodes that never wait for each other (continuous batching, DESIGN §7).

The lock-step runner (``rollout.runner.run_episodes``) sends step t of every trajectory as one
batch: each step waits for its slowest request and the batch shrinks as sources end. Here each
trajectory's next turn is submitted the moment its previous turn finishes, and new groups are
admitted as old ones end, up to ``max_in_flight`` requests, so the engine's running batch stays
full. A group's B episodes are admitted together, so their shared prompt is still one prefix.

Token-in/token-out and the trajectories are exactly those of the lock-step runner: an episode's
prompt depends only on its own earlier turns, never on which other requests shared a batch.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import replace
from typing import Callable, Protocol, Sequence

from rollout.episode import Trajectory
from rollout.runner import EpisodeFactory, grouped_trajectories, run_episodes
from rollout.types import GenerationResult, RolloutStats, Sampling, Source, derive_seed


class StreamingBackend(Protocol):
    """A backend that takes requests one at a time and reports them as they finish."""

    def submit(self, key: str, prompt: list[int], max_new_tokens: int, sampling: Sampling,
               seed: int | None = None) -> None: ...

    def poll(self) -> list[tuple[str, GenerationResult]]: ...


def run_episodes_streaming(backend: StreamingBackend, factory: EpisodeFactory, sources: Sequence[Source],
                           group_size: int, sampling: Sampling, max_in_flight: int = 256,
                           on_finish: Callable[[int, int], None] | None = None,
                           ) -> tuple[list[Trajectory], RolloutStats]:
    """Run ``group_size`` episodes per source, each advancing on its own.

    Returns trajectories in the lock-step runner's order (all of source 0, then source 1, ...),
    and, for seeded sources, the same per-request seeds ``derive_seed(source.seed, sample, step)``.
    ``max_in_flight`` bounds the requests inside the engine; a whole group is admitted at once,
    so one group larger than the bound still runs (alone). ``on_finish(done, total)`` is called
    when an episode ends.
    """
    if max_in_flight < 1:
        raise ValueError("max_in_flight must be >= 1")
    episodes = [factory.make(src) for src in sources for _ in range(group_size)]
    stats = RolloutStats(trajectories=len(episodes))
    waiting = deque(range(len(sources)))        # groups not yet admitted
    in_flight: dict[str, int] = {}              # request key -> episode index
    turns = [0] * len(episodes)
    finished = 0
    peak = 0
    start = time.perf_counter()

    def submit(i: int) -> None:
        ep = episodes[i]
        turns[i] += 1
        key = f"ep{i}-t{turns[i]}"
        cap = ep.max_new_tokens()
        src = sources[i // group_size]
        step_sampling = replace(sampling, min_tokens=max(sampling.min_tokens, ep.min_new_tokens()))
        if sampling.temperature > 0 and src.seed is not None:
            backend.submit(key, ep.prompt_ids, cap, step_sampling, seed=derive_seed(src.seed, i % group_size, ep.step))
        else:
            backend.submit(key, ep.prompt_ids, cap, step_sampling)
        in_flight[key] = i

    while waiting or in_flight:
        while waiting and (not in_flight or len(in_flight) + group_size <= max_in_flight):
            g = waiting.popleft()
            for i in range(g * group_size, (g + 1) * group_size):
                submit(i)
        peak = max(peak, len(in_flight))
        t0 = time.perf_counter()
        done = backend.poll()
        stats.generate_s += time.perf_counter() - t0
        for key, res in done:
            i = in_flight.pop(key)
            ep = episodes[i]
            tokens, actions = len(ep.token_ids), sum(ep.action_mask)
            ep.add_action(res.token_ids, res.logprobs)
            stats.appended_tokens += (len(ep.token_ids) - tokens) - (sum(ep.action_mask) - actions)
            stats.generated_tokens += len(res.token_ids)
            stats.prompt_tokens += res.prompt_tokens
            stats.cached_prompt_tokens += res.cached_prompt_tokens
            if ep.done:
                finished += 1
                if on_finish is not None:
                    on_finish(finished, len(episodes))
            else:
                submit(i)
    stats.wall_s = time.perf_counter() - start
    stats.steps = max(turns, default=0)
    stats.per_step.append({"peak_in_flight": peak, "requests": sum(turns)})
    return grouped_trajectories(episodes, sources, group_size), stats


def run_rollout(backend, factory: EpisodeFactory, sources: Sequence[Source], group_size: int,
                sampling: Sampling, runner: str = "streaming", max_in_flight: int = 256,
                ) -> tuple[list[Trajectory], RolloutStats]:
    """Episodes by the configured runner (``rollout.runner``): same trajectories either way."""
    if runner == "streaming":
        return run_episodes_streaming(backend, factory, sources, group_size, sampling, max_in_flight)
    if runner == "lockstep":
        return run_episodes(backend, factory, sources, group_size, sampling)
    raise ValueError(f"unknown rollout runner {runner!r}; use streaming or lockstep")
