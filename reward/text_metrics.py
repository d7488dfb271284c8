"""Text units and string-based quality metrics (BLEU, chrF and its variants) on top of sacrebleu.

Units follow SimulEval 1.1.x (``--eval-latency-unit``), so lengths and delays line up with
published numbers:

- a hypothesis is split into units the way SimulEval splits the text an agent writes:
  ``word`` = whitespace split, ``char`` = every character except the ASCII space (Chinese);
- a reference is measured the way SimulEval's ``reference_length`` does it:
  ``word`` = ``len(text.split(" "))`` (single spaces), ``char`` = ``len(text.strip())``
  (spaces inside the text count). For a stripped, single-spaced reference in a word unit and
  a reference without inner spaces in the char unit the two counts agree.

The reward is the scorer side of SimulEval's protocol: it counts the units of the text it is
given and checks one delay per unit, whoever wrote it (a rollout, or a user's instances file),
so it keeps this counting rule rather than trusting the writer's. Which unit a language uses
is decided once, in ``rollout.units.unit_of``; the reward receives the unit, never a language.
``tests/rollout/test_units.py`` checks that the writer side (``rollout.units``) counts the same.

sacrebleu is imported inside the functions: callers that only count units never load it.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING, Sequence

from reward.types import Unit

if TYPE_CHECKING:
    from sacrebleu.metrics import CHRF

UNITS: tuple[str, ...] = ("word", "char")


def _check_unit(unit: str) -> None:
    if unit not in UNITS:
        raise ValueError(f"unknown latency unit {unit!r}; expected one of {', '.join(UNITS)}")


def split_units(text: str, unit: Unit) -> list[str]:
    """The target units of a hypothesis; SimulEval writes one delay per unit."""
    _check_unit(unit)
    if unit == "word":
        return text.split()
    # SimulEval removes only " " for the char unit: other whitespace would count as a unit.
    return list(text.replace(" ", ""))


def count_units(text: str, unit: Unit) -> int:
    """Number of hypothesis units: ``len(delays)`` of a consistent SimulEval instance."""
    return len(split_units(text, unit))


def reference_length(text: str, unit: Unit) -> int:
    """Reference length as SimulEval's ``Instance.reference_length`` computes it (|Y| of AL/AP)."""
    _check_unit(unit)
    if unit == "word":
        return len(text.split(" "))
    return len(text.strip())


def bleu_tokenizer(unit: Unit) -> str:
    """sacrebleu tokenizer for a target measured in ``unit``: 'zh' for characters, else '13a'."""
    _check_unit(unit)
    return "zh" if unit == "char" else "13a"


def _check_pairs(hyps: Sequence[str], refs: Sequence[str]) -> None:
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")


def corpus_bleu(hyps: Sequence[str], refs: Sequence[str], tokenize: str = "13a") -> float:
    """Corpus BLEU (sacrebleu, one reference per hypothesis), as SimulEval's BLEU scorer."""
    from sacrebleu.metrics import BLEU

    _check_pairs(hyps, refs)
    return float(BLEU(tokenize=tokenize).corpus_score(list(hyps), [list(refs)]).score)


@lru_cache(maxsize=4)
def _chrf(beta: int = 2) -> "CHRF":
    # One scorer object per beta: sentence_chrf runs once per trajectory in the reward loop.
    from sacrebleu.metrics import CHRF

    return CHRF(beta=beta)


def corpus_chrf(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """Corpus chrF (sacrebleu defaults: chrF2, character 6-grams, no word n-grams)."""
    _check_pairs(hyps, refs)
    return float(_chrf().corpus_score(list(hyps), [list(refs)]).score)


def sentence_chrf(hyp: str, ref: str, beta: int = 2) -> float:
    """chrF of one hypothesis against one reference, on the 0-100 scale (β=2: chrF2, recall
    weighted twice as much as precision; β=1: chrF1, both weighted equally)."""
    return float(_chrf(beta).sentence_score(hyp, [ref]).score)


def char_length(text: str) -> int:
    """Characters other than whitespace: the characters chrF's n-grams are made of."""
    return sum(1 for c in text if not c.isspace())


def long_output_penalty(hyp: str, ref: str) -> float:
    """BLEU's brevity penalty turned round for long outputs: exp(1 − |hyp|/|ref|) when the
    hypothesis is longer than the reference, else 1; lengths in characters (``char_length``),
    so the same rule holds for Chinese targets without a word segmenter."""
    h, r = char_length(hyp), char_length(ref)
    return math.exp(1.0 - h / r) if r > 0 and h > r else 1.0


def sentence_chrf_bp(hyp: str, ref: str) -> float:
    """chrF2 × ``long_output_penalty``: chrF2's meaning for outputs up to the reference length,
    discounted for every character beyond it (0-100)."""
    return sentence_chrf(hyp, ref) * long_output_penalty(hyp, ref)
