"""Simultaneous decoding in the prefix layout (wait-k, LSG, offline; DESIGN §2.4).

The prompt of a sentence with j source units read and translation ids y so far is

    [system] [user: x_1..x_j] [assistant header] y

(the chat template's own turn markers; y are the ids the model generated, never re-tokenised).
A WRITE writes one target unit (a word; a character for Chinese), and every unit is generated
from exactly the source prefix its delay records (:mod:`rollout.simul_policies`, "Units and
tokens"): a token holding several units is written whole, all its units with the delay of the
WRITE that generated it; a unit begun (an open word, an unfinished character) is finished at the
same read position, with no READ and no policy decision before it is complete; and the
look-ahead token that shows a word ended (its text starts with whitespace, the next word's first
piece, generated with this word's source) is discarded: the word is closed without it
(:meth:`~rollout.simul_policies.IncrementalText.close`) and the next WRITE generates afresh from
the prompt that ends with the closed word, with the source that WRITE's own delay records. If that
regenerated text glues onto the closed word ("house" + ","), it starts a new unit anyway: the
prediction gets a space there (``split_after_close`` in the statistics; the target ids stay the
model's). sacreBLEU's 13a tokenizer splits punctuation such as , . ! ? : ; off a word and chrF
(character n-grams, nw:0) ignores whitespace, so a space before such punctuation moves neither
metric; one before letters, an apostrophe or a hyphen does change BLEU's tokens, which is why the
splits are counted. Character units never split. The final WRITE (source complete) discards
nothing. The cost: one more generated token per word, the discarded look-ahead (counted in
``discarded_lookahead``), whose position the next WRITE generates again.

Every sentence of a batch advances in lock-step: one tick first settles every sentence's
READ/WRITE decision (reads the rule decides are free; LSG's in-range decisions take one batched
next-token-distribution call per round, current and wait-1 prompts together), then one batched
``generate`` produces the next unit(s) for every writer whose source is unfinished, and one more
finishes every sentence whose source is complete. Generated tokens are kept up to the last one
of the units a call completes; the text grows incrementally
(:class:`~rollout.simul_policies.IncrementalText`), never by decoding all target ids again. The
end of the translation is not chosen before the source is complete (``min_tokens=1``).

Safety valve: after ``MAX_EMPTY_WRITES`` generation calls in a row that complete no unit,
- a word still open (one word longer than all those tokens) is cut there: it is written as one
  unit now, with the current delay, within the policy's bounds, and the prediction gets a space
  at the cut (``cut_words`` in the statistics; the target ids stay the model's). Its tokens were
  all generated at this read position, since a begun unit is finished where it began;
- with no open word (the model wrote only whitespace, or an unfinished character) a READ is
  forced; the tokens of an unfinished character are dropped first, to be generated again with
  the new source. Such a read may step past the policy's bound; every one is recorded in
  ``SimulOutput.forced_reads`` with ``beyond_bound`` and counted in the statistics
  (``forced_reads``, ``forced_reads_beyond_bound``), so a report can say so.

Timing: each sentence keeps a compute clock, the summed duration of the batched calls it took
part in; ``compute_s[i]`` is that clock when unit i was written.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from rollout.episode import ChatLayout, hf_codec, system_prompt_for
from rollout.types import Sampling, Source
from rollout.simul_policies import (
    READ, WRITE, IncrementalText, LSGPolicy, PrefixPolicy, normalize_spaces, within_bounds)
from rollout.units import chunk_source, count_units, unit_of

MAX_EMPTY_WRITES = 4   # writes in a row that add no unit before a forced read
DEFAULT_PREFIX_SYSTEM_PROMPT = (
    "You are a professional translator. Translate the {src_lang} text into {tgt_lang}. "
    "The text may stop in the middle of a sentence: translate only what it says so far. "
    "Reply with the {tgt_lang} translation only.")


@dataclass
class SimulOutput:
    """One translated sentence: SimulEval's fields plus the decision trace."""

    index: int
    source_length: int
    prediction: str
    delays: list[int]
    compute_s: list[float]
    target_ids: list[int]
    decisions: list[dict[str, Any]]   # read, written, target (ids committed), action, by[, kl, p_max]
    generated_tokens: int = 0
    forced_reads: list[dict[str, Any]] = field(default_factory=list)  # read, written, beyond_bound
    wait_share: float | None = None   # episode layouts: share of the turns before the last left empty


