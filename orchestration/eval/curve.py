"""The scoreboard: how far every evaluated setting lies from the wait-k curve of the same model
on the same sentences, with a paired bootstrap 95% interval.

The wait-k settings, in order of k, form a piecewise-linear path on the (latency, quality)
plane. The curve's quality at latency x is the linear interpolation on a segment between two
neighbouring k whose latency interval contains x; the path need not be monotone in latency (a
small k that over-generates can sit at a higher LAAL than a larger k), so where several segments
contain x the highest interpolated quality is taken: the curve is what the best wait-k setting
reaches at that latency. Below the smallest or above the largest wait-k latency there is no
curve: the distance is ``None`` with ``outside`` "below" or "above", never an extrapolation.

distance = quality(point) − curve(latency(point)), for BLEU, chrF (and COMET when per-sentence
COMET scores are given) on LAAL and on AL. Corpus quality is sacrebleu's corpus BLEU and chrF
as ``launch.py score`` computes them (corpus COMET: the mean segment score); corpus latency the
mean over non-empty predictions, as :func:`reward.latency.corpus_latency` has it.

The interval resamples the sentences with replacement, one resample per replicate shared by the
point and every wait-k setting (the pairing: a hard sentence is hard for all of them, so its
weight moves both sides together), recomputes every corpus score and the distance, and takes the
2.5 and 97.5 percentiles. Replicates in which the point leaves the curve's range are counted
(``outside_share``) and left out. Corpus BLEU and chrF of a resample come from sacrebleu's
per-sentence sufficient statistics, summed with the resample's counts (sacrebleu's
``_extract_corpus_statistics`` and ``_compute_score_from_stats``: the same arithmetic its
``corpus_score`` does, without re-tokenizing per replicate). Pure functions, no Ray.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping, Sequence

import numpy as np

from orchestration.eval.score import ScoredInstance, length_ratio
from reward.latency import corpus_latency
from reward.text_metrics import Unit, bleu_tokenizer

LATENCIES = ("LAAL", "AL")
QUALITIES = ("BLEU", "chrF")        # COMET joins them when per-sentence COMET scores are given
INTERVAL = (2.5, 97.5)              # percentiles of the 95% interval
_BLOCK = 250                        # replicates whose resample counts are held at once


@dataclass(frozen=True)
class SettingStats:
    """One setting's per-sentence statistics, one row per sentence in index order."""

    bleu: np.ndarray                 # sacrebleu BLEU segment statistics (lengths, matches, totals)
    chrf: np.ndarray                 # sacrebleu chrF segment statistics (hyp, ref, match per order)
    latency: dict[str, np.ndarray]   # LAAL and AL per sentence; nan for an empty prediction
    comet: np.ndarray | None         # segment COMET scores, or None


def is_curve_params(params: dict[str, Any]) -> bool:
    """A point of the wait-k curve: wait-k in the prefix layout, with the prompt's own positions
    (ExPosST wait-k is another decoder, so it is scored against the curve instead)."""
    return (params.get("type") == "waitk" and params.get("layout", "prefix") == "prefix"
            and params.get("positions", "contiguous") == "contiguous")


@lru_cache(maxsize=4)
def _metrics(unit: Unit) -> tuple[Any, Any]:
    """sacrebleu's BLEU and chrF as :func:`orchestration.eval.score.summarize` configures them
    (built once per unit: the bootstrap asks for them per block of resamples)."""
    from sacrebleu.metrics import BLEU, CHRF

    return BLEU(tokenize=bleu_tokenizer(unit)), CHRF()


def setting_stats(instances: Sequence[ScoredInstance], unit: Unit,
                  comet: Sequence[float] | None = None) -> SettingStats:
    """Extract the sufficient statistics once, so each resample only sums rows."""
    if any(ins.reference is None for ins in instances):
        raise ValueError("the scoreboard needs a reference for every sentence")
    if comet is not None and len(comet) != len(instances):
        raise ValueError(f"{len(comet)} COMET scores for {len(instances)} sentences")
    hyps = [ins.prediction for ins in instances]
    refs = [[ins.reference or "" for ins in instances]]
    bleu, chrf = _metrics(unit)
    lat = {m: np.array([getattr(ins.scores, m) if ins.scores else np.nan for ins in instances], dtype=float)
           for m in LATENCIES}
    return SettingStats(np.array(bleu._extract_corpus_statistics(hyps, refs), dtype=np.int64),
                        np.array(chrf._extract_corpus_statistics(hyps, refs), dtype=np.int64),
                        lat, None if comet is None else np.asarray(comet, dtype=float))


