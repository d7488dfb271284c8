"""The prefix decoder's internal checks raise errors that say what broke (never bare asserts,
which ``python -O`` would drop): a prediction whose units disagree with its delays, and a model
decision asked of a policy that decides by rule alone."""
from __future__ import annotations

import pytest

from rollout.prefix_layout import PrefixDecoder, PrefixPrompter
from rollout.simul_policies import WaitKPolicy
from rollout.types import GenerationResult, Source


class ScriptBackend:
    """Always continues one fixed token script, then the end token."""

    def __init__(self, script: list[int], eos: int):
        self.script, self.eos = script, eos

    def generate(self, prompts, caps, sampling, seeds=None):
        out = []
        for p, cap in zip(prompts, caps):
            n = next(n for n in range(min(len(self.script), len(p)), -1, -1)
                     if n == 0 or list(p[-n:]) == self.script[:n])
            toks = (self.script[n:] + [self.eos])[:cap]
            out.append(GenerationResult(toks, [0.0] * len(toks), len(p), 0))
        return out


@pytest.fixture
def finished_decoder(tiny_tokenizer):
    eos = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    script = tiny_tokenizer("The cat sits.", add_special_tokens=False)["input_ids"]
    src = Source(7, "Die Katze sitzt", "de", "en")
    dec = PrefixDecoder(ScriptBackend(script, eos), PrefixPrompter(tiny_tokenizer), WaitKPolicy(2), [src],
                        max_tokens_per_unit=4)
    while dec.step():
        pass
    return dec


def test_a_consistent_decoding_gives_its_outputs(finished_decoder):
    (out,) = finished_decoder.outputs()
    assert out.prediction == "The cat sits." and len(out.delays) == 3


def test_units_that_disagree_with_the_delays_name_the_sentence(finished_decoder):
    finished_decoder.states[0].delays.append(3)     # one delay more than the prediction has units
    with pytest.raises(RuntimeError, match=r"sentence 7: the prediction 'The cat sits\.' has 3 word units "
                                           r"but 4 delays were recorded"):
        finished_decoder.outputs()


def test_only_lsg_is_asked_for_a_model_decision(finished_decoder):
    with pytest.raises(TypeError, match="policy waitk never asks the model: only LSG"):
        finished_decoder._ask(finished_decoder.states)
