"""``launch.py bench reward``: how well the configured quality scorer agrees with people.

Scores every row of ``<data dir>/mqm_newstest2021/*.tsv`` (columns ``lp, system, seg_id,
mqm_avg_score, src, mt, ref``; MQM 0 = no error, -25 = worst, so higher is better for both)
with the configured scorer through the RewardService replicas, and writes
``OUT/bench_reward.json`` (temp file, then rename) with, per language pair, the
segment-level **Kendall tau-b** between metric and MQM scores over all (system, segment)
rows of that pair (no grouping by segment or system; ties handled by tau-b), plus the
number of segments, the scoring throughput and the scorer's name and checkpoint.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from orchestration.config import RootConfig
from orchestration.config_loader import load_config
from orchestration.data import resolve_data_dir
from orchestration.errors import UserInputError
from orchestration.runtime import read_lines, start_ray, write_json_atomic
from reward.types import QualityItem, RewardSettings
from rollout.units import unit_of

MQM_FOLDER = "mqm_newstest2021"
MQM_COLUMNS = ("lp", "system", "seg_id", "mqm_avg_score", "src", "mt", "ref")
TAU_VARIANT = ("Kendall tau-b over all (system, segment) rows of a language pair, "
               "no grouping; pairs tied in either score count as in tau-b")


@dataclass(frozen=True)
class MqmRow:
    """One system output of one segment with its human MQM score."""

    lp: str
    system: str
    seg_id: str
    mqm: float
    src: str
    mt: str
    ref: str


def mqm_files(cfg) -> list[Path]:
    """The MQM score files of the data directory (``data.dir``), or a UserInputError naming it."""
    folder = resolve_data_dir(cfg.data.dir) / MQM_FOLDER
    files = sorted(folder.glob("*.tsv"))
    if not files:
        raise UserInputError(f"{folder}: no *.tsv files (MQM scores); point data.dir at the shared data")
    return files


def read_mqm(path: Path) -> list[MqmRow]:
    """All rows of one MQM TSV file; any malformed line is a UserInputError naming FILE:LINE."""
    lines = read_lines(path)
    if not lines or tuple(lines[0].rstrip("\r").split("\t")) != MQM_COLUMNS:
        raise UserInputError(f"{path}:1: expected the header {' '.join(MQM_COLUMNS)} (tab-separated)")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        cells = line.rstrip("\r").split("\t")
        if len(cells) != len(MQM_COLUMNS):
            raise UserInputError(f"{path}:{number}: {len(cells)} tab-separated fields, expected {len(MQM_COLUMNS)}")
        lp, system, seg_id, score, src, mt, ref = cells
        try:
            mqm = float(score)
        except ValueError:
            raise UserInputError(f"{path}:{number}: mqm_avg_score {score!r} is not a number") from None
        if not math.isfinite(mqm) or not ref.strip():
            raise UserInputError(f"{path}:{number}: needs a finite MQM score and a non-empty reference")
        rows.append(MqmRow(lp, system, seg_id, mqm, src, mt, ref))
    if not rows:
        raise UserInputError(f"{path}: no rows after the header")
    return rows


def target_language(lp: str) -> str:
    """``ende`` or ``en-de`` -> ``de``."""
    return lp.split("-")[1] if "-" in lp else lp[2:]


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Kendall's tau-b of two equally long score lists (``scipy.stats.kendalltau``, variant 'b');
    ``None`` when either list is constant (tau-b is undefined there)."""
    from scipy.stats import kendalltau

    if len(x) != len(y):
        raise ValueError(f"{len(x)} x values but {len(y)} y values")
    if len(set(x)) < 2 or len(set(y)) < 2:
        return None
    return float(kendalltau(x, y, variant="b").statistic)