def _from_summed(metric: Any, summed: np.ndarray) -> float:
    """sacrebleu's corpus score from summed statistics (Python ints, as its own sums are)."""
    return float(metric._compute_score_from_stats([int(v) for v in summed]).score)


def corpus_scores(instances: Sequence[ScoredInstance], stats: SettingStats, unit: Unit) -> dict[str, float | None]:
    """Quality and latency of the whole set: the numbers ``launch.py score`` reports."""
    bleu, chrf = _metrics(unit)
    out: dict[str, float | None] = {"BLEU": _from_summed(bleu, stats.bleu.sum(axis=0)),
                                    "chrF": _from_summed(chrf, stats.chrf.sum(axis=0))}
    if stats.comet is not None:
        out["COMET"] = math.fsum(stats.comet.tolist()) / len(stats.comet)
    means, _, _ = corpus_latency(ins.scores for ins in instances)
    out.update({m: means[m] for m in LATENCIES})
    return out


def resample_scores(stats: SettingStats, counts: np.ndarray, unit: Unit) -> dict[str, np.ndarray]:
    """Corpus quality and latency of each resample; ``counts[r, i]`` = copies of sentence i in
    resample r (a row of ones is the set itself)."""
    bleu, chrf = _metrics(unit)
    counts = np.asarray(counts, dtype=np.int64)
    out = {"BLEU": np.array([_from_summed(bleu, row) for row in counts @ stats.bleu]),
           "chrF": np.array([_from_summed(chrf, row) for row in counts @ stats.chrf])}
    if stats.comet is not None:
        out["COMET"] = (counts @ stats.comet) / counts.sum(axis=1)
    for m in LATENCIES:
        scored = ~np.isnan(stats.latency[m])
        weight = counts[:, scored].sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[m] = np.where(weight > 0, (counts[:, scored] @ stats.latency[m][scored]) / weight, np.nan)
    return out


def curve_at(latency: Any, quality: Any, x: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The curve's quality at ``x``: (value, segment, side), vectorised over rows.

    ``latency`` and ``quality`` hold the wait-k points in order of k (shape (m,) or (rows, m)),
    ``x`` one latency per row. ``segment`` i joins points i and i+1; where several segments
    contain x the highest interpolated quality wins (the best wait-k setting at that latency).
    ``side`` is -1 below the points' latency range, +1 above it, 0 inside; outside (or with an
    undefined latency) value is nan and segment -1: a curve is never extrapolated.
    """
    lat = np.atleast_2d(np.asarray(latency, dtype=float))
    qual = np.atleast_2d(np.asarray(quality, dtype=float))
    xs = np.atleast_1d(np.asarray(x, dtype=float))
    if lat.shape[1] < 2 or lat.shape != qual.shape:
        raise ValueError(f"a curve needs two or more points of equal shape, got {lat.shape} and {qual.shape}")
    x0, x1, y0, y1 = lat[:, :-1], lat[:, 1:], qual[:, :-1], qual[:, 1:]
    col = xs[:, None]
    inside = (np.minimum(x0, x1) <= col) & (col <= np.maximum(x0, x1))
    span = x1 - x0
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(span != 0, (col - x0) / span, 0.0)
    # (1 - t)·y0 + t·y1 is exactly y0 at t=0 and y1 at t=1: a point on a wait-k point sits on it
    value = np.where(span != 0, (1.0 - t) * y0 + t * y1, np.maximum(y0, y1))
    value = np.where(inside, value, -np.inf)
    segment = value.argmax(axis=1)
    best = value[np.arange(len(xs)), segment]
    side = np.where(xs < lat.min(axis=1), -1, np.where(xs > lat.max(axis=1), 1, 0))   # nan compares False
    undefined = np.isnan(xs) | np.isnan(lat).any(axis=1) | np.isnan(qual).any(axis=1) | ~np.isfinite(best)
    side = np.where(undefined & (side == 0), 2, side)
    ok = side == 0
    return np.where(ok, best, np.nan), np.where(ok, segment, -1), side


def _aligned(settings: Mapping[Any, Sequence[ScoredInstance]]) -> dict[Any, list[ScoredInstance]]:
    """Every setting's instances in one sentence order; the same sentences everywhere."""
    out, first = {}, None
    for name, instances in settings.items():
        by_index = {ins.index: ins for ins in instances}
        if len(by_index) != len(instances):
            raise ValueError(f"{name}: a sentence index occurs twice")
        if first is None:
            first = (name, set(by_index))
        elif set(by_index) != first[1]:
            odd = sorted(set(by_index) ^ first[1])[:5]
            raise ValueError(f"{name} and {first[0]} hold different sentences (index {odd} is in one only); "
                             "the scoreboard compares settings on the same sentences")
        out[name] = [by_index[i] for i in sorted(by_index)]
    return out


