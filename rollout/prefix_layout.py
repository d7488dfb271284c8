"""Simultaneous decoding in the prefix layout (wait-k, LSG, offline; DESIGN §2.4).

The prompt of a sentence with j source units read and translation ids y so far is

    [system] [user: x_1..x_j] [assistant header] y

(the chat template's own turn markers; y are the ids the model generated, never re-tokenised).
A write emits one target unit (a word; a character for Chinese). Every sentence of a batch
advances in lock-step: one tick first settles every sentence's READ/WRITE decision (reads the
rule decides are free; LSG's in-range decisions take one batched next-token-distribution call
per round, current and wait-1 prompts together), then one batched ``generate`` writes a unit
for every writer whose source is unfinished, and one more finishes every sentence whose source
is complete. The end of the translation is not chosen before the source is complete
(``min_tokens=1``), as in wait-k.

Timing: each sentence keeps a compute clock, the summed duration of the batched calls it took
part in; ``compute_s[i]`` is that clock when unit i was written.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from rollout.episode import ChatLayout, hf_codec, system_prompt_for
from rollout.runner import Sampling, Source
from rollout.simul_policies import (
    ASK, READ, WRITE, LSGPolicy, PrefixPolicy, cut_one_unit, normalize_spaces, units_of_text)
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
        unit = unit_of(source.src_lang)
        prefix = chunk_source(source.text, unit, read)[0] if read > 0 else ""
        return self.opening(source, prefix) + list(target_ids)


@dataclass
class _State:
    source: Source
    source_length: int
    unit: str
    read: int = 0
    ids: list[int] = field(default_factory=list)
    units: int = 0
    delays: list[int] = field(default_factory=list)
    compute_s: list[float] = field(default_factory=list)
    clock: float = 0.0
    finished: bool = False
    decisions: list[dict[str, Any]] = field(default_factory=list)
    generated: int = 0
    empty_writes: int = 0

    def note(self, action: str, by: str, **info: Any) -> None:
        self.decisions.append({"read": self.read, "written": self.units, "target": len(self.ids),
                               "action": action, "by": by, **info})


class PrefixDecoder:
    """Runs one prefix-layout policy over many sentences; call :meth:`step` until False.

    ``backend`` is a :class:`~rollout.runner.GenerationBackend`; LSG also needs
    ``next_token_logprobs``: ``top_k=None`` asks for exact full-vocabulary distributions
    (``HFBackend``), an integer for the top-K approximation (``VLLMEngine``).
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
            self.states.append(_State(src, length, unit_of(src.tgt_lang)))
        self.stats = {"ticks": 0, "generate_calls": 0, "distribution_calls": 0, "prompt_tokens": 0,
                      "cached_prompt_tokens": 0, "generated_tokens": 0, "seconds": 0.0}

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
            act = self.policy.action(st.read, st.units, st.source_length)
            if act != READ:
                return act
            st.note(READ, "rule")
            st.read += 1

    def _decide(self, active: list[_State]) -> list[_State]:
        writers: list[_State] = []
        undecided = active
        while undecided:
            ask = []
            for st in undecided:
                if self._by_rule(st) == WRITE:
                    st.note(WRITE, "rule")
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
        assert isinstance(policy, LSGPolicy), f"policy {policy.name} never asks the model"
        prompts = [self.prompter.prompt(st.source, st.read, st.ids) for st in states]
        prompts += [self.prompter.prompt(st.source, policy.base_read(st.units, st.source_length), st.ids)
                    for st in states]
        start = time.perf_counter()
        if self.top_k is None:
            dists: list[Any] = [t.numpy() for t in self.backend.next_token_logprobs(prompts)]
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
        for st, gen in zip(states, self._generate(states, self.max_tokens_per_unit, min_tokens=1)):
            kept, _stop = cut_one_unit(gen, self.prompter.decode, st.ids, st.unit, self.prompter.stop_ids)
            if self._commit(st, kept):
                st.empty_writes = 0
                continue
            # No new unit yet (the tokens only continued the last word, or were whitespace):
            # the next tick writes again from here; after a few such tries it reads instead.
            st.empty_writes += 1
            if st.empty_writes >= MAX_EMPTY_WRITES:
                st.note(READ, "no-unit")
                st.read += 1
                st.empty_writes = 0

    def _finish(self, states: list[_State]) -> None:
        for st, gen in zip(states, self._generate(states, self.max_new_tokens_final, min_tokens=0)):
            stop = next((k for k, tok in enumerate(gen) if tok in self.prompter.stop_ids), len(gen))
            self._commit(st, gen[:stop])
            st.finished = True

    def _commit(self, st: _State, ids: list[int]) -> int:
        """Append ``ids``; every new unit gets the current read position and clock."""
        st.ids += ids
        units = units_of_text(self.prompter.decode(st.ids), st.unit)
        new = max(units - st.units, 0)
        st.units = max(units, st.units)
        st.delays += [st.read] * new
        st.compute_s += [st.clock] * new
        return new

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
            prediction = normalize_spaces(self.prompter.decode(st.ids))
            # The decoded text is append-only, so the per-write counts add up to the final one.
            assert count_units(prediction, st.unit) == len(st.delays), (st.source.index, prediction)
            out.append(SimulOutput(st.source.index, st.source_length, prediction, list(st.delays),
                                   list(st.compute_s), list(st.ids), st.decisions, st.generated))
        return out


def run_prefix_policy(backend: Any, prompter: PrefixPrompter, policy: PrefixPolicy,
                      sources: Sequence[Source], **kwargs: Any) -> tuple[list[SimulOutput], dict]:
    """Decode every source to the end; returns the outputs and the call statistics."""
    dec = PrefixDecoder(backend, prompter, policy, sources, **kwargs)
    while dec.step():
        pass
    return dec.outputs(), dec.stats