def _check_comet(settings: RewardSettings) -> None:
    """Missing COMET prerequisites are the user's to fix: say which key, before starting Ray."""
    if settings.quality != "comet":
        return
    from reward.service import resolve_python

    if settings.comet_python:
        try:
            resolve_python(settings.comet_python)
        except FileNotFoundError as exc:
            raise UserInputError(str(exc)) from None
    model = settings.comet_model or ""
    if model.startswith(("/", ".", "~")) and not Path(model).expanduser().exists():
        raise UserInputError(f"reward.comet_model: {model} not found; pass a checkpoint directory "
                             f"(hparams.yaml + checkpoints/model.ckpt) or a hub id")


def run_bench(cfg: RootConfig, out_dir: Path, files: Sequence[Path] | None = None,
              limit: int | None = None) -> dict[str, Any]:
    """Score the MQM files with the configured scorer; returns what ``bench_reward.json`` holds.

    ``limit`` keeps the first rows of each file (quick checks).
    """
    import ray
    from tqdm import tqdm

    from reward.client import RewardClient

    begin = time.perf_counter()
    files = mqm_files(cfg) if files is None else files
    tables = {path: read_mqm(path)[:limit] for path in files}
    settings = cfg.reward.settings()
    _check_comet(settings)

    started = start_ray(cfg.ray.address, cfg.ray.num_cpus)
    client = RewardClient(settings)
    try:
        client.wait_ready()
        startup = time.perf_counter() - begin
        chunk = max(256, 8 * settings.comet_batch_size) * settings.replicas
        total = sum(len(rows) for rows in tables.values())
        scores: dict[Path, list[float]] = {}
        service_seconds = scoring = 0.0
        scorer = None
        with tqdm(total=total, desc=f"bench reward ({settings.quality})", unit="seg", disable=None) as bar:
            for path, rows in tables.items():
                scores[path] = []
                for i in range(0, len(rows), chunk):
                    items = [QualityItem(r.src, r.mt, r.ref, unit_of(target_language(r.lp)))
                             for r in rows[i:i + chunk]]
                    t0 = time.perf_counter()
                    batch = client.quality(items)
                    scoring += time.perf_counter() - t0
                    service_seconds += batch.seconds
                    scorer = batch.scorer
                    scores[path].extend(batch.scores)
                    bar.update(len(items))
        restarts = client.restarts
    finally:
        client.close()
        if started:
            ray.shutdown()

    pairs: dict[str, Any] = {}
    for path, rows in tables.items():
        by_lp: dict[str, list[int]] = {}
        for i, row in enumerate(rows):
            by_lp.setdefault(row.lp, []).append(i)
        for lp, idx in by_lp.items():
            metric = [scores[path][i] for i in idx]
            human = [rows[i].mqm for i in idx]
            pairs[lp] = {"file": str(path), "segments": len(idx),
                         "systems": len({rows[i].system for i in idx}),
                         "kendall_tau_b": kendall_tau_b(metric, human),
                         "metric_mean": math.fsum(metric) / len(metric)}
    result = {
        "scorer": asdict(scorer) if scorer else None,
        "correlation": TAU_VARIANT,
        "language_pairs": pairs,
        "segments": total,
        "segments_per_s": total / scoring if scoring > 0 else None,
        "scoring_seconds": scoring,
        "service_seconds": service_seconds,
        "service_segments_per_s": total / service_seconds if service_seconds > 0 else None,
        "startup_seconds": startup,
        "total_seconds": time.perf_counter() - begin,
        "replicas": settings.replicas,
        "restarts": restarts,
        "reward_config": cfg.reward.model_dump(mode="json"),
    }
    write_json_atomic(out_dir / "bench_reward.json", result)
    return result


def main(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    out_dir = Path(args.out)
    if not out_dir.is_absolute():
        out_dir = Path.cwd() / out_dir
    result = run_bench(cfg, out_dir)
    summary = {lp: {"kendall_tau_b": v["kendall_tau_b"], "segments": v["segments"]}
               for lp, v in result["language_pairs"].items()}
    print(json.dumps({"scorer": result["scorer"]["name"] if result["scorer"] else None,
                      "language_pairs": summary, "segments_per_s": result["segments_per_s"],
                      "total_seconds": result["total_seconds"],
                      "written": str(out_dir / "bench_reward.json")}, indent=2))
    return 0
