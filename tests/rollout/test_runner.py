"""Lock-step episode runner on a scripted backend (the vLLM and HF backends have their own tests)."""
from __future__ import annotations

from rollout.config import EpisodeConfig
from rollout.runner import EpisodeFactory, GenerationResult, Sampling, Source, run_episodes


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
    cfg = EpisodeConfig(chunk_size=2, max_new_tokens_per_step=8, max_new_tokens_final=16)
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


def test_default_chunk_size_by_source_language(tiny_tokenizer):
    factory = EpisodeFactory(tiny_tokenizer, EpisodeConfig())
    assert factory.chunk_size("de") == 3 and factory.chunk_size("zh") == 4
    ep = factory.make(Source(0, "我们在说话人还在讲话", "zh", "en"))
    assert ep.chunks == ["我们在说", "话人还在", "讲话"]