def full_vocabulary_array(dist: dict[int, float]) -> np.ndarray:
    """A log-prob list over the whole vocabulary (token id -> log-prob) as a dense array."""
    out = np.full(max(dist) + 1, -np.inf, dtype=np.float64)
    ids = np.fromiter(dist.keys(), dtype=np.int64, count=len(dist))
    out[ids] = np.fromiter(dist.values(), dtype=np.float64, count=len(dist))
    if len(dist) != len(out):
        raise ValueError(f"{len(dist)} log-probs for a vocabulary of at least {len(out)}: "
                         "not a full-vocabulary distribution (is max_logprobs=-1?)")
    return out


class PrefixPrompter:
    """Token ids of prefix-layout prompts for one model's chat template."""

    def __init__(self, tokenizer: Any, system_template: str = DEFAULT_PREFIX_SYSTEM_PROMPT):
        self.layout = ChatLayout.from_tokenizer(tokenizer)
        self.encode, self.decode, eot = hf_codec(tokenizer)
        self.stop_ids = frozenset(int(i) for i in tokenizer.all_special_ids) | {eot}
        self.vocab_size = len(tokenizer)
        self.system_template = system_template
        self._openings: dict[tuple[str, str, str], list[int]] = {}

    def opening(self, source: Source, source_prefix: str) -> list[int]:
        key = (source.src_lang, source.tgt_lang, source_prefix)
        ids = self._openings.get(key)
        if ids is None:
            system = system_prompt_for(self.system_template, source.src_lang, source.tgt_lang, "")
            ids = self.encode(self.layout.opening(system, source_prefix))
            self._openings[key] = ids
        return ids

    def prompt(self, source: Source, read: int, target_ids: Sequence[int]) -> list[int]:
        """The prompt with the first ``read`` source units and the translation ids so far."""
        return self.opening(source, self.source_prefix(source, read)) + list(target_ids)

    @staticmethod
    def source_prefix(source: Source, read: int) -> str:
        """The first ``read`` units of the source, as the prompt holds them."""
        return chunk_source(source.text, unit_of(source.src_lang), read)[0] if read > 0 else ""

    def read_tokens(self, source: Source, read: int) -> int:
        """Source tokens of the first ``read`` units: their encoding, which must be a prefix of the
        whole source's tokens (``ValueError`` when the tokenizer merges across that word boundary:
        then no read count in tokens is exact)."""
        whole = self.encode(source.text)
        ids = self.encode(self.source_prefix(source, read)) if read else []
        if ids != whole[:len(ids)]:
            raise ValueError(f"source {source.index}: its first {read} units do not encode to a prefix "
                             "of the whole source's tokens")
        return len(ids)

    def segments(self, source: Source, target_ids: Sequence[int]) -> dict[str, list[int]]:
        """The layout of the whole source as its four token segments, the ones the learner's
        ``learner.simulmask.PrefixSegments`` counts: ``prompt`` (system turn, user header),
        ``source``, ``middle`` (end of the user turn, assistant header) and ``target``.

        Their concatenation is exactly ``prompt(source, |X|, target_ids)``; a tokenizer that
        merges tokens across a segment boundary for this source raises ``ValueError``."""
        system = system_prompt_for(self.system_template, source.src_lang, source.tgt_lang, "")
        text = self.layout.opening(system, source.text)
        cut = text.rfind(source.text)
        parts = {"prompt": self.encode(text[:cut]), "source": self.encode(source.text),
                 "middle": self.encode(text[cut + len(source.text):]), "target": list(target_ids)}
        whole = self.opening(source, source.text)
        if parts["prompt"] + parts["source"] + parts["middle"] != whole:
            raise ValueError(f"source {source.index}: the tokenizer merges tokens across the source's "
                             "boundaries in the prompt; its prefix layout has no clean segments")
        return parts


@dataclass
class _State:
    source: Source
    source_length: int
    unit: str
    text: IncrementalText
    read: int = 0
    delays: list[int] = field(default_factory=list)
    compute_s: list[float] = field(default_factory=list)
    clock: float = 0.0
    finished: bool = False
    decisions: list[dict[str, Any]] = field(default_factory=list)
    generated: int = 0
    empty_writes: int = 0
    forced: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ids(self) -> list[int]:
        return self.text.ids

    @property
    def units(self) -> int:
        """Target units written so far."""
        return len(self.delays)

    def release(self, n: int) -> None:
        self.delays += [self.read] * n
        self.compute_s += [self.clock] * n

    def note(self, action: str, by: str, **info: Any) -> None:
        self.decisions.append({"read": self.read, "written": self.units, "target": len(self.ids),
                               "action": action, "by": by, **info})


