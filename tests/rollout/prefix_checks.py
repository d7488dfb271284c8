"""Checks that a prefix-layout decoding is exact: every target token it kept was generated from a
prompt holding exactly the source units that the delay of the token's unit records.

The source read behind each token is taken from the prompts the backend was asked with (never
from the decoder's own bookkeeping), and the unit of each token from the decoded text and the
final prediction.
"""
from __future__ import annotations

import itertools
from typing import Any, Callable, Sequence

from rollout.prefix_layout import PrefixPrompter, SimulOutput
from rollout.simul_policies import lsg_bounds
from rollout.types import Source
from rollout.units import count_units, unit_of


class ReadRecorder:
    """A ``GenerationBackend`` around another that records, for every prompt of every generate
    call: the sentence, the source units the prompt holds, the translation so far, the tokens
    returned."""

    def __init__(self, backend: Any, prompter: PrefixPrompter, sources: Sequence[Source]):
        self.backend = backend
        self.calls: list[tuple[int, int, list[int], list[int]]] = []
        self.lengths = {s.index: count_units(s.text, unit_of(s.src_lang)) for s in sources}
        self._openings = [(list(prompter.opening(s, prompter.source_prefix(s, j))), s.index, j)
                          for s in sources for j in range(1, self.lengths[s.index] + 1)]

    def locate(self, prompt: Sequence[int]) -> tuple[int, int, list[int]]:
        """(sentence, source units read, translation ids) of a prompt."""
        hits = [(index, j, list(prompt[len(o):])) for o, index, j in self._openings
                if list(prompt[:len(o)]) == o]
        assert len(hits) == 1, f"{len(hits)} source prefixes match the prompt"
        return hits[0]

    def generate(self, prompts, caps, sampling, seeds=None):
        out = self.backend.generate(prompts, caps, sampling)
        for p, r in zip(prompts, out):
            self.calls.append((*self.locate(p), list(r.token_ids)))
        return out

    def next_token_logprobs(self, prompts, *args):
        return self.backend.next_token_logprobs(prompts, *args)


def token_reads(calls: Sequence[tuple[int, int, list[int], list[int]]], index: int,
                target_ids: Sequence[int], stop_ids: frozenset[int]) -> list[int]:
    """The source units read by the call that generated each target token of sentence ``index``.

    Asserts that every prompt's translation consists of tokens earlier calls generated, and that
    the final target ids are exactly tokens the model generated."""
    held: list[tuple[int, int]] = []      # (token, read) of the translation as the calls built it
    for i, read, so_far, toks in calls:
        if i != index:
            continue
        assert len(held) >= len(so_far) and [t for t, _ in held[:len(so_far)]] == so_far, \
            "a prompt holds target tokens that no call generated there"
        held = held[:len(so_far)] + [(t, read) for t in itertools.takewhile(lambda t: t not in stop_ids, toks)]
    assert [t for t, _ in held[:len(target_ids)]] == list(target_ids), "target ids the model did not generate"
    return [r for _, r in held[:len(target_ids)]]


def token_units(decode: Callable[[Sequence[int]], str], target_ids: Sequence[int], prediction: str,
                unit: str) -> list[set[int]]:
    """The units (0-based indices into the prediction's units) that each target token's text is part
    of. Tokens of a character split over several tokens all get that character's units; tokens
    with no text (whitespace only) get none."""
    owner: list[int] = []                 # unit of each non-space character of the prediction
    u, gap = -1, True
    for ch in prediction:
        if ch.isspace():
            gap = True
            continue
        if unit == "char" or gap:
            u += 1
        gap = False
        owner.append(u)
    units: list[set[int]] = [set() for _ in target_ids]
    text, pos, waiting = "", 0, []
    for n in range(len(target_ids)):
        waiting.append(n)
        full = decode(target_ids[:n + 1])
        if full.endswith("\ufffd"):
            continue                      # an unfinished character: it belongs to the next text
        assert full.startswith(text)
        new = sum(1 for ch in full[len(text):] if not ch.isspace())
        for m in waiting:
            units[m] = set(owner[pos:pos + new])
        text, pos, waiting = full, pos + new, []
    assert pos == len(owner), "the prediction is not the target ids' text"
    return units


def shared_with_previous(units: Sequence[set[int]]) -> set[int]:
    """Units that share a token with the unit before them (a token holding several units)."""
    return {u for us in units for u in us if u - 1 in us}


def assert_exact(out: SimulOutput, recorder: ReadRecorder, prompter: PrefixPrompter, unit: str) -> list[set[int]]:
    """Every kept target token was generated with exactly the source its unit's delay records;
    returns the units of each token."""
    reads = token_reads(recorder.calls, out.index, out.target_ids, prompter.stop_ids)
    units = token_units(prompter.decode, out.target_ids, out.prediction, unit)
    assert set().union(*units) == set(range(len(out.delays))), "a unit made of no token"
    for n, (read, us) in enumerate(zip(reads, units)):
        for u in sorted(us):
            assert out.delays[u] == read, (f"sentence {out.index}: token {n} was generated with {read} "
                                           f"source units read, its unit {u} has delay {out.delays[u]}",
                                           out.delays, reads)
    return units


def assert_waitk_rule(out: SimulOutput, k: int, units: Sequence[set[int]]) -> None:
    """wait-k's exact rule: delay_i = min(k + i − 1, |X|), except that a unit sharing a token with
    the unit before it has that unit's (earlier) delay."""
    shared = shared_with_previous(units)
    for u, d in enumerate(out.delays):
        schedule = min(k + u, out.source_length)
        if u in shared:
            assert d == out.delays[u - 1] <= schedule, (u, out.delays)
        else:
            assert d == schedule, (u, out.delays)


def assert_lsg_rule(out: SimulOutput, L: int, U: int, units: Sequence[set[int]]) -> None:
    """LSG's exact rule: a unit's delay lies in Eq. 5's range for it (or is the whole source),
    except that a unit sharing a token with the unit before it has that unit's delay."""
    shared = shared_with_previous(units)
    for u, d in enumerate(out.delays):
        low, high = lsg_bounds(L, U, u + 1, out.source_length)
        if u in shared:
            assert d == out.delays[u - 1], (u, out.delays)
        else:
            assert low <= d <= high or d == out.source_length, (u, d, out.delays)
