"""ExPosST prefix-layout decoding: wait-k on one KV cache per sentence equals the one-pass
SimulMask + ExPosST scoring that training uses (tiny model, fp32, attention sharpened so
positions matter), and a source unit's arrival recomputes nothing already cached."""
from __future__ import annotations

import pytest
import torch

from learner.simulmask import PrefixSegments, collate_prefix
from rollout.expost_decoding import ExPosSTBackend, ExPosSTPrompter, SegmentedPrompt
from rollout.prefix_layout import PrefixDecoder
from rollout.simul_policies import WaitKPolicy
from rollout.types import Sampling, Source

from tests.rollout.prefix_checks import token_reads

SOURCES = ["Der Zug nach Berlin hat heute zwanzig Minuten Verspätung .",
           "Die Katze schläft auf dem warmen Sofa im Wohnzimmer ."]
SLOTS = 64


@pytest.fixture(scope="module")
def model(sharp_tiny_model):
    return sharp_tiny_model


class Recording:
    """The backend, recording every call's read, translation so far and kept-or-not tokens."""

    def __init__(self, backend):
        self.backend, self.calls = backend, []

    def generate(self, prompts, caps, sampling):
        out = self.backend.generate(prompts, caps, sampling)
        self.calls += [(p.key, p.read, list(p.target), r.token_ids) for p, r in zip(prompts, out)]
        return out


@pytest.mark.parametrize("k", [1, 3])
def test_waitk_with_a_kv_cache_equals_one_pass_simulmask_scoring(model, tiny_tokenizer, k):
    prompter = ExPosSTPrompter(tiny_tokenizer)
    backend = ExPosSTBackend(model, tiny_tokenizer, SLOTS)
    rec = Recording(backend)
    sources = [Source(i, s, "de", "en") for i, s in enumerate(SOURCES)]
    dec = PrefixDecoder(rec, prompter, WaitKPolicy(k), sources, max_tokens_per_unit=4, max_new_tokens_final=12)
    while dec.step():
        pass
    outs = dec.outputs()
    fed_rows = dropped = 0
    for src, out in zip(sources, outs):
        calls = [c for c in rec.calls if c[0] == src.index]
        target = out.target_ids
        assert len(target) > 3
        # generated tokens fed to the cache (all but a call's last) that a later prompt, or the
        # final target, no longer holds: the decoder dropped them (a look-ahead, an unfinished
        # character, tokens generated past a unit)
        held: list[bool] = []      # per token of the translation as built: was it fed
        for _, _, so_far, toks in calls:
            dropped += sum(held[len(so_far):])
            held = held[:len(so_far)] + [n < len(toks) - 1 for n in range(len(toks))]
        dropped += sum(held[len(target):])
        # the source tokens read by the call that generated each kept token
        reads = token_reads(rec.calls, src.index, target, frozenset(backend.stop_ids))
        parts = prompter.parts(src)
        assert reads[0] < len(parts["source"]) and reads == sorted(reads)
        seg = PrefixSegments(len(parts["prompt"]), len(parts["source"]), len(parts["middle"]), len(target), SLOTS)
        ids = parts["prompt"] + parts["source"] + parts["middle"] + target
        inputs = collate_prefix([(ids, seg, reads)])
        mask = torch.zeros(inputs["attention_mask"].shape).masked_fill(~inputs["attention_mask"],
                                                                       torch.finfo(torch.float32).min).unsqueeze(1)
        with torch.no_grad():
            logits = model(input_ids=inputs["input_ids"], attention_mask=mask,
                           position_ids=inputs["position_ids"]).logits[0]
        rows = logits[len(ids) - len(target) - 1:len(ids) - 1]       # the rows predicting each target token
        assert rows.argmax(-1).tolist() == target                     # greedy decoding = one-pass scoring
        fed_rows += len(ids)
    # a new source unit appends its tokens; only the last written token's row is fed again, and
    # beyond the rows of the final sequence only the generated tokens the decoder dropped
    assert backend.fed_tokens <= fed_rows + len(rec.calls) + dropped


def test_a_source_longer_than_its_slots_and_sampling_are_refused(model, tiny_tokenizer):
    prompter = ExPosSTPrompter(tiny_tokenizer)
    backend = ExPosSTBackend(model, tiny_tokenizer, 4)
    prompt = prompter.prompt(Source(0, SOURCES[0], "de", "en"), 10, [])
    assert isinstance(prompt, SegmentedPrompt) and prompt.read == len(prompt.source)
    with pytest.raises(ValueError, match="source_slots=4"):
        backend.generate([prompt], [4], Sampling(temperature=0.0))
    with pytest.raises(ValueError, match="greedily"):
        backend.generate([prompt], [4], Sampling(temperature=1.0))
    with pytest.raises(TypeError):
        backend.generate([list(prompt)], [4], Sampling(temperature=0.0))