class PrefixDecoder:
    """Runs one prefix-layout policy over many sentences; call :meth:`step` until False.

    ``backend`` is a :class:`~rollout.types.GenerationBackend`; LSG also needs
    ``next_token_logprobs``: ``top_k=None`` asks for exact full-vocabulary distributions as
    tensors (``HFBackend``), ``top_k=-1`` for the exact distributions as full-vocabulary
    log-prob lists (``VLLMEngine`` started with ``max_logprobs=-1``), a positive integer for
    the top-K approximation (``VLLMEngine``).
    """

    def __init__(self, backend: Any, prompter: PrefixPrompter, policy: PrefixPolicy,
                 sources: Sequence[Source], *, top_k: int | None = None,
                 max_tokens_per_unit: int = 8, max_new_tokens_final: int = 256):
        self.backend, self.prompter, self.policy = backend, prompter, policy
        self.top_k = top_k
        self.max_tokens_per_unit, self.max_new_tokens_final = max_tokens_per_unit, max_new_tokens_final
        self.states = []
        for src in sources:
            length = count_units(src.text, unit_of(src.src_lang))
            if length == 0:
                raise ValueError(f"source {src.index} is empty")
            unit = unit_of(src.tgt_lang)
            self.states.append(_State(src, length, unit, IncrementalText(prompter.decode, unit)))
        self.stats = {"ticks": 0, "generate_calls": 0, "distribution_calls": 0, "prompt_tokens": 0,
                      "cached_prompt_tokens": 0, "generated_tokens": 0, "seconds": 0.0,
                      "discarded_lookahead": 0, "split_after_close": 0, "cut_words": 0,
                      "forced_reads": 0, "forced_reads_beyond_bound": 0}

    @property
    def finished(self) -> int:
        return sum(st.finished for st in self.states)

    # --- one tick ---------------------------------------------------------------------------

    def step(self) -> bool:
        """Advance every unfinished sentence by one write; False once all are finished."""
        active = [st for st in self.states if not st.finished]
        if not active:
            return False
        self.stats["ticks"] += 1
        writers = self._decide(active)
        partial = [st for st in writers if st.read < st.source_length]
        if partial:
            self._write_units(partial)
        complete = [st for st in writers if st.read >= st.source_length and not st.finished]
        if complete:
            self._finish(complete)
        return any(not st.finished for st in self.states)

    def _by_rule(self, st: _State) -> str:
        """Apply the rule's reads (free); return WRITE or ASK."""
        while True:
            act = self._rule(st)
            if act != READ:
                return act
            st.note(READ, "rule")
            st.read += 1

    def _rule(self, st: _State) -> str:
        """The policy's rule; WRITE while a begun unit is unfinished (it is finished with the
        source it began with)."""
        if st.text.in_progress:
            return WRITE
        return self.policy.action(st.read, st.units, st.source_length)

    def _decide(self, active: list[_State]) -> list[_State]:
        writers: list[_State] = []
        undecided = active
        while undecided:
            ask = []
            for st in undecided:
                if self._by_rule(st) == WRITE:
                    st.note(WRITE, "continue" if st.text.in_progress else "rule")
                    writers.append(st)
                else:
                    ask.append(st)
            undecided = []
            if not ask:
                break
            for st, (act, info) in zip(ask, self._ask(ask)):
                st.note(act, "model", **info)
                if act == WRITE:
                    writers.append(st)
                else:
                    st.read += 1
                    undecided.append(st)
        return writers

    def _ask(self, states: list[_State]) -> list[tuple[str, dict]]:
        """LSG's in-range decision from p_cur and the wait-1 p_base, in one batched call."""
        policy = self.policy
        if not isinstance(policy, LSGPolicy):
            raise TypeError(f"policy {policy.name} never asks the model: only LSG decides from the model's "
                            "next-token distributions")
        prompts = [self.prompter.prompt(st.source, st.read, st.ids) for st in states]
        prompts += [self.prompter.prompt(st.source, policy.base_read(st.units, st.source_length), st.ids)
                    for st in states]
        start = time.perf_counter()
        if self.top_k is None:
            dists: list[Any] = [t.numpy() for t in self.backend.next_token_logprobs(prompts)]
        elif self.top_k == -1:
            dists = [full_vocabulary_array(d) for d in self.backend.next_token_logprobs(prompts, -1)]
        else:
            dists = self.backend.next_token_logprobs(prompts, self.top_k)
        self._account(states, time.perf_counter() - start, prompts, 0, distribution=True)
        n = len(states)
        return [policy.decide(dists[k], dists[n + k], self.prompter.vocab_size) for k in range(n)]

    def _generate(self, states: list[_State], cap: int, min_tokens: int) -> list[list[int]]:
        prompts = [self.prompter.prompt(st.source, st.read, st.ids) for st in states]
        start = time.perf_counter()
        results = self.backend.generate(prompts, [cap] * len(prompts),
                                        Sampling(temperature=0.0, min_tokens=min_tokens))
        cached = sum(r.cached_prompt_tokens for r in results)
        self._account(states, time.perf_counter() - start, prompts, cached,
                      generated=[len(r.token_ids) for r in results])
        return [list(r.token_ids) for r in results]

    def _write_units(self, states: list[_State]) -> None:
        stop_ids = self.prompter.stop_ids
        for st, gen in zip(states, self._generate(states, self.max_tokens_per_unit, min_tokens=1)):
            text, splits = st.text, st.text.splits
            for tok in gen:
                if tok in stop_ids:
                    break   # the end is chosen only with the whole source read
                if not text.offer(tok):
                    # The look-ahead that closed the open word: generated with this word's
                    # source, it is dropped and the next word generated with its own.
                    self.stats["discarded_lookahead"] += 1
                    break
                if text.complete > st.units and not text.in_progress:
                    break   # the rest was generated past these units: dropped
            self.stats["split_after_close"] += text.splits - splits
            if text.complete > st.units:
                # Every unit this call completed, a multi-unit token's too, has this delay.
                st.release(text.complete - st.units)
                st.empty_writes = 0
                continue
            # No unit completed yet (the tokens continued a word, or were whitespace): the next
            # tick writes again from here; after a few such tries the valve reads instead.
            st.empty_writes += 1
            if st.empty_writes >= MAX_EMPTY_WRITES and text.partial:
                text.cut()
                st.note(WRITE, "cut-word")
                st.release(1)
                self.stats["cut_words"] += 1
                st.empty_writes = 0
            elif st.empty_writes >= MAX_EMPTY_WRITES:
                text.drop_unfinished()   # generated with this source: generated again after the read
                beyond = not within_bounds(self.policy, st.read, st.units, st.source_length)
                st.forced.append({"read": st.read, "written": st.units, "beyond_bound": beyond})
                self.stats["forced_reads"] += 1
                self.stats["forced_reads_beyond_bound"] += int(beyond)
                st.note(READ, "no-unit", beyond_bound=beyond)
                st.read += 1
                st.empty_writes = 0

    def _finish(self, states: list[_State]) -> None:
        for st, gen in zip(states, self._generate(states, self.max_new_tokens_final, min_tokens=0)):
            splits = st.text.splits
            for tok in gen:     # the source is complete: nothing is discarded
                if tok in self.prompter.stop_ids:
                    break
                st.text.append(tok)
            self.stats["split_after_close"] += st.text.splits - splits
            st.finished = True
            st.release(st.text.units(finished=True) - st.units)

    def _account(self, states: list[_State], seconds: float, prompts: list[list[int]], cached: int,
                 generated: list[int] | None = None, distribution: bool = False) -> None:
        for st in states:
            st.clock += seconds
        for st, n in zip(states, generated or []):
            st.generated += n
        self.stats["distribution_calls" if distribution else "generate_calls"] += 1
        self.stats["prompt_tokens"] += sum(len(p) for p in prompts)
        self.stats["cached_prompt_tokens"] += cached
        self.stats["generated_tokens"] += sum(generated or [])
        self.stats["seconds"] += seconds

    # --- results ----------------------------------------------------------------------------

    def outputs(self) -> list[SimulOutput]:
        if any(not st.finished for st in self.states):
            raise RuntimeError("decoding unfinished: call step() until it returns False")
        out = []
        for st in self.states:
            prediction = normalize_spaces(st.text.prediction_text())
            # The incremental text is the one-shot decoding (up to an unfinished character).
            units = count_units(prediction, st.unit)
            if units != len(st.delays):
                raise RuntimeError(f"sentence {st.source.index}: the prediction {prediction!r} has {units} "
                                   f"{st.unit} units but {len(st.delays)} delays were recorded; the tokenizer's "
                                   "incremental decoding disagrees with decoding the whole text")
            out.append(SimulOutput(st.source.index, st.source_length, prediction, list(st.delays),
                                   list(st.compute_s), list(st.ids), st.decisions, st.generated,
                                   list(st.forced)))
        return out


def run_prefix_policy(backend: Any, prompter: PrefixPrompter, policy: PrefixPolicy,
                      sources: Sequence[Source], **kwargs: Any) -> tuple[list[SimulOutput], dict]:
    """Decode every source to the end; returns the outputs and the call statistics."""
    dec = PrefixDecoder(backend, prompter, policy, sources, **kwargs)
    while dec.step():
        pass
    return dec.outputs(), dec.stats
