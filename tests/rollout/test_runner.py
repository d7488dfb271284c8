"""Lock-step episode runner on a scripted backend (the vLLM and HF backends have their own tests)."""
from __future__ import annotations

from rollout.config import EpisodeConfig
from rollout.runner import EpisodeFactory, run_episodes
from rollout.types import GenerationResult, Sampling, Source, derive_seed


class ScriptedBackend:
    """Writes a fixed word per step, waits on every third request, records each call."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.calls = []
        self.n = 0

    def generate(self, prompts, max_new_tokens, sampling):
        self.calls.append((len(prompts), list(max_new_tokens)))
        out = []
        for p, cap in zip(prompts, max_new_tokens):
            self.n += 1
            ids = [] if self.n % 3 == 0 else self.tok(" cat", add_special_tokens=False)["input_ids"]
            ids = (ids + [self.eot])[:cap]
            out.append(GenerationResult(ids, [-1.0] * len(ids), prompt_tokens=len(p),
                                        cached_prompt_tokens=len(p) // 2))
        return out


def test_lock_step_batches_and_grouping(tiny_tokenizer):
    cfg = EpisodeConfig(chunk_size=2, max_new_tokens_per_step=8, max_new_tokens_final=16,
                        final_tokens_per_source_unit=None)
    factory = EpisodeFactory(tiny_tokenizer, cfg)
    sources = [Source(10, "a b c d e", "de", "en"), Source(11, "a b", "de", "en")]
    backend = ScriptedBackend(tiny_tokenizer)
    trajs, stats = run_episodes(backend, factory, sources, group_size=3, sampling=Sampling())
    # one generate call per step over every still-active trajectory
    assert [n for n, _ in backend.calls] == [6, 3, 3]
    assert backend.calls[0][1] == [8, 8, 8, 16, 16, 16]     # 1-step episodes get the final cap
    assert [t.meta["source_index"] for t in trajs] == [10, 10, 10, 11, 11, 11]
    assert [t.meta["sample"] for t in trajs] == [0, 1, 2, 0, 1, 2]
    assert stats.steps == 3 and stats.trajectories == 6
    assert stats.generated_tokens == sum(sum(t.action_mask) for t in trajs)
    assert stats.cached_prompt_tokens == sum(s["prompt_tokens"] - s["recomputed_prompt_tokens"]
                                             for s in stats.per_step)
    for t in trajs:
        assert len(t.token_ids) == len(t.action_mask) == len(t.logprobs)
        assert all(1 <= d <= t.source_length for d in t.delays)
        assert len(t.delays) == len(t.hypothesis.split())


def test_final_cap_follows_the_source_length(tiny_tokenizer):
    cfg = EpisodeConfig(chunk_size=2, max_new_tokens_per_step=8, max_new_tokens_final=40,
                        final_tokens_per_source_unit=2.0)
    backend = ScriptedBackend(tiny_tokenizer)
    sources = [Source(0, "a b", "de", "en"), Source(1, " ".join("abcdefghijklmnopqrstuvwxyz"), "de", "en")]
    run_episodes(backend, EpisodeFactory(tiny_tokenizer, cfg), sources, group_size=1, sampling=Sampling())
    # 2 words: ceil(2 x 2) + 8 = 12 tokens; 26 words: 2 x 26 + 8 = 60, capped at 40
    assert backend.calls[0][1] == [12, 8]
    assert backend.calls[-1][1] == [40]


def test_fixed_waitk_schedule_in_the_episode_layout(tiny_tokenizer):
    """schedule_k: the end of turn is withheld (min_tokens = the cap) and each step keeps exactly
    what wait-k allows: read − k + 1 units in all, the rest at the last step."""
    class Wordy(ScriptedBackend):
        def generate(self, prompts, max_new_tokens, sampling):
            self.calls.append((len(prompts), list(max_new_tokens), sampling.min_tokens))
            ids = self.tok(" w" * 12, add_special_tokens=False)["input_ids"]
            return [GenerationResult((ids + [self.eot])[:cap], [-1.0] * min(cap, len(ids) + 1), len(p))
                    for p, cap in zip(prompts, max_new_tokens)]

    cfg = EpisodeConfig(layout="prefix", chunk_size=2, max_new_tokens_per_step=8, final_tokens_per_source_unit=None,
                        max_new_tokens_final=20)
    backend = Wordy(tiny_tokenizer)
    src = Source(0, "a b c d e f g", "de", "en")
    trajs, _ = run_episodes(backend, EpisodeFactory(tiny_tokenizer, cfg), [src], 1, Sampling(temperature=0.0),
                            schedule_k=3)
    # reads 2, 4, 6 then 7: wait-3 allows 0, 2, 4 units, then everything
    assert [c[2] for c in backend.calls] == [8, 8, 8, 0]
    assert trajs[0].delays[:4] == [4, 4, 6, 6] and set(trajs[0].delays[4:]) == {7}
    assert trajs[0].pieces[0] == "" and trajs[0].cut_steps == 3


def test_default_chunk_size_by_source_language(tiny_tokenizer):
    factory = EpisodeFactory(tiny_tokenizer, EpisodeConfig())
    assert factory.chunk_size("de") == 3 and factory.chunk_size("zh") == 4
    ep = factory.make(Source(0, "我们在说话人还在讲话", "zh", "en"))
    assert ep.chunks == ["我们在说", "话人还在", "讲话"]


class SeededBackend:
    """Writes one word chosen by each request's seed (a stand-in for seeded sampling)."""

    def __init__(self, tokenizer):
        self.tok, self.eot = tokenizer, tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.seeds = []

    def generate(self, prompts, max_new_tokens, sampling, seeds=None):
        self.seeds.append(list(seeds))
        words = [" cat", " dog", " sun", " sea"]
        out = []
        for p, cap, s in zip(prompts, max_new_tokens, seeds):
            ids = (self.tok(words[s % 4], add_special_tokens=False)["input_ids"] + [self.eot])[:cap]
            out.append(GenerationResult(ids, [-1.0] * len(ids), prompt_tokens=len(p)))
        return out