def _counts(rng: np.random.Generator, rows: int, n: int) -> np.ndarray:
    """``rows`` resamples of n sentences with replacement, as copies per sentence."""
    idx = rng.integers(0, n, size=(rows, n)) + (np.arange(rows) * n)[:, None]
    return np.bincount(idx.ravel(), minlength=rows * n).reshape(rows, n)


def _bootstrap(points: dict[str, SettingStats], curve: list[SettingStats], qualities: Sequence[str],
               unit: Unit, replicates: int, seed: int) -> dict[str, dict[tuple[str, str], np.ndarray]]:
    """Per point and (latency, quality): the distance in every replicate (nan when outside)."""
    rng = np.random.default_rng(seed)
    n = len(curve[0].latency["LAAL"])
    parts: dict[str, dict[tuple[str, str], list[np.ndarray]]] = {p: {} for p in points}
    for start in range(0, replicates, _BLOCK):
        counts = _counts(rng, min(_BLOCK, replicates - start), n)   # one resample for all settings
        wk = [resample_scores(s, counts, unit) for s in curve]
        for name, stats in points.items():
            pt = resample_scores(stats, counts, unit)
            for lat in LATENCIES:
                for q in qualities:
                    value, _, _ = curve_at(np.stack([w[lat] for w in wk], axis=1),
                                           np.stack([w[q] for w in wk], axis=1), pt[lat])
                    parts[name].setdefault((lat, q), []).append(pt[q] - value)
    return {p: {key: np.concatenate(v) for key, v in d.items()} for p, d in parts.items()}


SIDES = {-1: "below", 1: "above", 2: "undefined"}


def _distance(diff: float, curve_value: float, segment: int, ks: list[int], draws: np.ndarray) -> dict[str, Any]:
    """One cell of the scoreboard: the difference, its interval and the bracketing k values."""
    inside = draws[~np.isnan(draws)]
    low, high = (float(v) for v in np.percentile(inside, INTERVAL)) if inside.size else (None, None)
    return {"diff": diff, "curve": curve_value, "low": low, "high": high,
            "excludes_zero": low is not None and (low > 0 or high < 0),
            "outside_share": 1.0 - inside.size / draws.size, "n": int(inside.size),
            "bracket": [ks[segment], ks[segment + 1]]}


