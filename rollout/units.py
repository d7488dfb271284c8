"""Source and target units: words, or characters for languages written without spaces.

SimulEval counts latency in these units (``--eval-latency-unit word|char``); the chunker,
the per-unit delays and the latency metrics must all agree on them. Which unit a language
uses (:func:`unit_of`) is decided here and only here: the rollout is where text is cut into
units (source chunks, written target units), and the driver passes the unit it returns to the
reward and the evaluation, which never look at a language code. The reward's own unit count
(``reward.text_metrics``) is the scorer side that checks what was written; a test checks both
count alike.
"""
from __future__ import annotations

import math
from typing import Literal

Unit = Literal["word", "char"]

# Languages written without spaces between words: one unit per character.
CHAR_LANGUAGES = frozenset({"zh", "ja"})
DEFAULT_CHUNK_SIZE = {"word": 3, "char": 4}


def unit_of(lang: str) -> Unit:
    """The latency unit of a language code ("zh" → char, "de" → word)."""
    return "char" if lang.split("-")[0].lower() in CHAR_LANGUAGES else "word"


def _unit_spans(text: str, unit: Unit) -> list[tuple[int, int]]:
    """(start, end) offsets of each unit in ``text``.

    As SimulEval counts an agent's output: words are split on any whitespace; in ``char``
    mode every character but the ASCII space is a unit.
    """
    if unit == "char":
        return [(i, i + 1) for i, ch in enumerate(text) if ch != " "]
    spans: list[tuple[int, int]] = []
    start = None
    for i, ch in enumerate(text):
        if ch.isspace():
            if start is not None:
                spans.append((start, i))
                start = None
        elif start is None:
            start = i
    if start is not None:
        spans.append((start, len(text)))
    return spans


def normalize_spaces(text: str) -> str:
    """Runs of whitespace (newlines included) become one space: they never count as units."""
    return " ".join(text.split())


def split_units(text: str, unit: Unit) -> list[str]:
    """The units of ``text``: whitespace-separated words, or characters other than " "."""
    return [text[a:b] for a, b in _unit_spans(text, unit)]


def count_units(text: str, unit: Unit) -> int:
    return len(_unit_spans(text, unit))


def chunk_source(text: str, unit: Unit, chunk_size: int) -> list[str]:
    """Split a source into ceil(S / chunk_size) chunks of ``chunk_size`` units (the last may be
    shorter). Each chunk is a slice of the original text, so a Chinese chunk keeps any Latin
    words or spaces inside it exactly as written.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    spans = _unit_spans(text, unit)
    chunks = []
    for k in range(0, len(spans), chunk_size):
        group = spans[k:k + chunk_size]
        chunks.append(text[group[0][0]:group[-1][1]])
    return chunks


def num_steps(source_length: int, chunk_size: int) -> int:
    """T = ceil(S / m): the number of streaming steps of an episode."""
    return max(1, math.ceil(source_length / chunk_size))


def step_delay(step: int, chunk_size: int, source_length: int) -> int:
    """Source units read when writing at (1-based) step t: min(t·m, S)."""
    return min(step * chunk_size, source_length)
