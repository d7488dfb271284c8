"""``launch.py bench metrics``: which sentence-level quality score a streaming policy cannot game.

On the MQM rows of ``<data dir>/mqm_newstest2021/*.tsv`` (as ``bench reward`` reads them) each
sentence-level scorer of ``SCORERS`` (chrF2 ``chrf``, ``chrf1``, ``bleu``, ``chrf_bp``; see
``reward.scorers``) is measured three ways, in one run:

- **agreement with people**: segment-level Kendall tau-b against MQM per language pair, over
  all (system, segment) rows (``orchestration.bench.reward.kendall_tau_b``, scipy);
- **over-generation**: the mean score change when the system output gets extra text appended,
  in two variants: ``repeat_half`` (its own first half repeated) and ``append_other`` (another
  segment's output of the same language pair, drawn with ``run.seed``). A reward score must
  drop clearly here: a policy that keeps writing must not keep its score;
- **fragmenting**: the mean score change when ``". "`` is inserted at every 3rd word boundary
  ("The Prime Minister. of India and. Japan attacked."), the failure mode of a policy that
  closes a sentence at every chunk.

Each change is reported as the mean difference (perturbed − original, on the 0-100 scale all
four share), that difference relative to the mean original score, the share of segments whose
score fell, and the ratios of the mean change and of tau to chrF2's (``ratio_to_chrf``),
measured on the same segments in the same run; beside them, the share of each variant's outputs
that the reward's default length gate would score as degenerate, whatever the scorer. The
perturbations use the outputs with at least ``MIN_WORDS`` words (a 3rd word boundary must
exist); tau uses every row. Everything is scored in this process with the
scorers the reward service builds (no Ray: these are string metrics, and ``bench reward``
measures the service). ``OUT/bench_metrics.json`` holds the numbers, the segment counts, and
``sample`` (every row by default: the run takes about a minute on two cores).
"""
from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from orchestration.bench.reward import MqmRow, kendall_tau_b, mqm_files, read_mqm, target_language
from orchestration.config import RootConfig
from orchestration.config_loader import load_config
from orchestration.errors import UserInputError
from orchestration.runtime import write_json_atomic

SCORERS: tuple[str, ...] = ("chrf", "chrf1", "bleu", "chrf_bp")
BASELINE = "chrf"
PERTURBATIONS: tuple[str, ...] = ("repeat_half", "append_other", "fragment")
FRAGMENT_EVERY = 3
MIN_WORDS = 4


# --- perturbations (plain functions on strings) ---------------------------------------------

def _join(units: Sequence[str], unit: str) -> str:
    return ("" if unit == "char" else " ").join(units)


def _units(text: str, unit: str) -> list[str]:
    from reward.text_metrics import split_units

    return split_units(text, unit)


