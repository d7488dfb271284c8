"""Streaming (continuous-batching) episodes on a prompt-determined fake backend: the same
trajectories as the lock-step runner, requests refilled as episodes end, the in-flight bound
respected. The real-engine equality under greedy decoding is in test_engine.py."""
from __future__ import annotations

import hashlib

import pytest

from rollout.config import EpisodeConfig
from rollout.runner import EpisodeFactory, run_episodes
from rollout.types import GenerationResult, Sampling, Source
from rollout.stream_runner import run_episodes_streaming


class PromptHashBackend:
    """Output depends only on the prompt (like greedy decoding): a word, or a wait, chosen by a
    hash of the prompt tokens. Serves both runners and records what was in flight."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.words = [tokenizer(w, add_special_tokens=False)["input_ids"] for w in (" cat", " dog", " sun")]
        self.queue: list[tuple[str, list[int], int]] = []
        self.in_flight = 0
        self.peak = 0
        self.polls = 0

    def _answer(self, prompt, cap):
        h = int(hashlib.sha256(repr(prompt).encode()).hexdigest(), 16)
        ids = [] if h % 4 == 0 else self.words[h % 3]
        ids = (ids + [self.eot])[:cap]
        return GenerationResult(ids, [-0.5] * len(ids), prompt_tokens=len(prompt), cached_prompt_tokens=0)

    def generate(self, prompts, max_new_tokens, sampling):
        return [self._answer(p, c) for p, c in zip(prompts, max_new_tokens)]

    def submit(self, key, prompt, max_new_tokens, sampling):
        self.queue.append((key, list(prompt), max_new_tokens))
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)

    def poll(self):
        # finish the two oldest requests per step: requests of different episodes overtake each other
        self.polls += 1
        done, self.queue = self.queue[:2], self.queue[2:]
        self.in_flight -= len(done)
        return [(k, self._answer(p, c)) for k, p, c in done]


SOURCES = [Source(3, "a b c d e f g", "de", "en"), Source(5, "a b", "de", "en"),
           Source(8, "eins zwei drei vier", "de", "en"), Source(9, "x y z w v u t s", "de", "en")]


@pytest.mark.parametrize("max_in_flight", [1, 4, 64])
def test_streaming_equals_lock_step(tiny_tokenizer, max_in_flight):
    factory = EpisodeFactory(tiny_tokenizer, EpisodeConfig(chunk_size=2, max_new_tokens_per_step=8,
                                                           max_new_tokens_final=16))
    lock, _ = run_episodes(PromptHashBackend(tiny_tokenizer), factory, SOURCES, 2, Sampling())
    backend = PromptHashBackend(tiny_tokenizer)
    ended = []
    stream, stats = run_episodes_streaming(backend, factory, SOURCES, 2, Sampling(), max_in_flight,
                                           on_finish=lambda done, total: ended.append((done, total)))
    assert [t.token_ids for t in stream] == [t.token_ids for t in lock]
    assert [t.action_mask for t in stream] == [t.action_mask for t in lock]
    assert [t.delays for t in stream] == [t.delays for t in lock]
    assert [t.meta for t in stream] == [t.meta for t in lock]
    # a whole group (2) is admitted even when the bound is 1; otherwise the bound holds
    assert backend.peak == (2 if max_in_flight == 1 else min(max_in_flight, 2 * len(SOURCES)))
    assert ended[-1] == (8, 8) and len(ended) == 8
    assert stats.generated_tokens == sum(sum(t.action_mask) for t in stream)


def test_streaming_refills_as_groups_end(tiny_tokenizer):
    factory = EpisodeFactory(tiny_tokenizer, EpisodeConfig(chunk_size=2, max_new_tokens_per_step=8,
                                                           max_new_tokens_final=16))
    backend = PromptHashBackend(tiny_tokenizer)
    run_episodes_streaming(backend, factory, SOURCES, 2, Sampling(), max_in_flight=4)
    lock = PromptHashBackend(tiny_tokenizer)
    calls = []
    orig = lock.generate

    def counting(prompts, caps, sampling):
        calls.append(len(prompts))
        return orig(prompts, caps, sampling)

    lock.generate = counting
    run_episodes(lock, factory, SOURCES, 2, Sampling())
    # lock-step batches shrink as sources of 4, 1, 2 and 4 chunks end; the stream keeps 4 in flight
    assert calls == [8, 6, 4, 4]
    assert backend.peak == 4
    with pytest.raises(ValueError):
        run_episodes_streaming(backend, factory, SOURCES, 2, Sampling(), max_in_flight=0)
