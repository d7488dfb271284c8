"""The quality-latency plot (``curves.png``: the wait-k curve, every other setting's distance to it)
and the console table of an eval run."""
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


def _signed(value: float) -> str:
    """``+1.2`` / ``−0.3`` (a typographic minus, as on the plot's axes)."""
    return f"{value:+.1f}".replace("-", "\u2212")


def distance_label(cell: dict[str, Any] | None) -> str:
    """A point's distance to the curve as the plot writes it: ``+1.2 [−0.3, +2.6]``."""
    if not cell:
        return ""
    if cell.get("diff") is None:
        return {"below": "below curve range", "above": "above curve range"}.get(cell.get("outside"), "")
    if cell.get("low") is None:
        return _signed(cell["diff"])
    mark = " *" if cell.get("excludes_zero") else ""
    return f"{_signed(cell['diff'])} [{_signed(cell['low'])}, {_signed(cell['high'])}]{mark}"


# label offsets tried in turn (points; horizontal, vertical alignment): the first that overlaps
# no marker, no earlier label and no stretch of the curve is taken
_OFFSETS = ((7, -2, "left", "top"), (7, 2, "left", "bottom"), (-7, -2, "right", "top"),
            (-7, 2, "right", "bottom"), (0, -9, "center", "top"), (0, 9, "center", "bottom"),
            (14, -16, "left", "top"), (-14, 16, "right", "bottom"), (14, 16, "left", "bottom"),
            (-14, -16, "right", "top"))


def _place_labels(fig: Any, ax: Any, labels: list[tuple[float, float, str, str]],
                  obstacles: list[tuple[float, float]]) -> None:
    """Write each label beside its point where it hides nothing else: marker, label or curve
    (greedy over :data:`_OFFSETS`; the first offset when every one collides)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    taken = [(px - 4, py - 4, px + 4, py + 4) for px, py in (ax.transData.transform(o) for o in obstacles)]
    for x, y, text, color in labels:
        best = None
        for dx, dy, ha, va in _OFFSETS:
            ann = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), ha=ha, va=va,
                              fontsize=7, color=color, zorder=4,
                              bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.75})
            bb = ann.get_window_extent(renderer)
            box = (bb.x0, bb.y0, bb.x1, bb.y1)
            free = frame.x0 <= bb.x0 and bb.x1 <= frame.x1 and frame.y0 <= bb.y0 and bb.y1 <= frame.y1 and \
                not any(box[0] < t[2] and t[0] < box[2] and box[1] < t[3] and t[1] < box[3] for t in taken)
            if free or best is None:
                if best is not None:
                    best[0].remove()
                best = (ann, box)
                if free:
                    break
            else:
                ann.remove()
        taken.append(best[1])


def plot_quality_latency(rows: Sequence[dict[str, Any]], out: Path, quality: str = "BLEU", title: str = "",
                         latency: str = "LAAL", board: dict[str, Any] | None = None) -> Path | None:
    """Quality against ``latency`` (LAAL by default, AL on request): the wait-k curve as a line
    through its k in order, every other setting as a marker (one colour per policy line) with
    its distance to the curve at equal latency beside it when a scoreboard is given."""
    from orchestration.eval.curve import is_curve_params

    pts = [r for r in rows if isinstance(r.get(quality), (int, float)) and isinstance(r.get(latency), (int, float))]
    if not pts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    curve = sorted((r for r in pts if is_curve_params(r.get("params", {}))), key=lambda r: r["params"]["k"])
    cells = {p["setting"]: p["distance"].get(latency, {}).get(quality) for p in (board or {}).get("points", [])}
    lines: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
    for r in pts:
        if r not in curve:
            lines.setdefault(r["line"], []).append(r)
    fig, ax = plt.subplots(figsize=(8.4, 5.6))
    cx, cy = [r[latency] for r in curve], [r[quality] for r in curve]
    if curve:
        ax.plot(cx, cy, "o-", color="0.35", markersize=4, linewidth=1.6, label="wait-k curve", zorder=2)
    markers = "s^Dv*PXh"
    labels: list[tuple[float, float, str, str]] = []
    for i, (name, group) in enumerate(lines.items()):
        group = sorted(group, key=lambda r: r[latency])
        dots = ax.plot([r[latency] for r in group], [r[quality] for r in group], markers[i % len(markers)],
                       linestyle=":" if len(group) > 1 else "none", linewidth=0.8, markersize=7, label=name,
                       zorder=3)
        for r in group:
            text = r["setting"].replace(f"{r['policy']}-", "")
            dist = distance_label(cells.get(r["setting"]))
            labels.append((r[latency], r[quality], f"{text}\n{dist}" if dist else text, dots[0].get_color()))
    ax.set_xlabel(f"{latency} (source units)")
    ax.set_ylabel(quality)
    if board is not None:
        ax.set_title((title + "\n" if title else "") + f"beside each point: {quality} \u2212 wait-k curve at equal "
                     f"{latency} [paired bootstrap 95%], * excludes 0", fontsize=8.5)
    elif title:
        ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.margins(x=0.15, y=0.1)
    fig.tight_layout()
    # what a label must not hide: every marker, the curve sampled along its segments, the legend
    obstacles = [(r[latency], r[quality]) for r in pts]
    for (x0, y0), (x1, y1) in zip(zip(cx, cy), zip(cx[1:], cy[1:])):
        obstacles += [(x0 + t * (x1 - x0), y0 + t * (y1 - y0)) for t in np.linspace(0, 1, 25)]
    _place_labels(fig, ax, [(x, y, f"k{r['params']['k']}", "0.35") for x, y, r in zip(cx, cy, curve)] + labels,
                  obstacles + _legend_corners(fig, ax))
    return save_figure_atomic(fig, out)


def _legend_corners(fig: Any, ax: Any) -> list[tuple[float, float]]:
    """The legend's area as a grid of data points, so labels keep off it."""
    import numpy as np

    legend = ax.get_legend()
    if legend is None:
        return []
    bb = legend.get_window_extent(fig.canvas.get_renderer())
    inv = ax.transData.inverted()
    return [tuple(inv.transform((x, y))) for x in np.linspace(bb.x0, bb.x1, 12) for y in np.linspace(bb.y0, bb.y1, 8)]