def repeat_half(mt: str, unit: str = "word") -> str:
    """The output followed by its own first half (in target units)."""
    units = _units(mt, unit)
    return _join(units + units[:len(units) // 2], unit)


def append_other(mt: str, other: str, unit: str = "word") -> str:
    """The output followed by an unrelated output."""
    return _join(_units(mt, unit) + _units(other, unit), unit)


def fragment(mt: str, unit: str = "word", every: int = FRAGMENT_EVERY) -> str:
    """A full stop at every ``every``-th unit boundary: ``a b c d e f g`` -> ``a b c. d e f. g``
    (``". "`` between words; ``"。"`` between the characters of a character-unit target)."""
    units = _units(mt, unit)
    mark = "。" if unit == "char" else "."
    return _join([u + mark if i % every == 0 and i < len(units) else u for i, u in enumerate(units, start=1)], unit)


def other_outputs(rows: Sequence[MqmRow], seed: int) -> list[str]:
    """For each row, the output of a row of another segment, from a seeded shuffle (deterministic)."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    out = []
    for i, row in enumerate(rows):
        for step in range(len(rows)):
            j = order[(i + step) % len(rows)]
            if rows[j].seg_id != row.seg_id and rows[j].mt.strip():
                out.append(rows[j].mt)
                break
        else:
            raise UserInputError(f"language pair {row.lp}: every row is one segment; append_other needs two")
    return out


# --- statistics -----------------------------------------------------------------------------

def change_stats(before: Sequence[float], after: Sequence[float]) -> dict[str, float]:
    """Mean change (after − before), that change relative to the mean ``before``, share that fell."""
    if len(before) != len(after) or not before:
        raise ValueError(f"{len(before)} scores before but {len(after)} after")
    diffs = [a - b for a, b in zip(after, before)]
    mean_before = math.fsum(before) / len(before)
    mean_change = math.fsum(diffs) / len(diffs)
    return {"mean_change": mean_change,
            "relative_change": mean_change / mean_before if mean_before else float("nan"),
            "share_dropped": sum(d < 0 for d in diffs) / len(diffs)}


def gate_share(items: Sequence, gate: tuple[float, float] | None = None) -> float:
    """Share of the non-empty hypotheses whose length ratio falls outside the reward's length gate
    (``reward.length_gate``, its default unless given): those the reward scores as degenerate."""
    from reward.fusion import length_ratio, outside_gate
    from reward.types import RewardInput, RewardSettings

    gate = RewardSettings().length_gate if gate is None else gate
    ratios = [length_ratio(RewardInput(it.source, it.reference, it.hypothesis, [], 1, it.unit, 1)) for it in items]
    ratios = [r for r in ratios if r is not None]
    return sum(outside_gate(r, gate) for r in ratios) / len(ratios) if ratios else 0.0


def ratio(x: float | None, base: float | None) -> float | None:
    """x / base, or None where either is missing or the base is 0."""
    if x is None or base is None or base == 0 or not (math.isfinite(x) and math.isfinite(base)):
        return None
    return x / base


def _pooled(rows_by_lp: dict[str, Any], key: str, stat: str) -> float:
    """Segment-weighted mean of a per-pair statistic."""
    total = sum(v["perturbed_segments"] for v in rows_by_lp.values())
    return math.fsum(v[key][stat] * v["perturbed_segments"] for v in rows_by_lp.values()) / total


# --- the bench ------------------------------------------------------------------------------

def _score_all(name: str, items_by_variant: dict[str, list]) -> tuple[dict[str, list[float]], Any, float]:
    from reward.scorers import build_scorer
    from reward.types import RewardSettings

    scorer = build_scorer(RewardSettings(quality=name))   # type: ignore[arg-type]
    t0 = time.perf_counter()
    scores = {variant: scorer.score(items) for variant, items in items_by_variant.items()}
    return scores, scorer.info, time.perf_counter() - t0


def run_bench(cfg: RootConfig, out_dir: Path, files: Sequence[Path] | None = None,
              limit: int | None = None, scorers: Sequence[str] = SCORERS,
              progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure every scorer on the MQM files; returns what ``bench_metrics.json`` holds.

    ``limit`` keeps a seeded sample of that many rows per language pair (quick checks); the
    sample is recorded in the result."""
    from dataclasses import asdict

    from reward.types import QualityItem
    from rollout.units import unit_of

    if BASELINE not in scorers:
        raise ValueError(f"the baseline {BASELINE!r} must be among the scorers")
    begin = time.perf_counter()
    files = mqm_files(cfg) if files is None else files
    seed = cfg.run.seed
    by_lp: dict[str, list[MqmRow]] = {}
    for path in files:
        for row in read_mqm(path):
            by_lp.setdefault(row.lp, []).append(row)
    if limit is not None:
        rng = random.Random(seed)
        by_lp = {lp: sorted(rng.sample(rows, min(limit, len(rows))), key=lambda r: (r.seg_id, r.system))
                 if len(rows) > limit else rows for lp, rows in by_lp.items()}

    # the items of every variant, per pair; the perturbed ones on the rows with >= MIN_WORDS words
    plan: dict[str, dict[str, Any]] = {}
    for lp, rows in by_lp.items():
        unit = unit_of(target_language(lp))
        kept = [i for i, r in enumerate(rows) if len(_units(r.mt, unit)) >= MIN_WORDS]
        if not kept:
            raise UserInputError(f"language pair {lp}: no system output of {MIN_WORDS} or more words to perturb")
        others = other_outputs([rows[i] for i in kept], seed)
        sub = [rows[i] for i in kept]
        variants = {
            "original": [QualityItem(r.src, r.mt, r.ref, unit) for r in rows],
            "repeat_half": [QualityItem(r.src, repeat_half(r.mt, unit), r.ref, unit) for r in sub],
            "append_other": [QualityItem(r.src, append_other(r.mt, o, unit), r.ref, unit)
                             for r, o in zip(sub, others)],
            "fragment": [QualityItem(r.src, fragment(r.mt, unit), r.ref, unit) for r in sub],
        }
        plan[lp] = {"rows": rows, "kept": kept, "variants": variants, "unit": unit,
                    "outside_gate": {v: gate_share(variants[v]) for v in ("original", *PERTURBATIONS)}}

    results: dict[str, Any] = {}
    infos: dict[str, Any] = {}
    for name in scorers:
        per_lp: dict[str, Any] = {}
        seconds = 0.0
        for lp, p in plan.items():
            scores, info, sec = _score_all(name, p["variants"])
            seconds += sec
            infos[name] = asdict(info)
            original = scores["original"]
            before = [original[i] for i in p["kept"]]
            entry: dict[str, Any] = {
                "segments": len(p["rows"]), "perturbed_segments": len(p["kept"]),
                "kendall_tau_b": kendall_tau_b(original, [r.mqm for r in p["rows"]]),
                "mean_score": math.fsum(original) / len(original),
                "outside_length_gate": p["outside_gate"],
            }
            for variant in PERTURBATIONS:
                entry[variant] = change_stats(before, scores[variant])
            per_lp[lp] = entry
        pooled = {v: {s: _pooled(per_lp, v, s) for s in ("mean_change", "relative_change", "share_dropped")}
                  for v in PERTURBATIONS}
        results[name] = {"language_pairs": per_lp, "pooled": pooled, "scoring_seconds": seconds}
        if progress:
            progress(f"{name}: {seconds:.1f} s")

    base = results[BASELINE]
    for name, res in results.items():
        res["ratio_to_chrf"] = {
            "kendall_tau_b": {lp: ratio(v["kendall_tau_b"], base["language_pairs"][lp]["kendall_tau_b"])
                              for lp, v in res["language_pairs"].items()},
            **{v: ratio(res["pooled"][v]["mean_change"], base["pooled"][v]["mean_change"]) for v in PERTURBATIONS},
        }
    result = {
        "scorers": infos,
        "baseline": BASELINE,
        "correlation": "Kendall tau-b against MQM over all (system, segment) rows of a language pair",
        "perturbations": {
            "repeat_half": "the output followed by its own first half (target units)",
            "append_other": f"the output followed by another segment's output of the same pair (seed {seed})",
            "fragment": f"'. ' inserted at every {FRAGMENT_EVERY}rd word boundary ('。' between characters "
                        "of a character-unit target)",
            "segments": f"outputs of at least {MIN_WORDS} target units; changes are perturbed − original "
                        "(0-100), relative = mean change / mean original score, pooled = weighted by segments",
            "outside_length_gate": "share of each variant's outputs outside the default reward.length_gate "
                                   "(scored as degenerate by the training reward, whatever the scorer)",
        },
        "sample": ("every row" if limit is None
                   else f"a seeded sample (run.seed={seed}) of at most {limit} rows per language pair"),
        "seed": seed,
        "results": results,
        "total_seconds": time.perf_counter() - begin,
    }
    write_json_atomic(out_dir / "bench_metrics.json", result)
    return result


def table(result: dict[str, Any]) -> str:
    """The numbers as a fixed-width text table (tau per pair, pooled changes, ratios to chrF2)."""
    lps = sorted(next(iter(result["results"].values()))["language_pairs"])
    head = ["scorer"] + [f"tau {lp}" for lp in lps] + [f"{v} Δ (rel, fell)" for v in PERTURBATIONS] \
        + ["ratio Δ to chrf: " + "/".join(PERTURBATIONS)]
    lines = [" | ".join(head)]
    for name, res in result["results"].items():
        cells = [name]
        cells += [f"{res['language_pairs'][lp]['kendall_tau_b']:.4f}" for lp in lps]
        for v in PERTURBATIONS:
            s = res["pooled"][v]
            cells.append(f"{s['mean_change']:+.2f} ({s['relative_change']:+.1%}, {s['share_dropped']:.0%})")
        cells.append("/".join(f"{res['ratio_to_chrf'][v]:.2f}" for v in PERTURBATIONS))
        lines.append(" | ".join(cells))
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    import sys

    cfg = load_config(args.config, args.overrides)
    out_dir = Path(args.out)
    if not out_dir.is_absolute():
        out_dir = Path.cwd() / out_dir
    result = run_bench(cfg, out_dir, progress=lambda m: print(m, file=sys.stderr))
    print(table(result))
    print(json.dumps({"total_seconds": result["total_seconds"], "sample": result["sample"],
                      "written": str(out_dir / "bench_metrics.json")}, indent=2))
    return 0
