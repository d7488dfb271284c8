"""SeqPO's fused group reward (DESIGN §2.2) and HPO's quality-gated variant, as plain
functions: no Ray, no model.

For the B trajectories of one source:

- q_i: raw quality from the configured scorer; l_i: raw LAAL (default) or AL (SimulEval
  semantics, ``reward.latency``) from the trajectory's delays, in source units, with |Y| the
  reference length in target units (characters for Chinese targets, else words). AL counts the
  written units against the reference length, so writing more, earlier, lowers it (even below
  zero); LAAL uses |Y| = max(|hyp|, |ref|), which over-generation does not shrink;
- truncation against that over-generation hack: ``raw`` l'_i = max(l_i, F) before
  standardising, with F = ``latency_floor`` in source units (default 4.0, near a real target
  lag: one chunk of honest waiting already gives a lag of about 5, so a floor at the chunk size
  m = 3 let running ahead tie with honest lag and penalised waiting); ``latency_floor=None``
  uses F = m, **the published SeqPO truncation**; ``normalized`` max(z(l)_i, c) after; ``none``
  no truncation (ablation);
- ``fused``: r_i = λ·z(q)_i − z(l')_i; ``quality_only``: z(q)_i; ``latency_only``: −z(l')_i;
- ``gated`` (HPO's quality-gated fusion, after the ``target_quality`` hinge of owaski/HPO,
  "Hierarchical Policy Optimization for Simultaneous Translation of Unbounded Speech", applied
  per sentence): h_i = min(0, l'_i − L_max) if q_i ≥ T else 0, r_i = λ·z(q)_i − z(h)_i, with
  T = ``quality_threshold`` (scorer units) and L_max = ``max_latency`` (source units). Latency
  earns credit only once quality clears the threshold, and only for lag below L_max; a
  trajectory below the threshold gets the worst latency term, h = 0. With ``normalized`` the
  latency z is floored as in ``fused`` (max(z(h), c)).

z-scores use the group mean and the *sample* standard deviation (ddof=1), the convention of
the GRPO advantages in ``learner/grpo.py``; one convention for both standardisations keeps λ
meaning the same thing in both places. A group of one, or a group whose values are all equal
(std below ``STD_EPS`` relative to the values), gets z = 0: never NaN.

An empty hypothesis (the policy wrote nothing) has no quality or latency score of its own:

- quality: ``min(0, lowest quality of the group's non-empty members)``. That is 0 for chrF and
  BLEU (the bottom of their scale) and for COMET unless a member scored below 0, so an empty
  hypothesis is never of higher quality than any real one. It is not sent to the scorer
  (COMET gives empty strings arbitrary, sometimes high scores).
- latency: no raw score (``latency=None``); its latency term uses
  ``max(|X|, highest raw latency of the group's non-empty members)``: at least as late as the
  slowest member and as an offline translation (AL = |X|), since it read the whole source
  and wrote nothing. In ``gated`` mode its hinge is h = 0 (no latency credit).

A degenerate hypothesis (``length_gate`` = (lo, hi): a non-empty hypothesis whose length
ratio |hyp| / |ref| in target units is below lo or above hi, e.g. a translation repeated to
twice its length) is scored like an empty one: the same quality floor, the same worst latency
stand-in (its raw latency is kept in ``latency`` for the logs), h = 0, and ``gated=True``.
"""
from __future__ import annotations

import math
from typing import Sequence

from reward.latency import al, laal
from reward.text_metrics import count_units, reference_length
from reward.types import (
    GroupReward, LatencyMetric, Mode, RewardInput, RewardSettings, ScorerInfo, TrajectoryReward,
    Truncate)

# A std this small relative to the values is rounding noise, not a difference between them.
STD_EPS = 1e-9
LATENCY_METRICS = {"al": al, "laal": laal}
TRUNCATE_MODES: tuple[str, ...] = ("raw", "normalized", "none")
MODES: tuple[str, ...] = ("fused", "gated", "quality_only", "latency_only")
_DEFAULTS = RewardSettings()


def zscores(values: Sequence[float]) -> list[float]:
    """(v - mean) / sample std within the group; all zeros for n < 2 or (near-)zero std."""
    n = len(values)
    if any(not math.isfinite(v) for v in values):
        raise ValueError(f"z-scores of non-finite values: {list(values)}")
    if n < 2:
        return [0.0] * n
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    if std <= STD_EPS * max(1.0, max(abs(v) for v in values)):
        return [0.0] * n
    return [(v - mean) / std for v in values]


def raw_latency(item: RewardInput, metric: LatencyMetric = _DEFAULTS.latency_metric) -> float | None:
    """AL or LAAL of one trajectory in target units; ``None`` for an empty hypothesis."""
    if metric not in LATENCY_METRICS:
        raise ValueError(f"unknown latency metric {metric!r}; expected one of {', '.join(LATENCY_METRICS)}")
    unit = item.unit
    units = count_units(item.hypothesis, unit)
    if units != len(item.delays):
        # One delay per written unit is the contract with the rollout; anything else is a bug.
        raise ValueError(f"{len(item.delays)} delays for a hypothesis of {units} {unit} unit(s)")
    if units == 0:
        return None
    ref_len = reference_length(item.reference, unit)
    if ref_len <= 0:
        raise ValueError("the reference is empty; latency needs a reference length")
    return LATENCY_METRICS[metric](list(item.delays), item.source_length, ref_len)


