"""The quality-latency plot (``curves.png``) and the console table of an eval run."""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

from orchestration.runtime import save_figure_atomic

COLUMNS = ("BLEU", "chrF", "COMET", "AL", "LAAL", "YAAL", "AP", "DAL", "AL_CA", "YAAL_CA", "SWF")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.2f}"
    return "-" if value is None else str(value)


def summary_table(rows: Sequence[dict[str, Any]]) -> str:
    """One line per setting: quality, latency, empty predictions, seconds."""
    rows = [dict(r, SWF=(r.get("degeneracy") or {}).get("SWF")) for r in rows]
    cols = [c for c in COLUMNS if any(r.get(c) is not None for r in rows)]
    header = ["setting", *cols, "empty", "seconds"]
    body = [[r["setting"], *(_fmt(r.get(c)) for c in cols), str(r.get("skipped_empty", 0)),
             f"{r.get('stats', {}).get('wall_s', 0.0):.0f}"] for r in rows]
    widths = [max(len(row[i]) for row in [header] + body) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in
                       enumerate(zip(row, widths))) for row in [header] + body]
    return "\n".join(lines)


def plot_quality_latency(rows: Sequence[dict[str, Any]], out: Path, quality: str = "BLEU",
                         title: str = "") -> Path | None:
    """Quality against AL, one line per policy (points sorted by AL, labelled by setting)."""
    pts = [r for r in rows if isinstance(r.get(quality), (int, float)) and isinstance(r.get("AL"), (int, float))]
    if not pts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
    for r in pts:
        lines.setdefault(r["line"], []).append(r)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name, group in lines.items():
        group = sorted(group, key=lambda r: r["AL"])
        style = "*" if len(group) == 1 else "o-"
        ax.plot([r["AL"] for r in group], [r[quality] for r in group], style, label=name,
                markersize=9 if len(group) == 1 else 5)
        for r in group:
            ax.annotate(r["setting"].replace(f"{r['policy']}-", ""), (r["AL"], r[quality]),
                        textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("AL (source units)")
    ax.set_ylabel(quality)
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure_atomic(fig, out)
