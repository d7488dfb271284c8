"""The pipeline's last stage: its policies on the dev set against the base model's wait-k curve.

The GRPO stage already decoded its starting policy (``dev/before``: the SFT model) and its final
one (``dev/after``) greedily on the first ``train.dev_size`` dev sentences. Here the base model
(``model.path``) runs wait-k for ``scoreboard.curve_k`` on exactly those sentences through
``launch.py eval``'s own machinery (its curve cache included, so a later run of the same model and
sentences reuses the curve), and both policies get their distance to that curve at equal LAAL
and AL with paired bootstrap intervals (:mod:`orchestration.eval.curve`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestration.runtime import write_json_atomic


def curve_config(cfg, out_dir: Path):
    """The eval config of the dev curve: the base model, the dev set's first ``train.dev_size``
    lines, wait-k for every ``scoreboard.curve_k``."""
    from orchestration.eval.config import EvalRootConfig

    sb = cfg.scoreboard
    return EvalRootConfig.model_validate({
        "run": {"name": "scoreboard", "dir": str(out_dir), "seed": cfg.run.seed},
        "data": cfg.data.model_dump() | {"test": cfg.data.dev, "limit": cfg.train.dev_size},
        "model": cfg.model.model_dump() | {"init_from": None},
        "rollout": cfg.rollout.model_dump(), "ray": cfg.ray.model_dump(),
        "eval": {"settings": [{"type": "waitk", "k": list(sb.curve_k)}], "curve_k": list(sb.curve_k),
                 "curve_cache": sb.curve_cache, "curve_replicates": sb.replicates}})


def point_rows(points: dict[str, list], unit: str) -> list[dict[str, Any]]:
    """Plot and table rows of the policies (as eval's scores.json rows)."""
    from orchestration.eval.score import summarize

    return [{"setting": name, "line": name, "policy": "learned", **summarize(ins, unit)} for name, ins in points.items()]


def run_dev_scoreboard(cfg, run_dir: Path, points: dict[str, Path]) -> dict[str, Any]:
    """Decode (or reuse) the curve, score ``points`` (name -> dev instances file) against it;
    writes ``scoreboard.json`` and ``scoreboard.png`` into ``run_dir``."""
    from orchestration.eval.command import run_eval
    from orchestration.eval.curve import scoreboard_report
    from orchestration.eval.plot import plot_quality_latency
    from orchestration.eval.score import read_instances
    from rollout.units import unit_of

    ecfg = curve_config(cfg, run_dir / "scoreboard")
    rows, _ = run_eval(ecfg, run_dir / "scoreboard")
    ds_unit = unit_of(_target_language(cfg))
    curve = {r["params"]["k"]: read_instances(run_dir / "scoreboard" / "settings" / r["setting"] / "instances.jsonl",
                                              ds_unit) for r in rows}
    loaded = {name: read_instances(path, ds_unit) for name, path in points.items()}
    report = scoreboard_report(loaded, curve, ds_unit, replicates=cfg.scoreboard.replicates, seed=cfg.run.seed)
    report["dataset"], report["model"] = cfg.data.dev, cfg.model.path
    write_json_atomic(run_dir / "scoreboard.json", report)
    title = f"dev: {cfg.data.dev}, {len(next(iter(loaded.values())))} sentences; curve: {cfg.model.path}"
    plot_quality_latency(list(rows) + point_rows(loaded, ds_unit), run_dir / "scoreboard.png", "BLEU", title,
                         board=report)
    return report


def _target_language(cfg) -> str:
    from orchestration.data import load_pairs

    return load_pairs(cfg.data.dev, cfg.data, seed=cfg.run.seed, purpose="dev", limit=1).tgt_lang
