"""Per-sentence results of a dev evaluation as SimulEval-style instances, and the paired
before/after comparison over them.

``dev/<tag>/instances.jsonl`` in the run directory holds one JSON line per dev sentence:
SimulEval's ``index``, ``source_length``, ``delays``, ``prediction``, ``reference`` plus that
sentence's ``quality``, ``AL``, ``LAAL`` (None for an empty hypothesis), ``wait_share`` (share of
the non-final turns left empty), ``length_ratio`` (hypothesis/reference units) and the dev
``reward`` (``reward.dev_reward``: the same yardstick for every run, whatever its reward
settings), so anyone can recompute the intervals (``orchestration.eval.paired_ci``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

# metrics of the before/after table, in its order, with their labels
PAIRED_METRICS = {"reward": "dev reward", "quality": "quality", "AL": "AL", "LAAL": "LAAL",
                  "wait_share": "wait share", "length_ratio": "length ratio"}


def sentence_records(sources: Sequence, trajs: Sequence[dict[str, Any]], scores: Sequence[float],
                     scale: float, unit: str) -> list[dict[str, Any]]:
    """One record per greedy dev trajectory (B=1, in the order of ``sources``); ``scores`` and
    ``scale`` come from the run's quality scorer, nothing else from the run's settings."""
    from orchestration.training.trajectories import wait_share
    from reward.dev_reward import dev_latency, dev_reward
    from reward.latency import al, laal
    from reward.text_metrics import reference_length

    rows = []
    for s, t, q in zip(sources, trajs, scores):
        ref_len = reference_length(s.reference, unit) if s.reference else None
        delays = list(t["delays"])
        a = al(delays, t["source_length"], ref_len) if delays else None
        la = laal(delays, t["source_length"], ref_len) if delays else None
        rows.append({
            "index": s.index, "source": s.text, "source_length": t["source_length"], "delays": delays,
            "prediction": t["hypothesis"], "reference": s.reference,
            "quality": q, "AL": a, "LAAL": la,
            "wait_share": wait_share([t]),
            "length_ratio": len(delays) / ref_len if ref_len else None,
            "reward": dev_reward(q, dev_latency(delays, t["source_length"], ref_len),
                                 source_length=t["source_length"], quality_scale=scale),
            "empty": not delays,
        })
    return rows


def write_instances(run_dir: Path, tag: str, rows: Sequence[dict[str, Any]]) -> Path:
    """``dev/<tag>/instances.jsonl``, written atomically (temp then rename)."""
    out = Path(run_dir) / "dev" / tag / "instances.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, out)
    return out


def read_instances(path: Path) -> list[dict[str, Any]]:
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def compare_dev(run_dir: Path, before: str = "before", after: str = "after", seed: int = 0):
    """The paired report of two dev evaluations of a run, or None when either is missing."""
    from orchestration.eval.paired_ci import paired_report

    paths = [Path(run_dir) / "dev" / tag / "instances.jsonl" for tag in (before, after)]
    if not all(p.is_file() for p in paths):
        return None
    return paired_report(read_instances(paths[0]), read_instances(paths[1]), list(PAIRED_METRICS), seed=seed)


def paired_table(paired: dict) -> str:
    from orchestration.eval.paired_ci import format_table

    return format_table(paired, PAIRED_METRICS)


def summary_table(history: dict[str, Any]) -> str:
    rows = [("dev reward", "reward"), ("quality", "quality"), ("AL", "AL"), ("LAAL", "LAAL")]
    before, after = history.get("before", {}), history.get("after", {})
    lines = [f"{'':12} {'before':>10} {'after':>10}"]
    for label, key in rows:
        b, a = before.get(key), after.get(key)
        lines.append(f"{label:12} {b if b is None else f'{b:10.3f}':>10} {a if a is None else f'{a:10.3f}':>10}")
    return "\n".join(lines)