def test_a_source_drawn_twice_gives_two_groups_with_their_own_seeds(tiny_tokenizer):
    factory = EpisodeFactory(tiny_tokenizer, EpisodeConfig(chunk_size=2))
    twice = [Source(4, "a b c", "de", "en", "ref", group=7, seed=100), Source(5, "x", "de", "en", group=8, seed=200),
             Source(4, "a b c", "de", "en", "ref", group=9, seed=300)]
    backend = SeededBackend(tiny_tokenizer)
    trajs, _ = run_episodes(backend, factory, twice, group_size=2, sampling=Sampling())
    assert [(t.meta["group"], t.meta["source_index"], t.meta["sample"]) for t in trajs] == \
        [(7, 4, 0), (7, 4, 1), (8, 5, 0), (8, 5, 1), (9, 4, 0), (9, 4, 1)]
    # every request of (group seed, sample, streaming step) has its own seed, also in step 2
    assert backend.seeds[0] == [derive_seed(s, i, 0) for s in (100, 200, 300) for i in (0, 1)]
    assert backend.seeds[1] == [derive_seed(s, i, 1) for s in (100, 300) for i in (0, 1)]
    # a rerun of one group alone draws the same seeds it drew in the batch
    alone = SeededBackend(tiny_tokenizer)
    again, _ = run_episodes(alone, factory, twice[2:], group_size=2, sampling=Sampling())
    assert [t.token_ids for t in again] == [t.token_ids for t in trajs[4:]]
    # greedy sampling passes no seeds (backends without seeded sampling keep working)
    trajs, _ = run_episodes(ScriptedBackend(tiny_tokenizer), factory, twice, 1, Sampling(temperature=0.0))
    assert len(trajs) == 3
