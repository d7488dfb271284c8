"""Paired bootstrap confidence intervals of a before/after difference of per-sentence metrics.

It lives in ``orchestration/`` rather than ``reward/``: it is no rule of the reward or of any
metric, only a way of comparing two evaluations of the same sentences (dev before and after
training, two runs of a sweep), which is the driver's business. Pure functions, no Ray.

The interval is the percentile interval of the mean difference over resamples of the
sentences (the same resampled indices for both sides: the pairing is what makes it tight).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence


@dataclass(frozen=True)
class PairedCI:
    """Mean before, mean after, their mean difference (after - before) and its interval."""

    before: float
    after: float
    diff: float
    low: float
    high: float
    n: int
    confidence: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0.0 or self.high < 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "excludes_zero": self.excludes_zero}


def _usable(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def paired_bootstrap_ci(before: Sequence[float | None], after: Sequence[float | None], *,
                        n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> PairedCI:
    """Percentile bootstrap interval of mean(after - before) over paired sentences.

    ``before[i]`` and ``after[i]`` are the same sentence's metric; a pair where either side is
    missing (None or not finite, e.g. the latency of an empty hypothesis) is left out, and ``n``
    counts the pairs used. Deterministic for a given ``seed``.
    """
    if len(before) != len(after):
        raise ValueError(f"paired metrics need equal lengths, got {len(before)} before and {len(after)} after")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    pairs = [(b, a) for b, a in zip(before, after) if _usable(b) and _usable(a)]
    n = len(pairs)
    if n == 0:
        nan = float("nan")
        return PairedCI(nan, nan, nan, nan, nan, 0, confidence)
    diffs = [a - b for b, a in pairs]
    mean_b = math.fsum(b for b, _ in pairs) / n
    mean_a = math.fsum(a for _, a in pairs) / n
    diff = math.fsum(diffs) / n
    import numpy as np

    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    means = np.asarray(diffs, dtype=np.float64)[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return PairedCI(mean_b, mean_a, diff, float(low), float(high), n, confidence)


def paired_report(before: Sequence[dict], after: Sequence[dict], metrics: Sequence[str], *,
                  key: str = "index", n_boot: int = 2000, confidence: float = 0.95,
                  seed: int = 0) -> dict[str, PairedCI]:
    """Intervals for several metrics of two lists of per-sentence records, paired by ``key``.

    Both lists must hold the same sentences (the same set of ``key`` values, once each)."""
    def by_key(rows: Sequence[dict], side: str) -> dict:
        out = {}
        for r in rows:
            if r[key] in out:
                raise ValueError(f"{side}: sentence {key}={r[key]!r} occurs twice")
            out[r[key]] = r
        return out

    b, a = by_key(before, "before"), by_key(after, "after")
    if set(b) != set(a):
        raise ValueError(f"before and after hold different sentences ({len(set(b) ^ set(a))} not in both)")
    keys = sorted(b)
    return {m: paired_bootstrap_ci([b[k].get(m) for k in keys], [a[k].get(m) for k in keys],
                                   n_boot=n_boot, confidence=confidence, seed=seed)
            for m in metrics}


def format_table(report: dict[str, PairedCI], labels: dict[str, str] | None = None) -> str:
    """Console table: before, after, the difference and its interval, one metric per row."""
    labels = labels or {}
    conf = next(iter(report.values())).confidence if report else 0.95
    head = f"{'':14} {'before':>10} {'after':>10} {'after-before':>13}  {int(round(conf * 100))}% interval"
    lines = [head]
    for m, ci in report.items():
        mark = " *" if ci.excludes_zero else ""
        lines.append(f"{labels.get(m, m):14} {ci.before:10.3f} {ci.after:10.3f} {ci.diff:+13.3f}  "
                     f"[{ci.low:+.3f}, {ci.high:+.3f}]{mark}")
    n = sorted({ci.n for ci in report.values()})
    lines.append(f"paired sentences: {', '.join(map(str, n))}; * = the interval excludes 0")
    return "\n".join(lines)
