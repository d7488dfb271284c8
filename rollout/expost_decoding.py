"""Prefix-layout decoding with ExPosST positions and one KV cache per sentence (DESIGN §2.5).

A model trained with ``sft.layout: simulmask`` (``learner.simulmask``) saw every source token in
a reserved position slot (source token j at P + j) and the assistant part after
``source_slots`` slots, and every row saw only what inference had computed when it wrote.
:class:`ExPosSTBackend` decodes exactly so, on ``transformers``, with nothing recomputed when
a source unit arrives:

- a newly read source token is appended to the sentence's cache at its slot position and
  attends only to the prompt and the earlier source (never to the assistant part);
- the middle (end of the user turn, assistant header) is fed once, at the first write, after
  the reads that write waited for;
- a written target token's row predicts the next token, so it must see the source read at
  that next write: it is fed at the start of the next call (after that call's reads), and the
  cache keeps every earlier target row as it is. Tokens a call generated that the decoder did
  not keep are cropped away.

It serves :class:`~rollout.prefix_layout.PrefixDecoder` as a ``GenerationBackend`` (greedy
only); :class:`ExPosSTPrompter` gives the decoder prompts that carry their segments, so the
backend knows the sentence, the source read and the translation so far of every call.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from rollout.prefix_layout import DEFAULT_PREFIX_SYSTEM_PROMPT, PrefixPrompter
from rollout.types import GenerationResult, Sampling, Source


class SegmentedPrompt(list):
    """A prefix-layout prompt (token ids, as ``PrefixPrompter.prompt``) with its segments."""

    key: int
    prompt: list[int]
    source: list[int]       # the whole source's tokens
    read: int               # source tokens read
    middle: list[int]
    target: list[int]


class ExPosSTPrompter(PrefixPrompter):
    """``PrefixPrompter`` whose prompts carry their segments for :class:`ExPosSTBackend`."""

    def __init__(self, tokenizer: Any, system_template: str = DEFAULT_PREFIX_SYSTEM_PROMPT):
        super().__init__(tokenizer, system_template)
        self._parts: dict[int, dict[str, list[int]]] = {}
        self._reads: dict[tuple[int, int], int] = {}

    def read_tokens(self, source: Source, read: int) -> int:
        key = (source.index, read)      # asked again at every call of the sentence: cached
        if key not in self._reads:
            self._reads[key] = super().read_tokens(source, read)
        return self._reads[key]

    def parts(self, source: Source) -> dict[str, list[int]]:
        if source.index not in self._parts:
            self._parts[source.index] = self.segments(source, [])
        return self._parts[source.index]

    def prompt(self, source: Source, read: int, target_ids: Sequence[int]) -> list[int]:
        parts, r = self.parts(source), self.read_tokens(source, read)
        out = SegmentedPrompt(parts["prompt"] + parts["source"][:r] + parts["middle"] + list(target_ids))
        out.key, out.prompt, out.source, out.read = source.index, parts["prompt"], parts["source"], r
        out.middle, out.target = parts["middle"], list(target_ids)
        return out


@dataclass
class _Sentence:
    cache: Any
    kinds: list[tuple[str, int]] = field(default_factory=list)   # cache order: (kind, index)
    fed_source: int = 0      # prompt + source tokens fed count as "source" rows


class ExPosSTBackend:
    """Greedy generation with ExPosST positions and a per-sentence KV cache (module docstring).

    ``source_slots`` must be what the model was trained with (``sft.source_slots``); a source
    with more tokens than slots is refused."""

    def __init__(self, model: Any, tokenizer: Any, source_slots: int):
        """``model``: a transformers causal LM whose attention takes explicit 4-D masks over a
        cache (``attn_implementation="eager"``)."""
        from rollout.episode import hf_codec

        if source_slots < 1:
            raise ValueError(f"source_slots must be >= 1, got {source_slots}")
        self.model, self.tokenizer, self.source_slots = model, tokenizer, source_slots
        self.stop_ids = sorted({int(i) for i in tokenizer.all_special_ids} | {hf_codec(tokenizer)[2]})
        self.min_value = torch.finfo(model.dtype).min
        self.sentences: dict[int, _Sentence] = {}
        self.fed_tokens = 0          # tokens run through the model, for the statistics

    def reset(self) -> None:
        """Drop every sentence's cache."""
        self.sentences.clear()

    def _feed(self, st: _Sentence, ids: list[int], positions: list[int], kind: str, first: int) -> torch.Tensor:
        """Append ``ids`` to the cache; logits of the last one. Source rows see only the prompt and
        source already cached; middle and target rows see everything cached."""
        past, q = len(st.kinds), len(ids)
        allowed = torch.ones(q, past + q, dtype=torch.bool)
        if kind == "source":
            allowed[:, :past] = torch.tensor([k == "source" for k, _ in st.kinds], dtype=torch.bool)
        allowed[:, past:] = torch.tril(torch.ones(q, q, dtype=torch.bool))
        mask = torch.zeros(1, 1, q, past + q, dtype=self.model.dtype).masked_fill(~allowed, self.min_value)
        with torch.no_grad():
            out = self.model(input_ids=torch.tensor([ids]), position_ids=torch.tensor([positions]),
                             attention_mask=mask, past_key_values=st.cache, use_cache=True,
                             cache_position=torch.arange(past, past + q))
        st.kinds += [(kind, first + i) for i in range(q)]
        self.fed_tokens += q
        return out.logits[0, -1].float()

    def _crop(self, st: _Sentence, target: list[int]) -> None:
        """Drop the cached rows that are stale for this call: target rows from the last kept token
        on (they must see this call's reads), rows of tokens not kept, and the middle while no
        token is written; rows after them (later source reads) are dropped and fed again."""
        keep_targets = max(len(target) - 1, 0)
        cut = len(st.kinds)
        for pos, (kind, i) in enumerate(st.kinds):
            if (kind == "target" and i >= keep_targets) or (kind == "middle" and not target):
                cut = pos
                break
        if cut < len(st.kinds):
            st.cache.crop(cut)
            st.kinds = st.kinds[:cut]
            st.fed_source = sum(1 for k, _ in st.kinds if k == "source")

    def _next_logits(self, st: _Sentence, p: SegmentedPrompt) -> torch.Tensor:
        P, R, M = len(p.prompt), self.source_slots, len(p.middle)
        self._crop(st, p.target)
        logits = None
        have = P + p.read
        if st.fed_source < have:       # the prompt and the newly read source, in their slots
            ids = (p.prompt + p.source)[st.fed_source:have]
            logits = self._feed(st, ids, list(range(st.fed_source, have)), "source", st.fed_source)
            st.fed_source = have
        if not any(k == "middle" for k, _ in st.kinds):
            logits = self._feed(st, p.middle, list(range(P + R, P + R + M)), "middle", 0)
        fed = sum(1 for k, _ in st.kinds if k == "target")
        if fed < len(p.target):
            logits = self._feed(st, p.target[fed:], list(range(P + R + M + fed, P + R + M + len(p.target))),
                                "target", fed)
        if logits is None:
            raise RuntimeError("ExPosST decoding: nothing new to condition on (every prompt token was already "
                               "fed and none was cropped)")
        return logits

    def generate(self, prompts: Sequence[list[int]], max_new_tokens: Sequence[int],
                 sampling: Sampling, seeds: Sequence[int | None] | None = None) -> list[GenerationResult]:
        if sampling.temperature != 0.0:
            raise ValueError("ExPosSTBackend decodes greedily (temperature 0) only")
        stop = set(self.stop_ids)
        results = []
        for p, cap in zip(prompts, max_new_tokens):
            if not isinstance(p, SegmentedPrompt):
                raise TypeError("ExPosSTBackend needs the prompts of an ExPosSTPrompter")
            if len(p.source) > self.source_slots:
                raise ValueError(f"source {p.key}: {len(p.source)} tokens, more than source_slots="
                                 f"{self.source_slots}")
            st = self.sentences.get(p.key)
            if st is None:
                from transformers import DynamicCache

                st = self.sentences[p.key] = _Sentence(DynamicCache())
            before = self.fed_tokens
            logits = self._next_logits(st, p)
            cached = len(p) - (self.fed_tokens - before)
            P, R, M = len(p.prompt), self.source_slots, len(p.middle)
            out, n = [], len(p.target)
            while len(out) < cap:
                if len(out) < sampling.min_tokens:
                    logits[self.stop_ids] = float("-inf")
                tok = int(torch.argmax(logits))
                out.append(tok)
                if tok in stop or len(out) == cap:
                    break
                logits = self._feed(st, [tok], [P + R + M + n], "target", n)
                n += 1
            results.append(GenerationResult(out, [0.0] * len(out), len(p), max(cached, 0)))
        return results
