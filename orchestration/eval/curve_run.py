"""The scoreboard of an eval run directory (``launch.py score --curve DIR`` and ``launch.py eval``).

An eval run directory holds ``settings/NAME/{instances.jsonl,scores.json}``; ``scores.json``
names the ``policy`` and its ``params``. The wait-k settings of the prefix layout in contiguous
positions make the curve (:func:`orchestration.eval.curve.is_curve_params`); every other
finished setting is scored against it (:mod:`orchestration.eval.curve`).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

from orchestration.errors import UserInputError
from orchestration.eval.curve import format_scoreboard, is_curve_params, scoreboard_report
from orchestration.eval.score import ScoredInstance, read_instances
from orchestration.runtime import write_json_atomic


def with_curve_settings(ev: Any, settings: list[Any]) -> list[Any]:
    """The run's settings plus a wait-k setting for each k of ``eval.curve_k`` the config does not
    list already (appended, so the listed settings keep their order)."""
    from orchestration.eval.config import WaitKSetting, expand_settings

    if not ev.curve_k:
        return settings
    curve = [s for s in settings if is_curve_params(s.params)]
    missing = sorted(set(ev.curve_k) - {s.params["k"] for s in curve})
    if not missing:
        return settings
    line = curve[0].line if curve else None
    extra = expand_settings(ev.model_copy(update={"settings": [WaitKSetting(type="waitk", k=missing, label=line)]}))
    taken = {s.name for s in settings}
    return settings + [s if s.name not in taken else type(s)(f"{s.name}-curve", s.line, s.backend, s.params)
                       for s in extra]


def read_finished(run_dir: Path, names: Sequence[str] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(name, scores.json) of every finished setting in ``run_dir/settings`` (only ``names``
    when given), sorted by name."""
    root = Path(run_dir) / "settings"
    if not root.is_dir():
        raise UserInputError(f"{run_dir}: no settings/ directory; pass the run directory of `launch.py eval`")
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        if names is not None and d.name not in names:
            continue
        path = d / "scores.json"
        if not path.is_file():
            continue                      # not finished: nothing to score yet
        try:
            scores = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UserInputError(f"{path}: not a readable JSON file ({exc})") from None
        if not isinstance(scores, dict) or not isinstance(scores.get("params"), dict):
            raise UserInputError(f"{path}: no 'params' object; is this a scores.json of `launch.py eval`?")
        if not (d / "instances.jsonl").is_file():
            raise UserInputError(f"{d}: scores.json without instances.jsonl")
        out.append((d.name, scores))
    return out


def _check_same_sentences(run_dir: Path, loaded: dict[str, list[ScoredInstance]]) -> None:
    """Every setting holds the same sentence indices (else the pairing means nothing)."""
    first = next(iter(loaded))
    want = {i.index for i in loaded[first]}
    for name, instances in loaded.items():
        got = {i.index for i in instances}
        if len(got) != len(instances):
            raise UserInputError(f"{run_dir}/settings/{name}/instances.jsonl: a sentence index occurs twice")
        if got != want:
            odd = sorted(got ^ want)[:5]
            raise UserInputError(
                f"{run_dir}: settings/{name}/instances.jsonl and settings/{first}/instances.jsonl hold "
                f"different sentences (index {odd} is in one only); the scoreboard pairs settings of one "
                "test set: evaluate them on the same data.test and data.limit")


def run_scoreboard(run_dir: Path, unit: str | None = None, names: Sequence[str] | None = None,
                   replicates: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Read the finished settings of an eval run and score every non-curve one against the wait-k
    curve; UserInputError with fewer than two wait-k settings or unmatched sentences."""
    finished = read_finished(run_dir, names)
    curve: dict[int, str] = {}
    points: list[str] = []
    for name, scores in finished:
        k = scores["params"].get("k")
        if is_curve_params(scores["params"]) and isinstance(k, int) and k not in curve:
            curve[k] = name
        else:
            points.append(name)    # a second setting with a curve's k is scored like any other
    if len(curve) < 2:
        have = f"k = {sorted(curve)}" if curve else "none"
        add = [k for k in (1, 3, 5, 7, 9) if k not in curve][: 2 - len(curve)]
        raise UserInputError(
            f"{run_dir}: the wait-k curve needs at least two finished wait-k settings (prefix layout), found "
            f"{have}; add wait-k with k = {', '.join(map(str, add))} (for example eval.curve_k=[1,3,5,7,9] "
            "or a {type: waitk, k: [...]} entry in eval.settings) and run `launch.py eval` again")
    units = {s.get("latency_unit") for _, s in finished} - {None}
    if len(units) > 1:
        raise UserInputError(f"{run_dir}: settings measured in different latency units {sorted(units)}")
    unit = units.pop() if units else (unit or "word")
    loaded = {name: read_instances(Path(run_dir) / "settings" / name / "instances.jsonl", unit)  # type: ignore[arg-type]
              for name, _ in finished}
    _check_same_sentences(Path(run_dir), loaded)
    missing = [n for n, ins in loaded.items() if any(i.reference is None for i in ins)]
    if missing:
        raise UserInputError(f"{run_dir}: settings {missing} have sentences without a reference; "
                             "the scoreboard needs BLEU and chrF")
    report = scoreboard_report({p: loaded[p] for p in points}, {k: loaded[n] for k, n in curve.items()},
                               unit, replicates=replicates, seed=seed)  # type: ignore[arg-type]
    for entry in report["curve"]:
        entry["setting"] = curve[entry["k"]]
    return dict(report, latency_unit=unit)


def main(args: argparse.Namespace) -> int:
    """``launch.py score --curve DIR``: print the scoreboard, write DIR/scoreboard.json."""
    if getattr(args, "against", None) or getattr(args, "per_instance", False):
        raise UserInputError("--against and --per-instance go with --instances, not with --curve")
    if args.replicates < 1:
        raise UserInputError(f"--replicates must be at least 1, got {args.replicates}")
    run_dir = Path(args.curve)
    report = run_scoreboard(run_dir, args.latency_unit, replicates=args.replicates, seed=args.seed)
    path = write_json_atomic(run_dir / "scoreboard.json", report)
    print(format_scoreboard(report))
    print(f"written: {path}")
    return 0


def score_command(args: argparse.Namespace) -> int:
    """``launch.py score``: ``--curve DIR`` here, ``--instances FILE`` in :mod:`orchestration.eval.score`
    (this module imports that one, so the dispatch lives here and no import circle forms)."""
    from orchestration.eval.score import main as score_main

    return main(args) if getattr(args, "curve", None) else score_main(args)
