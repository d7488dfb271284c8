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

Beside them (OmniSTEval 0.1.10 semantics, the IWSLT 2026 scorer, shortform):

- YAAL (Polák et al. 2025, "Better Late Than Never"): LAAL's ``gamma`` (|Y| = max(|hyp|, |ref|)),
  summed only over units written *before* the source ended (``d_i < |X|``, exclusive); an
  instance whose first unit comes with the whole source read has no YAAL (``None``, skipped).
- Degeneracy test (:func:`shortform_degeneracy`): SWF = % of units written while the source
  was still arriving, EFSW = % of the source before each instance's YAAL, DSPTV = EFSW − SWF;
  a policy is flagged degenerate when |DSPTV| > 20.

Computation-aware latency (text): SimulEval's ``elapsed`` is the delay plus the agent's
cumulative compute time when the unit was written, in the unit of ``delays`` and
``source_length`` (milliseconds for speech). For text we keep that meaning in source units:
``elapsed_i = d_i + 1000 · C_i / unit_ms``, with ``C_i`` the compute seconds spent on the
sentence before unit i was written and ``unit_ms`` the assumed arrival time of one source unit
(:func:`elapsed_from_compute`). ``AL_CA``, ``LAAL_CA``, ``YAAL_CA`` are AL, LAAL and YAAL on
``elapsed`` instead of ``delays``: exactly what ``simuleval --computation-aware`` (which refuses
text input) and OmniSTEval's ``ca_al``/``ca_laal``/``ca_yaal`` compute from these fields.
:data:`LATENCY_METRICS` registers every metric by name.

An empty hypothesis has no latency: :func:`score_instance` returns ``None`` and
:func:`corpus_latency` leaves it out of the means and counts it, as SimulEval skips it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Sequence

Number = float | int

METRICS: tuple[str, ...] = ("AL", "LAAL", "AP", "DAL", "YAAL", "AL_CA", "LAAL_CA", "YAAL_CA")


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


def yaal(delays: Sequence[Number], source_length: Number,
         reference_length: Number | None = None) -> float | None:
    """Yet Another Average Lagging (shortform, as OmniSTEval 0.1.10): ``None`` when the first
    unit is written with the whole source read (the instance is skipped)."""
    _check(delays, source_length, reference_length)
    if delays[0] >= source_length:
        return None
    gamma = max(len(delays), _target_length(delays, reference_length)) / source_length
    total, tau = 0.0, 0
    for t_minus_1, d in enumerate(delays):
        if d >= source_length:
            break
        total += d - t_minus_1 / gamma
        tau = t_minus_1 + 1
    return total / tau


def elapsed_from_compute(delays: Sequence[Number], compute_s: Sequence[float],
                         unit_ms: float) -> list[float]:
    """SimulEval's ``elapsed`` for text, in source units: ``d_i + 1000 · C_i / unit_ms``."""
    if len(delays) != len(compute_s):
        raise ValueError(f"{len(delays)} delays but {len(compute_s)} compute times")
    if not unit_ms > 0:
        raise ValueError(f"unit_ms must be positive, got {unit_ms!r}")
    return [d + c * 1000.0 / unit_ms for d, c in zip(delays, compute_s)]


LATENCY_METRICS: dict[str, Callable[..., float | None]] = {
    "AL": al, "LAAL": laal, "AP": ap, "YAAL": yaal,
    "DAL": lambda delays, source_length, reference_length=None: dal(delays, source_length),
}
"""Per-instance latency metrics by name: ``f(delays, source_length, reference_length)``; the
computation-aware ``X_CA`` is ``LATENCY_METRICS[X]`` applied to ``elapsed``."""


@dataclass(frozen=True)
class LatencyScores:
    """The latency metrics of one instance; YAAL is ``None`` where OmniSTEval skips the
    instance, the ``_CA`` ones where no ``elapsed`` was given."""

    AL: float
    LAAL: float
    AP: float
    DAL: float
    YAAL: float | None = None
    AL_CA: float | None = None
    LAAL_CA: float | None = None
    YAAL_CA: float | None = None

    def as_dict(self) -> dict[str, float | None]:
        return asdict(self)


def score_instance(delays: Sequence[Number], source_length: Number,
                   reference_length: Number | None = None,
                   elapsed: Sequence[Number] | None = None) -> LatencyScores | None:
    """Every metric of one instance; ``None`` for an empty hypothesis (no delays)."""
    if len(delays) == 0:
        return None
    ca: dict[str, float | None] = {}
    if elapsed is not None:
        if len(elapsed) != len(delays):
            raise ValueError(f"{len(elapsed)} elapsed values for {len(delays)} delays")
        ca = {f"{m}_CA": LATENCY_METRICS[m](elapsed, source_length, reference_length)
              for m in ("AL", "LAAL", "YAAL")}
    return LatencyScores(
        AL=al(delays, source_length, reference_length),
        LAAL=laal(delays, source_length, reference_length),
        AP=ap(delays, source_length, reference_length),
        DAL=dal(delays, source_length),
        YAAL=yaal(delays, source_length, reference_length),
        **ca,
    )


def corpus_latency(
        results: Iterable[LatencyScores | None]) -> tuple[dict[str, float | None], int, int]:
    """Corpus means over scored instances -> (means, scored, skipped_empty).

    ``None`` entries (empty hypotheses) are left out of the means and counted, as SimulEval
    skips instances without delays. A metric an instance has no value for (YAAL of a first write
    after the whole source, ``_CA`` without ``elapsed``) is left out of that metric's mean, as
    OmniSTEval does. With nothing to average a mean is ``None``.
    """
    values: dict[str, list[float]] = {m: [] for m in METRICS}
    scored = skipped = 0
    for res in results:
        if res is None:
            skipped += 1
            continue
        scored += 1
        for m in METRICS:
            v = getattr(res, m)
            if v is not None:
                values[m].append(v)
    # fsum: the mean does not depend on the order of instances (SimulEval's mean is exact too).
    means = {m: (math.fsum(values[m]) / len(values[m]) if values[m] else None) for m in METRICS}
    return means, scored, skipped


def shortform_degeneracy(instances: Iterable[tuple[Sequence[Number], Number, Number | None]]
                         ) -> dict[str, float | None]:
    """OmniSTEval's shortform degeneracy figures from (delays, source_length, reference_length)
    per instance (empty ones included): SWF, EFSW, DSPTV in percent and ``degenerate_policy``
    (1.0 when |DSPTV| > 20). ``None`` where OmniSTEval gives NaN."""
    simultaneous = words = 0
    efsw_num = efsw_den = 0.0
    for delays, source_length, ref_len in instances:
        simultaneous += sum(1 for d in delays if d < source_length)
        words += len(delays)
        y = yaal(delays, source_length, ref_len) if delays else None
        if y is not None:
            efsw_num += max(0.0, source_length - y)
            efsw_den += source_length
    if words == 0:
        return {"SWF": None, "EFSW": None, "DSPTV": None, "degenerate_policy": None}
    swf = 100.0 * simultaneous / words
    efsw = 100.0 * efsw_num / efsw_den if efsw_den > 0 else None
    dsptv = None if efsw is None else efsw - swf
    # as OmniSTEval: without an EFSW (no YAAL anywhere, e.g. offline) the flag is 0
    return {"SWF": swf, "EFSW": efsw, "DSPTV": dsptv,
            "degenerate_policy": float(dsptv is not None and abs(dsptv) > 20)}
