"""The prefix-layout baselines are exact: every target unit wait-k, LSG or offline writes was
generated from exactly the source prefix its delay records (DESIGN §2.4).

A fake backend whose tokens depend on the source units each prompt holds drives the decoder
through the cases where that can go wrong: the look-ahead token that closes a word, a closed
word the next text glues onto, tokens holding several characters, a character split over
several tokens and generation calls, an over-long word cut by the safety valve. The same check
runs on the tiny real model with the transformers backend."""
from __future__ import annotations

import math

import pytest
import torch

from rollout.hf_backend import HFBackend
from rollout.prefix_layout import MAX_EMPTY_WRITES, PrefixPrompter, run_prefix_policy
from rollout.simul_policies import IncrementalText, LSGPolicy, OfflinePolicy, WaitKPolicy, waitk_delays
from rollout.types import GenerationResult, Source

from tests.rollout.prefix_checks import (
    ReadRecorder, assert_exact, assert_lsg_rule, assert_waitk_rule, shared_with_previous)

DE = [Source(0, "Die Katze sitzt auf der Matte und schaut aus dem Fenster.", "de", "en"),
      Source(1, "Wir übersetzen den Satz.", "de", "en")]
EN = [Source(0, "The government announced new traffic rules on Monday.", "en", "zh"),
      Source(1, "We translate the sentence while the speaker is still talking.", "en", "zh")]

# Token streams by the parity of the source units read; the token at target position p is
# stream[p % len(stream)], so what the model writes at a position depends on the source it saw.
WORDS = [[" cat", "er", " mat", ",", " the", "at", " on", " Berlin"],
         [" to", "en", ",", " is", " and", "in", " of", " out"]]
LONG_WORDS = [[" cat"] + ["er"] * 11, [" to"] + ["en"] * 11]     # 12 tokens a word
# "星" is two byte-level tokens here, at the same positions in both streams
CHARS = [["们在", "星", "的", " cat", "说话", "。"], ["说话", "星", "在", " mat", "的", "在"]]
FINAL_LENGTH = 40     # target tokens once the source is complete, then the end of turn


class ReadCountBackend(ReadRecorder):
    """Greedy generation whose tokens depend on the number j of source units in the prompt
    (the stream of j's parity), recording every call as :class:`ReadRecorder` does. Its
    next-token distributions are confident for even j and uniform for odd j."""

    def __init__(self, tokenizer, prompter, sources, streams):
        super().__init__(None, prompter, sources)
        enc = lambda t: tokenizer(t, add_special_tokens=False)["input_ids"]  # noqa: E731
        self.streams = [[tok for piece in s for tok in enc(piece)] for s in streams]
        assert len({len(s) for s in self.streams}) == 1
        self.eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.vocab = len(tokenizer)

    def generate(self, prompts, caps, sampling, seeds=None):
        out = []
        for p, cap in zip(prompts, caps):
            index, j, so_far = self.locate(p)
            stream = self.streams[j % 2]
            toks: list[int] = []
            while len(toks) < cap:
                at = len(so_far) + len(toks)
                if j == self.lengths[index] and at >= FINAL_LENGTH:
                    toks.append(self.eos)
                    break
                toks.append(stream[at % len(stream)])
            self.calls.append((index, j, so_far, toks))
            out.append(GenerationResult(toks, [0.0] * len(toks), len(p), 0))
        return out

    def next_token_logprobs(self, prompts):
        dists = []
        for p in prompts:
            _, j, _ = self.locate(p)
            probs = torch.full((self.vocab,), 0.1 / (self.vocab - 1), dtype=torch.float64)
            probs[3] = 0.9
            dists.append(torch.log(probs if j % 2 == 0 else torch.full((self.vocab,), 1.0 / self.vocab,
                                                                       dtype=torch.float64)))
        return dists


POLICIES = [("waitk-1", WaitKPolicy(1)), ("waitk-3", WaitKPolicy(3)),
            ("lsg", LSGPolicy(delta=math.inf, alpha=0.5, L=1, U=2)), ("offline", OfflinePolicy())]


def _check_rule(name, policy, out, units):
    if isinstance(policy, WaitKPolicy):
        assert_waitk_rule(out, policy.k, units)
    elif isinstance(policy, LSGPolicy):
        assert_lsg_rule(out, policy.L, policy.U, units)
    else:
        assert set(out.delays) == {out.source_length}


@pytest.mark.parametrize("name,policy", POLICIES)
def test_every_word_is_generated_with_the_source_its_delay_records(tiny_tokenizer, name, policy):
    prompter = PrefixPrompter(tiny_tokenizer)
    backend = ReadCountBackend(tiny_tokenizer, prompter, DE, WORDS)
    outs, stats = run_prefix_policy(backend, prompter, policy, DE)
    assert stats["forced_reads"] == 0 and stats["cut_words"] == 0
    for out in outs:
        units = assert_exact(out, backend, prompter, "word")
        _check_rule(name, policy, out, units)
    if name == "offline":
        return
    # the look-ahead closing each word written before the source was complete was discarded
    # (and its position generated again with the next word's source); the final write kept all
    assert stats["discarded_lookahead"] == sum(d < o.source_length for o in outs for d in o.delays) > 0
    if isinstance(policy, WaitKPolicy):
        # "," glued onto a closed word once the model saw more source: a unit of its own
        assert stats["split_after_close"] > 0 and any("," in o.prediction.split() for o in outs)
        # no token holds two words: the delays are the schedule itself
        assert all(o.delays == waitk_delays(policy.k, o.source_length, len(o.delays)) for o in outs)


