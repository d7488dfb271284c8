"""What a streaming step may write, and when each written unit counts as written.

Plain functions on text and token ids (no model, no Ray), shared by the episode layouts
(``rollout.episode``) and tested directly:

- :func:`unit_ends`: where each target unit of a text ends (whitespace-separated words, or
  every non-whitespace character for a character-unit target);
- :func:`completion_delays`: the delay of each unit of the final translation is the source read
  at the step that wrote its last character (a word the model continues at a later step
  counts as written then: no unit is claimed before all of it is on the page);
- :func:`longest_allowed_prefix`: how many of a step's tokens are kept under the episode's
  rules (a bound on the units a non-final step may have written, and the end marker, which may
  never appear in the translation); the first token that breaks a rule and everything after
  it are dropped, so a kept translation never depends on tokens that were thrown away.
"""
from __future__ import annotations

import bisect
import math
from typing import Callable, Sequence

from rollout.units import Unit, normalize_spaces


def unit_ends(text: str, unit: Unit) -> list[int]:
    """End offsets in ``text`` of its units: words split on any whitespace, or (``char``) every
    character that is not whitespace. ``len(unit_ends(t, u)) == count_units(normalize_spaces(t), u)``."""
    ends: list[int] = []
    if unit == "char":
        return [i + 1 for i, ch in enumerate(text) if not ch.isspace()]
    in_word = False
    for i, ch in enumerate(text):
        if ch.isspace():
            if in_word:
                ends.append(i)
            in_word = False
        else:
            in_word = True
    if in_word:
        ends.append(len(text))
    return ends


def count_written_units(text: str, unit: Unit) -> int:
    """Units of ``text`` as written so far (an open word at the end counts)."""
    return len(unit_ends(text, unit))


def completion_delays(text: str, unit: Unit, step_lengths: Sequence[int], reads: Sequence[int]) -> list[int]:
    """Delay of every unit of ``text``: ``reads[t]`` of the first step ``t`` after which at least
    ``end`` characters of ``text`` were written (``step_lengths[t]``, non-decreasing)."""
    if len(step_lengths) != len(reads):
        raise ValueError(f"{len(step_lengths)} step lengths but {len(reads)} read counts")
    delays = []
    for end in unit_ends(text, unit):
        t = bisect.bisect_left(list(step_lengths), end)
        if t >= len(reads):
            raise ValueError(f"a unit ends at {end} but the steps wrote only {step_lengths[-1] if step_lengths else 0} "
                             "characters")
        delays.append(int(reads[t]))
    return delays


def stable_length(text: str, final: str) -> int:
    """Characters of ``text`` that the final text keeps: their common prefix (a step's decoded
    text may end in an unfinished character that a later token completes)."""
    n = min(len(text), len(final))
    i = 0
    while i < n and text[i] == final[i]:
        i += 1
    return i


def unit_bound(read: int, source_length: int, *, units_per_read: float | None,
               schedule_k: int | None) -> int | None:
    """Most target units the translation may hold after a step that read ``read`` of
    ``source_length`` source units; ``None`` once the source is complete (the last step writes
    the rest) or when no rule bounds it.

    ``units_per_read`` = ρ: at most ⌊ρ·read⌋ units (a step writes no more than the source read so
    far can justify, like LSG's read-range constraint); ``schedule_k``: the wait-k schedule, at
    most max(0, read − k + 1) units."""
    if read >= source_length:
        return None
    bounds = []
    if units_per_read is not None:
        bounds.append(math.floor(units_per_read * read + 1e-9))
    if schedule_k is not None:
        bounds.append(max(0, read - schedule_k + 1))
    return min(bounds) if bounds else None


def _last_true(n: int, ok: Callable[[int], bool]) -> int:
    """The largest j in 0..n with ok(j), for ok true up to some j and false after (bisection)."""
    if ok(n):
        return n
    lo, hi = 0, n
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo


def longest_allowed_prefix(ids: Sequence[int], new_text: Callable[[Sequence[int]], str],
                           written_text: Callable[[Sequence[int]], str], unit: Unit, *,
                           limit: int | None, marker: str | None) -> int:
    """The number of leading ``ids`` a step keeps.

    ``new_text(prefix)`` is the text those tokens add, ``written_text(prefix)`` the whole
    translation with them. The kept tokens end before the first token that carries any part of
    ``marker`` (the end marker never reaches the translation, not even its first characters),
    and leave at most ``limit`` units in the translation. Both conditions only get worse as tokens
    are added, so each is found by bisection (a few decodes, not one per token)."""
    keep = len(ids)
    if marker and marker in new_text(ids):
        first = _last_true(len(ids), lambda j: marker not in new_text(ids[:j])) + 1
        at = new_text(ids[:first]).index(marker)
        keep = _last_true(first, lambda j: len(new_text(ids[:j])) <= at)
    if limit is not None:
        keep = _last_true(keep, lambda j: count_written_units(written_text(ids[:j]), unit) <= limit)
    return keep
