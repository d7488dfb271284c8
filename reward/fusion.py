"""SeqPO's fused group reward (DESIGN §2.2) as plain functions: no Ray, no model.

For the B trajectories of one source:

- q_i: raw quality from the configured scorer; l_i: raw AL or LAAL (SimulEval semantics,
  ``reward.latency``) from the trajectory's delays, with |Y| the reference length in target
  units (characters for Chinese targets, else words);
- truncation against the over-generation hack (a long hypothesis written early drives AL
  down, even below zero): ``raw`` l'_i = max(l_i, m) with m the chunk size, before
  standardising; ``normalized`` max(z(l)_i, c) after; ``none`` no truncation (ablation);
- r_i = λ·z(q)_i − z(l')_i (``fused``), z(q)_i (``quality_only``) or −z(l')_i
  (``latency_only``).

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
  and wrote nothing.
"""
from __future__ import annotations

import math
from typing import Sequence

from reward.latency import al, laal
from reward.text_metrics import count_units, reference_length
from reward.types import (
    GroupReward, LatencyMetric, Mode, RewardInput, ScorerInfo, TrajectoryReward, Truncate)

# A std this small relative to the values is rounding noise, not a difference between them.
STD_EPS = 1e-9
LATENCY_METRICS = {"al": al, "laal": laal}
TRUNCATE_MODES: tuple[str, ...] = ("raw", "normalized", "none")
MODES: tuple[str, ...] = ("fused", "quality_only", "latency_only")


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


def raw_latency(item: RewardInput, metric: LatencyMetric = "al") -> float | None:
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


def fuse_group(qualities: Sequence[float | None], latencies: Sequence[float | None], *,
               chunk_size: float, source_length: float, lam: float = 2.0,
               truncate: Truncate = "raw", truncate_c: float = -1.0, mode: Mode = "fused",
               scorer: ScorerInfo = ScorerInfo("unknown")) -> GroupReward:
    """Fuse one group's raw scores into rewards; ``latencies[i] is None`` marks an empty hypothesis.

    ``qualities[i]`` of an empty hypothesis is ignored (it may be ``None``); the rules for
    empty hypotheses are in the module docstring.
    """
    if len(qualities) != len(latencies):
        raise ValueError(f"{len(qualities)} qualities but {len(latencies)} latencies")
    if truncate not in TRUNCATE_MODES:
        raise ValueError(f"unknown truncate mode {truncate!r}; expected one of {', '.join(TRUNCATE_MODES)}")
    if mode not in MODES:
        raise ValueError(f"unknown reward mode {mode!r}; expected one of {', '.join(MODES)}")
    empty = [lat is None for lat in latencies]
    scored_q = [float(q) for q, e in zip(qualities, empty) if not e and q is not None]
    if len(scored_q) != empty.count(False):
        raise ValueError("every non-empty hypothesis needs a quality score")
    scored_l = [float(lat) for lat in latencies if lat is not None]

    q_empty = min([0.0] + scored_q)
    l_empty = max([float(source_length)] + scored_l)
    q = [q_empty if e else float(v) for v, e in zip(qualities, empty)]
    lat = [l_empty if v is None else float(v) for v in latencies]

    if truncate == "raw":
        l_used = [max(v, float(chunk_size)) for v in lat]
        z_l = zscores(l_used)
    elif truncate == "none":
        l_used = lat
        z_l = zscores(l_used)
    else:
        l_used = lat
        z_l = [max(z, truncate_c) for z in zscores(lat)]
    z_q = zscores(q)

    if mode == "fused":
        rewards = [lam * a - b for a, b in zip(z_q, z_l)]
    elif mode == "quality_only":
        rewards = list(z_q)
    else:
        rewards = [-b for b in z_l]
    trajectories = [
        TrajectoryReward(quality=q[i], latency=None if empty[i] else lat[i],
                         latency_truncated=l_used[i], z_quality=z_q[i], z_latency=z_l[i],
                         reward=rewards[i] + 0.0,  # + 0.0 turns -0.0 into 0.0 in logs
                         empty=empty[i])
        for i in range(len(q))]
    return GroupReward(trajectories=trajectories, scorer=scorer)
