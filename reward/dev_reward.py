"""The dev reward: one number per greedy translation, comparable across steps and runs.

The training reward (``reward.fusion``) z-scores quality and latency within a group, so it
ranks the B samples of one source and means nothing across sources. Evaluation needs an
absolute number instead, defined here once and used by ``train``, ``sft`` and ``eval``:

    r = λ · q / Q  −  max(l, m) / |X|

- q: the sentence's quality on the scorer's scale, Q that scale's top (``ScorerInfo.scale``:
  100 for chrF and BLEU, 1 for COMET), so q / Q is in [0, 1] for every scorer;
- l: its AL (or LAAL, SimulEval semantics) in target units, floored at the chunk size m as the
  training reward's ``truncate: raw`` does (writing the whole translation early is not better
  than one chunk of lag), and divided by the source length |X| so long sentences do not dominate;
- an empty translation (no latency: it wrote nothing) gets the latency term 1, as late as an
  offline translation, and its quality as scored.
"""
from __future__ import annotations


def dev_reward(quality: float, latency: float | None, *, source_length: float, chunk_size: float,
               lam: float, quality_scale: float) -> float:
    """λ·q/Q − max(l, m)/|X|; ``latency=None`` marks an empty translation (latency term 1)."""
    if source_length <= 0 or quality_scale <= 0:
        raise ValueError(f"source_length and quality_scale must be positive, got {source_length}, {quality_scale}")
    lag = 1.0 if latency is None else max(float(latency), float(chunk_size)) / source_length
    return lam * float(quality) / quality_scale - lag
