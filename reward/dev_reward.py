"""The dev reward: one number per greedy translation, a fixed yardstick for every run.

The training reward (``reward.fusion``) z-scores quality and latency within a group, so it
ranks the B samples of one source and means nothing across sources; and its settings (λ, the
latency metric, the floor, the mode) are what a sweep varies. Model selection needs an
absolute number that no run setting changes, so that the runs of a λ or latency-metric sweep
are compared on one scale. It is defined here once, by the constants below, and used by
``train``, ``sft`` and ``eval``:

    r_dev = DEV_LAMBDA · q / Q  −  max(LAAL, DEV_FLOOR) / |X|      (DEV_LAMBDA = 2, DEV_FLOOR = 0)

- q: the sentence's quality from the run's scorer, Q the top of that scorer's scale
  (``ScorerInfo.scale``: 100 for chrF and BLEU, 1 for COMET), so q / Q is in [0, 1] for every
  scorer. Runs with different scorers are compared on their quality columns, not on r_dev;
- LAAL (SimulEval semantics, |Y| = max(|hyp|, |ref|), source units): unlike AL it does not
  count written units against the reference length, so writing more, earlier, cannot buy a
  lower lag the way it does with AL;
- no floor above zero: every unit of lag costs what it costs (a floor at the chunk size, as
  the training reward's ``truncate: raw`` once used, made running ahead tie with one chunk of
  honest waiting). Only lags below 0 are cut: a negative LAAL means writing ahead of the
  source, which earns nothing over writing in step with it;
- the latency is divided by the source length |X| so long sentences do not dominate;
- λ = 2 is the training reward's default weight, so quality counts twice a lag of the whole
  source: a policy that translates offline (LAAL = |X|) needs half a scale more quality than
  one with no lag;
- an empty translation (no latency: it wrote nothing) gets the latency term 1, as late as an
  offline translation, and its quality as scored.
"""
from __future__ import annotations

from typing import Sequence

# the yardstick: the same for every run, never taken from the run's reward settings
DEV_LAMBDA = 2.0
DEV_LATENCY = "laal"
DEV_FLOOR = 0.0


def dev_latency(delays: Sequence[float], source_length: float, reference_length: float | None) -> float | None:
    """The dev reward's latency (``DEV_LATENCY``) of one translation; ``None`` when it is empty."""
    from reward.latency import LATENCY_METRICS

    if not delays:
        return None
    return float(LATENCY_METRICS[DEV_LATENCY.upper()](list(delays), source_length, reference_length))


def dev_reward(quality: float, latency: float | None, *, source_length: float, quality_scale: float) -> float:
    """DEV_LAMBDA·q/Q − max(l, DEV_FLOOR)/|X| with l = ``dev_latency``; ``latency=None`` marks an
    empty translation (latency term 1)."""
    if source_length <= 0 or quality_scale <= 0:
        raise ValueError(f"source_length and quality_scale must be positive, got {source_length}, {quality_scale}")
    lag = 1.0 if latency is None else max(float(latency), DEV_FLOOR) / source_length
    return DEV_LAMBDA * float(quality) / quality_scale - lag
