"""A sweep's common SFT start and its held-out scoreboard (``sft_config`` and ``heldout`` of a sweep).

The warm start is the SFT stage of a pipeline config, run once into ``OUT/sft`` (kept when
finished), so every arm of an ablation starts GRPO from the same model. The held-out scoreboard
runs ``launch.py eval``'s machinery with the sweep's eval config into ``OUT/heldout``: its own
settings and wait-k curve (cached across runs), plus every finished arm's exported policy
(``OUT/<run>/model``) and the SFT start, each decoded in the episode layout it trained in; then
``OUT/scoreboard.md`` (one row per policy: BLEU, LAAL, length ratio, wait share and the distance to
the curve at equal LAAL and AL with paired intervals) and ``OUT/scoreboard.png``.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from orchestration.runtime import write_json_atomic


def warm_start(pipeline_config: Path, out: Path) -> Path:
    """``OUT/sft``: the SFT stage of ``pipeline_config`` (run now unless finished earlier)."""
    from orchestration.config_loader import load_config
    from orchestration.training.pipeline import sft_stage
    from orchestration.training.pipeline_config import PipelineRootConfig

    cfg = load_config(pipeline_config, schema=PipelineRootConfig)
    if not cfg.sft.enabled:
        raise ValueError(f"{pipeline_config}: sft.enabled is false; a sweep's sft_config must run an SFT stage")
    done = sft_stage(cfg, out)
    return done if done is not None else out / "sft"


def arm_settings(out: Path, names: list[str], start: bool) -> list[Any]:
    """Learned settings of every finished arm (and the SFT start), on their own models."""
    from orchestration.eval.command import _run_episode
    from orchestration.eval.config import RunSetting

    arms = ([("sft-start", out / "sft")] if start else []) + [(n, out / n) for n in names]
    settings = []
    for name, run in arms:
        if not (run / "model" / "config.json").is_file():
            continue
        settings.append(RunSetting(f"learned-{name}", name, "vllm", {
            "type": "learned", "checkpoint": None, "chunk_size": None, "model": str(run / "model"),
            "episode": _run_episode(run)}))
    return settings


def heldout_scoreboard(eval_config: Path, out: Path, names: list[str], start: bool) -> dict[str, Any] | None:
    """Decode every arm on the held-out lines and score it against the wait-k curve."""
    from orchestration.eval.command import run_eval
    from orchestration.eval.config import load_eval_config
    from orchestration.eval.curve import format_scoreboard

    cfg = load_eval_config(eval_config, [f"run.dir={out / 'heldout'}"])
    extra = arm_settings(out, names, start)
    rows, board = run_eval(cfg, out / "heldout", extra_settings=extra)
    if board is None:
        return None
    write_json_atomic(out / "scoreboard.json", board)
    (out / "scoreboard.md").write_text(scoreboard_markdown(board), encoding="utf-8")
    shutil.copyfile(out / "heldout" / "curves.png", out / "scoreboard.png")
    print(format_scoreboard(board))
    print(f"held-out scoreboard: {out / 'scoreboard.md'}  plot: {out / 'scoreboard.png'}")
    return board


def _cell(d: dict[str, Any]) -> str:
    if d.get("diff") is None:
        return f"outside ({d.get('outside')})"
    star = "*" if d.get("excludes_zero") else ""
    return f"{d['diff']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]{star}"


def scoreboard_markdown(board: dict[str, Any]) -> str:
    """The held-out scoreboard as a markdown table (a README can take it as it is)."""
    head = ("| policy | BLEU | chrF | LAAL | AL | length ratio | wait share | BLEU − curve @ LAAL | "
            "chrF − curve @ LAAL | BLEU − curve @ AL |")
    lines = [head, "|" + "---|" * 10]

    def num(v: Any) -> str:
        return "-" if v is None else f"{v:.2f}"

    for p in board["points"]:
        d = p["distance"]
        lines.append(f"| {p['setting']} | {num(p['quality'].get('BLEU'))} | {num(p['quality'].get('chrF'))} | "
                     f"{num(p['latency'].get('LAAL'))} | {num(p['latency'].get('AL'))} | {num(p.get('length_ratio'))} | "
                     f"{num(p.get('wait_share'))} | {_cell(d['LAAL']['BLEU'])} | {_cell(d['LAAL']['chrF'])} | "
                     f"{_cell(d['AL']['BLEU'])} |")
    ks = ", ".join(str(c["k"]) for c in board["curve"])
    lines.append("")
    lines.append(f"Distance: quality minus the wait-k curve (k = {ks}) at the same latency; paired bootstrap 95% "
                 f"interval over {board['sentences']} sentences ({board['replicates']} resamples); * = it excludes 0.")
    return "\n".join(lines) + "\n"