def length_ratio(item: RewardInput) -> float | None:
    """|hyp| / |ref| in target units (the latency units); ``None`` for an empty hypothesis."""
    units = count_units(item.hypothesis, item.unit)
    if units == 0:
        return None
    ref_len = reference_length(item.reference, item.unit)
    if ref_len <= 0:
        raise ValueError("the reference is empty; the length gate needs a reference length")
    return units / ref_len


def outside_gate(ratio: float | None, gate: tuple[float, float] | None) -> bool:
    """True for a non-empty hypothesis whose length ratio lies outside ``gate`` = (lo, hi)."""
    if ratio is None or gate is None:
        return False
    lo, hi = gate
    return not lo <= ratio <= hi


def hinge(quality: float, latency: float, *, quality_threshold: float, max_latency: float) -> float:
    """HPO's gated latency term h = min(0, l − L_max) when q ≥ T, else 0 (lower is better)."""
    return min(0.0, latency - max_latency) if quality >= quality_threshold else 0.0


def fuse_group(qualities: Sequence[float | None], latencies: Sequence[float | None], *,
               chunk_size: float, source_length: float, lam: float = _DEFAULTS.lam,
               truncate: Truncate = _DEFAULTS.truncate, truncate_c: float = _DEFAULTS.truncate_c,
               latency_floor: float | None = _DEFAULTS.latency_floor, mode: Mode = _DEFAULTS.mode,
               length_ratios: Sequence[float | None] | None = None,
               length_gate: tuple[float, float] | None = _DEFAULTS.length_gate,
               quality_threshold: float | None = _DEFAULTS.quality_threshold,
               max_latency: float = _DEFAULTS.max_latency,
               scorer: ScorerInfo = ScorerInfo("unknown")) -> GroupReward:
    """Fuse one group's raw scores into rewards; ``latencies[i] is None`` marks an empty hypothesis.

    ``qualities[i]`` of an empty hypothesis is ignored (it may be ``None``);
    ``length_ratios[i]`` (``length_ratio``) feeds the length gate, and without them no member
    is gated. The rules for empty and degenerate hypotheses are in the module docstring.
    Defaults are those of ``RewardSettings``.
    """
    n = len(qualities)
    if len(latencies) != n:
        raise ValueError(f"{n} qualities but {len(latencies)} latencies")
    if length_ratios is not None and len(length_ratios) != n:
        raise ValueError(f"{n} qualities but {len(length_ratios)} length ratios")
    if truncate not in TRUNCATE_MODES:
        raise ValueError(f"unknown truncate mode {truncate!r}; expected one of {', '.join(TRUNCATE_MODES)}")
    if mode not in MODES:
        raise ValueError(f"unknown reward mode {mode!r}; expected one of {', '.join(MODES)}")
    if mode == "gated" and quality_threshold is None:
        raise ValueError("reward mode 'gated' needs a quality_threshold")
    if length_gate is not None and not length_gate[0] < length_gate[1]:
        raise ValueError(f"length_gate {tuple(length_gate)}: needs lo < hi")
    empty = [lat is None for lat in latencies]
    scored_q = [float(q) for q, e in zip(qualities, empty) if not e and q is not None]
    if len(scored_q) != empty.count(False):
        raise ValueError("every non-empty hypothesis needs a quality score")
    scored_l = [float(lat) for lat in latencies if lat is not None]
    ratios = list(length_ratios) if length_ratios is not None else [None] * n
    gated = [not e and outside_gate(r, length_gate) for e, r in zip(empty, ratios)]

    q_floor = min([0.0] + scored_q)
    l_worst = max([float(source_length)] + scored_l)
    out = [e or g for e, g in zip(empty, gated)]   # scored as "wrote nothing usable"
    q = [q_floor if o else float(v) for v, o in zip(qualities, out)]
    lat = [l_worst if o else float(v) for v, o in zip(latencies, out)]

    if truncate == "raw":
        floor = float(chunk_size) if latency_floor is None else float(latency_floor)
        l_used = [max(v, floor) for v in lat]
    else:
        l_used = lat
    if mode == "gated":
        term = [0.0 if o else hinge(a, b, quality_threshold=quality_threshold, max_latency=max_latency)
                for a, b, o in zip(q, l_used, out)]
    else:
        term = l_used
    z_l = zscores(term)
    if truncate == "normalized":
        z_l = [max(z, truncate_c) for z in z_l]
    z_q = zscores(q)

    if mode in ("fused", "gated"):
        rewards = [lam * a - b for a, b in zip(z_q, z_l)]
    elif mode == "quality_only":
        rewards = list(z_q)
    else:
        rewards = [-b for b in z_l]
    trajectories = [
        TrajectoryReward(quality=q[i], latency=None if empty[i] else float(latencies[i]),
                         latency_truncated=l_used[i], z_quality=z_q[i], z_latency=z_l[i],
                         reward=rewards[i] + 0.0,  # + 0.0 turns -0.0 into 0.0 in logs
                         empty=empty[i], gated=gated[i], latency_term=term[i])
        for i in range(n)]
    return GroupReward(trajectories=trajectories, scorer=scorer)