def scoreboard_report(points: Mapping[str, Sequence[ScoredInstance]], curve: Mapping[int, Sequence[ScoredInstance]],
                      unit: Unit, comet: Mapping[Any, Sequence[float]] | None = None,
                      replicates: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The wait-k curve (its points) and every point's distance to it, as one JSON-ready dict.

    ``points``: setting name -> instances; ``curve``: k -> instances of wait-k with that k, all on
    the same sentences (matched by ``index``). ``comet``, when given, maps every point name and
    every k to its per-sentence COMET scores in the order of that setting's instances. Raises
    ValueError with fewer than two wait-k settings, different sentences or missing references.
    """
    if len(curve) < 2:
        raise ValueError(f"the wait-k curve needs at least two k values, got {sorted(curve)}")
    if replicates < 1:
        raise ValueError(f"replicates must be at least 1, got {replicates}")
    ks = sorted(curve)
    keyed = _aligned({**{f"waitk k={k}": curve[k] for k in ks}, **{p: points[p] for p in points}})
    if not keyed[f"waitk k={ks[0]}"]:
        raise ValueError("the scoreboard needs at least one sentence")
    if comet is not None:
        missing = [key for key in [*ks, *points] if key not in comet]
        if missing:
            raise ValueError(f"COMET scores are missing for {missing}; give them for every setting or none")
        for key, ins in [*((k, curve[k]) for k in ks), *points.items()]:
            if len(comet[key]) != len(ins):
                raise ValueError(f"{key}: {len(comet[key])} COMET scores for {len(ins)} sentences")
        order = {key: sorted(range(len(ins)), key=lambda i, s=ins: s[i].index)
                 for key, ins in [*((k, curve[k]) for k in ks), *points.items()]}
        comet = {key: [comet[key][i] for i in order[key]] for key in order}
    qualities = [*QUALITIES, *(["COMET"] if comet is not None else [])]
    wk_ins = [keyed[f"waitk k={k}"] for k in ks]
    wk_stats = [setting_stats(ins, unit, comet[k] if comet else None) for k, ins in zip(ks, wk_ins)]
    wk_corpus = [corpus_scores(ins, st, unit) for ins, st in zip(wk_ins, wk_stats)]
    for k, c in zip(ks, wk_corpus):
        if any(c[m] is None for m in LATENCIES):
            raise ValueError(f"wait-k k={k}: every prediction is empty, so it has no latency on the curve")
    pt_stats = {p: setting_stats(keyed[p], unit, comet[p] if comet else None) for p in points}
    draws = _bootstrap(pt_stats, wk_stats, qualities, unit, replicates, seed) if points else {}
    rows = []
    for p, stats in pt_stats.items():
        own = corpus_scores(keyed[p], stats, unit)
        dist: dict[str, dict[str, Any]] = {}
        for lat in LATENCIES:
            dist[lat] = {}
            for q in qualities:
                x = np.nan if own[lat] is None else own[lat]
                value, segment, side = curve_at([c[lat] for c in wk_corpus], [c[q] for c in wk_corpus], x)
                if side[0] != 0:
                    dist[lat][q] = {"diff": None, "outside": SIDES[int(side[0])]}
                else:
                    dist[lat][q] = _distance(own[q] - float(value[0]), float(value[0]), int(segment[0]), ks,
                                             draws[p][(lat, q)])
        waits = [ins.recorded.get("wait_share") for ins in keyed[p]]
        rows.append({"setting": p, "quality": {q: own[q] for q in qualities},
                     "latency": {m: own[m] for m in LATENCIES}, "distance": dist,
                     "length_ratio": length_ratio(keyed[p]),
                     "wait_share": None if None in waits else float(np.mean(waits)),
                     "curve_ks": ks, "replicates": replicates})
    return {"curve": [{"k": k, "quality": {q: c[q] for q in qualities}, "latency": {m: c[m] for m in LATENCIES}}
                      for k, c in zip(ks, wk_corpus)],
            "points": rows, "sentences": len(wk_ins[0]), "replicates": replicates, "seed": seed,
            "interval": "paired bootstrap 95% over sentences (percentiles 2.5, 97.5)"}


def scoreboard(points: Mapping[str, Sequence[ScoredInstance]], curve: Mapping[int, Sequence[ScoredInstance]],
               unit: Unit, comet: Mapping[Any, Sequence[float]] | None = None,
               replicates: int = 1000, seed: int = 0) -> list[dict[str, Any]]:
    """One dict per point: its quality, latency and distance to the wait-k curve (see the module)."""
    return scoreboard_report(points, curve, unit, comet, replicates, seed)["points"]


# --- console table ---------------------------------------------------------------------------


def _cell(d: dict[str, Any]) -> str:
    """``+1.20 [-0.30, +2.60] *``, or where the point lies outside the curve's latency range."""
    if d.get("diff") is None:
        return {"below": "below range", "above": "above range"}.get(d.get("outside"), "no latency")
    if d["low"] is None:
        return f"{d['diff']:+.2f} [no interval]"
    text = f"{d['diff']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]" + (" *" if d["excludes_zero"] else "")
    return text + (f" ({d['outside_share']:.0%} out)" if d["outside_share"] > 0 else "")


def format_scoreboard(report: Mapping[str, Any]) -> str:
    """One row per point: every quality's distance to the curve at LAAL, then at AL."""
    rows = report["points"]
    if not rows:
        return "scoreboard: no setting besides wait-k to score"
    qualities = list(rows[0]["quality"])
    cols = [(lat, q) for lat in LATENCIES for q in qualities]
    header = ["setting", "BLEU", "LAAL", "len", "wait", *(f"{q}-curve@{lat}" for lat, q in cols)]

    def num(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    body = [[r["setting"], num(r["quality"].get("BLEU"), ".2f"), num(r["latency"].get("LAAL"), ".2f"),
             num(r.get("length_ratio"), ".2f"), num(r.get("wait_share"), ".2f"),
             *(_cell(r["distance"][lat][q]) for lat, q in cols)] for r in rows]
    widths = [max(len(row[i]) for row in [header] + body) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header] + body]
    ks = ", ".join(str(c["k"]) for c in report["curve"])
    lines.append(f"distance = quality - the wait-k curve (k = {ks}) at the same latency; "
                 f"[paired bootstrap 95%, {report['sentences']} sentences, {report['replicates']} resamples]; "
                 "* = the interval excludes 0; out = resamples outside the curve's range, left out")
    return "\n".join(lines)