@pytest.mark.parametrize("name,policy", POLICIES[:3])
def test_an_overlong_word_is_cut_with_the_source_all_its_tokens_saw(tiny_tokenizer, name, policy):
    prompter = PrefixPrompter(tiny_tokenizer)
    backend = ReadCountBackend(tiny_tokenizer, prompter, DE, LONG_WORDS)
    outs, stats = run_prefix_policy(backend, prompter, policy, DE, max_tokens_per_unit=2)
    assert stats["cut_words"] > 0 and stats["forced_reads"] == 0
    for out in outs:
        units = assert_exact(out, backend, prompter, "word")
        _check_rule(name, policy, out, units)
        cuts = [d for d in out.decisions if d["by"] == "cut-word"]
        assert cuts
        for d in cuts:
            # the MAX_EMPTY_WRITES calls of the cut word all read what it is written with
            word_calls = [c for c in backend.calls if c[0] == out.index and len(c[2]) < d["target"]][-MAX_EMPTY_WRITES:]
            assert {c[1] for c in word_calls} == {d["read"]}
            assert out.delays[d["written"]] == d["read"]


@pytest.mark.parametrize("cap", [1, 8])
@pytest.mark.parametrize("name,policy", POLICIES)
def test_every_character_is_generated_with_the_source_its_delay_records(tiny_tokenizer, name, policy, cap):
    prompter = PrefixPrompter(tiny_tokenizer)
    backend = ReadCountBackend(tiny_tokenizer, prompter, EN, CHARS)
    assert len(tiny_tokenizer("星", add_special_tokens=False)["input_ids"]) == 2
    outs, stats = run_prefix_policy(backend, prompter, policy, EN, max_tokens_per_unit=cap)
    assert stats["forced_reads"] == 0 and stats["discarded_lookahead"] == 0
    for out in outs:
        units = assert_exact(out, backend, prompter, "char")
        _check_rule(name, policy, out, units)
        # "们在", "说话" and " cat" hold several units: written whole, with one delay
        assert shared_with_previous(units)


# A byte vocabulary: "星" is b"\xe6\x98\x9f", split over tokens in two ways.
BYTES = {1: b" Katze", 2: b" cat", 3: b",", 4: b" the", 5: b" \xe6", 6: b"\x98\x9f", 7: b"\xe6\x98", 8: b"\x9f"}


def _bytes_decode(ids):
    return b"".join(BYTES[i] for i in ids).decode("utf-8", errors="replace")


def test_closing_a_word_drops_the_lookahead_and_splits_what_glues_onto_it():
    text = IncrementalText(_bytes_decode, "word")
    assert text.offer(1) and text.partial and text.complete == 0
    assert not text.offer(2)                         # the next word's first piece: dropped
    assert text.ids == [1] and text.complete == 1 and not text.partial
    assert text.offer(3)                             # glued onto the closed word: a new unit
    assert text.splits == 1 and text.prediction_text() == " Katze ,"
    assert not text.offer(4) and text.complete == 2
    text.append(4)                                   # append never drops (the final write)
    assert text.splits == 1 and text.prediction_text() == " Katze , the" and text.partial
    # a look-ahead whose text is unfinished is one still: its own text starts with a space
    assert not text.offer(5) and text.ids == [1, 3, 4] and text.complete == 3
    assert not text.in_progress and text.units(finished=True) == 3
    text.append(4)
    # an unfinished character the look-ahead leaves broken goes with it ("\xe6\x98" + " the")
    assert text.offer(7) and text.unfinished and text.in_progress
    assert not text.offer(4) and text.ids == [1, 3, 4, 4] and text.complete == 4
    assert text.prediction_text() == " Katze , the the" and not text.in_progress
    # an unfinished character is dropped on demand (before a forced read), or by a cut
    assert text.offer(7) and text.in_progress and not text.partial
    text.drop_unfinished()
    assert text.ids == [1, 3, 4, 4] and not text.in_progress
    assert text.offer(5) and text.offer(6) and text.splits == 1   # " 星" starts with a space
    assert text.offer(7) and text.unfinished
    text.cut()
    assert text.ids == [1, 3, 4, 4, 5, 6] and text.complete == 5
    assert text.offer(7) and text.offer(8) and text.prediction_text() == " Katze , the the 星 星"


# --- the tiny real model ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf(tiny_model_dir):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield HFBackend(str(tiny_model_dir), dtype="float32")
    torch.set_num_threads(before)


@pytest.mark.parametrize("sources,unit", [(DE, "word"), (EN, "char")], ids=["de-en", "en-zh"])
@pytest.mark.parametrize("name,policy", [("waitk-1", WaitKPolicy(1)), ("waitk-3", WaitKPolicy(3)),
                                         ("lsg", LSGPolicy(delta=2e-5, alpha=0.0037, L=1, U=3))])
def test_the_tiny_model_writes_every_unit_with_the_source_its_delay_records(hf, sources, unit, name, policy):
    prompter = PrefixPrompter(hf.tokenizer)
    rec = ReadRecorder(hf, prompter, sources)
    outs, stats = run_prefix_policy(rec, prompter, policy, sources, max_new_tokens_final=12)
    assert stats["forced_reads"] == 0
    for out in outs:
        assert out.delays
        units = assert_exact(out, rec, prompter, unit)
        _check_rule(name, policy, out, units)
