"""Latency metrics of simultaneous translation with SimulEval 1.1.x semantics (DESIGN §2.6).

Plain functions on numbers, no Ray or torch, so the reward service, the evaluator and the
``score`` command share one implementation. Users compare our numbers with published SimulEval
numbers, so every formula and edge case follows ``simuleval.evaluator.scorers.latency_scorer``:

- ``delays[i]``: source units read when target unit ``i`` was written; ``|X|``: source length.
- ``|Y|``: the reference length when one is given (SimulEval's default ``use_ref_len``),
  otherwise the hypothesis length ``len(delays)``.
- AL:   if ``d_1 > |X|`` the score is ``d_1``; else with ``gamma = |Y| / |X|`` and ``tau`` the first
  (1-based) ``i`` with ``d_i >= |X|`` (else ``len(delays)``), ``AL = mean_{i<=tau} d_i - (i-1)/gamma``.
- LAAL: AL with ``|Y| = max(len(delays), |Y|)``.
- AP:   ``sum(d) / (|X| * |Y|)`` (the reference length when given, like AL).
- DAL:  always uses the hypothesis length; ``g'_1 = d_1``, ``g'_i = max(d_i, g'_{i-1} + 1/gamma)``,
  mean of ``g'_i - (i-1)/gamma``; no early return for a late first delay.

An empty hypothesis has no latency: :func:`score_instance` returns ``None`` and
:func:`corpus_latency` leaves it out of the means and counts it, as SimulEval skips it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

Number = float | int

METRICS: tuple[str, ...] = ("AL", "LAAL", "AP", "DAL")


def _check(delays: Sequence[Number], source_length: Number,
           reference_length: Number | None = None) -> None:
    """Reject inputs on which the formulas are undefined (SimulEval would divide by zero)."""
    if len(delays) == 0:
        raise ValueError("latency of an empty hypothesis is undefined (no delays)")
    if not source_length > 0:
        raise ValueError(f"source_length must be positive, got {source_length!r}")
    if reference_length is not None and not reference_length > 0:
        raise ValueError(f"reference_length must be positive, got {reference_length!r}")


def _target_length(delays: Sequence[Number], reference_length: Number | None) -> Number:
    # SimulEval: the reference length unless there is no reference, then the hypothesis length.
    return len(delays) if reference_length is None else reference_length


def _lagging(delays: Sequence[Number], source_length: Number, target_length: Number) -> float:
    """Shared body of AL and LAAL; they differ only in the target length behind gamma."""
    if delays[0] > source_length:
        # A first write after the whole source: SimulEval reports that delay as is.
        return float(delays[0])
    gamma = target_length / source_length
    total = 0.0
    tau = 0
    for t_minus_1, d in enumerate(delays):
        total += d - t_minus_1 / gamma
        tau = t_minus_1 + 1
        # Inclusive cut-off: the first unit written with the full source read still counts.
        if d >= source_length:
            break
    return total / tau


def al(delays: Sequence[Number], source_length: Number,
       reference_length: Number | None = None) -> float:
    """Average Lagging (Ma et al. 2019) as SimulEval computes it."""
    _check(delays, source_length, reference_length)
    return _lagging(delays, source_length, _target_length(delays, reference_length))


def laal(delays: Sequence[Number], source_length: Number,
         reference_length: Number | None = None) -> float:
    """Length-Adaptive AL: AL with |Y| = max(hypothesis length, reference length).

    A hypothesis longer than the reference does not lower it the way it lowers AL
    (over-generation is not rewarded); it is never below AL.
    """
    _check(delays, source_length, reference_length)
    target = max(len(delays), _target_length(delays, reference_length))
    return _lagging(delays, source_length, target)


def ap(delays: Sequence[Number], source_length: Number,
       reference_length: Number | None = None) -> float:
    """Average Proportion (Cho & Esipova 2016): sum(d) / (|X| * |Y|)."""
    _check(delays, source_length, reference_length)
    return sum(delays) / (source_length * _target_length(delays, reference_length))


def dal(delays: Sequence[Number], source_length: Number) -> float:
    """Differentiable AL (Arivazhagan et al. 2019); SimulEval uses the hypothesis length here."""
    _check(delays, source_length)
    target_length = len(delays)
    gamma = target_length / source_length
    total = 0.0
    g_prime_last = 0.0
    for i_minus_1, g in enumerate(delays):
        g_prime = g if i_minus_1 == 0 else max(g, g_prime_last + 1 / gamma)
        total += g_prime - i_minus_1 / gamma
        g_prime_last = g_prime
    return total / target_length


@dataclass(frozen=True)
class LatencyScores:
    """The four SimulEval latency metrics of one instance."""

    AL: float
    LAAL: float
    AP: float
    DAL: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def score_instance(delays: Sequence[Number], source_length: Number,
                   reference_length: Number | None = None) -> LatencyScores | None:
    """All four metrics of one instance; ``None`` for an empty hypothesis (no delays)."""
    if len(delays) == 0:
        return None
    return LatencyScores(
        AL=al(delays, source_length, reference_length),
        LAAL=laal(delays, source_length, reference_length),
        AP=ap(delays, source_length, reference_length),
        DAL=dal(delays, source_length),
    )


def corpus_latency(
        results: Iterable[LatencyScores | None]) -> tuple[dict[str, float | None], int, int]:
    """Corpus means over scored instances -> (means, scored, skipped_empty).

    ``None`` entries (empty hypotheses) are left out of the means and counted, as SimulEval
    skips instances without delays. With nothing scored every mean is ``None`` (SimulEval
    itself fails on an empty mean).
    """
    values: dict[str, list[float]] = {m: [] for m in METRICS}
    scored = skipped = 0
    for res in results:
        if res is None:
            skipped += 1
            continue
        scored += 1
        for m in METRICS:
            values[m].append(getattr(res, m))
    # fsum: the mean does not depend on the order of instances (SimulEval's mean is exact too).
    means = {m: (math.fsum(values[m]) / scored if scored else None) for m in METRICS}
    return means, scored, skipped
