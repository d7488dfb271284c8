"""``launch.py sweep``: a grid of training runs (reward ablations, or any key), resumable run by run.

A sweep file names the training config every run starts from, overrides shared by all runs,
a ``grid`` (dotted key -> values; every combination is one run) and explicit ``runs`` (a name
and its overrides)::

    train_config: ../default.yaml
    overrides: {train.steps: 4}
    grid: {reward.lam: [0.5, 2.0]}
    runs:
      - {name: no-truncation, set: {reward.truncate: none}}

Every run's config is validated before the first one starts (all problems at once, exit 2).
Run i lives in ``OUT/<name>``: a run with a ``summary.json`` is done and skipped, one with a
checkpoint is resumed (``train --resume``), any other starts afresh; so a killed sweep is
continued by running the same command again. At the end (and after every run) ``OUT`` gets
``sweep.json`` and ``sweep.md`` (one row per finished run: its dev metrics before and after,
each change with its paired bootstrap 95% interval from the run's ``summary.json``, ``*`` where
it excludes 0)
and ``sweep.png`` (the runs on the quality-latency plane).

With ``sft_config`` the sweep first runs that pipeline config's SFT stage into ``OUT/sft`` and
every run starts GRPO from it; with ``heldout`` every run's final policy is then decoded on that
eval config's test lines and scored against the base model's wait-k curve there
(:mod:`orchestration.training.sweep_heldout`): the ablation judged on held-out data.
"""
from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestration.config_loader import REPO_ROOT, ConfigError, read_yaml, load_config
from orchestration.runtime import write_json_atomic

# length ratio (hypothesis/reference): over-generation shows here, and it pulls AL down
TABLE_KEYS = ("reward", "quality", "AL", "LAAL", "wait_share", "length_ratio")


class SweepRun(BaseModel):
    """One named run: overrides on top of the sweep's shared ones."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=80, pattern=r"^[A-Za-z0-9_.-]+$",
                      description="the run's directory name under the sweep's output")
    set: dict[str, Any] = Field(default_factory=dict, description="dotted key -> value for this run")


class SweepConfig(BaseModel):
    """A grid of training runs."""

    model_config = ConfigDict(extra="forbid")
    train_config: str = Field(min_length=1, description="training config every run starts from (relative to this file)")
    sft_config: str | None = Field(
        None, min_length=1, description="a pipeline config (relative to this file) whose SFT stage runs first "
                                        "into OUT/sft; every run then starts GRPO from its model")
    heldout: str | None = Field(
        None, min_length=1, description="an eval config (relative to this file): after the runs, every run's "
                                        "final policy on its test lines against the wait-k curve (OUT/heldout, "
                                        "OUT/scoreboard.md, OUT/scoreboard.png)")
    overrides: dict[str, Any] = Field(default_factory=dict, description="dotted key -> value for every run")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="dotted key -> values; one run per combination")
    runs: list[SweepRun] = Field(default_factory=list, description="explicit named runs")


def override(key: str, value: Any) -> str:
    """``key=value`` as ``launch.py`` parses it (YAML scalars and lists)."""
    return f"{key}={value if isinstance(value, str) else json.dumps(value)}"


def expand(cfg: SweepConfig) -> list[SweepRun]:
    """The grid's combinations (named ``key-value_...`` by the keys' last parts) then the explicit
    runs, in order."""
    runs = []
    keys = list(cfg.grid)
    for values in itertools.product(*(cfg.grid[k] for k in keys)) if keys else []:
        name = "_".join(f"{k.split('.')[-1]}-{v}" for k, v in zip(keys, values))
        runs.append(SweepRun(name=name, set=dict(zip(keys, values))))
    runs += cfg.runs
    names = [r.name for r in runs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"sweep runs share a name: {', '.join(dup)}; names must be unique")
    if not runs:
        raise ConfigError("the sweep has no runs: give a grid or runs")
    return runs


def select(runs: list[SweepRun], names: str | None) -> list[SweepRun]:
    """The runs named in ``names`` (``--runs a,b``; all when None), in the sweep file's order."""
    if names is None:
        return runs
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    known = [r.name for r in runs]
    unknown = [n for n in wanted if n not in known]
    if unknown or not wanted:
        raise ConfigError(f"--runs {names}: no such run {', '.join(unknown) or '(none named)'}; "
                          f"the sweep's runs are {', '.join(known)}")
    return [r for r in runs if r.name in wanted]


def load_sweep(path: Path) -> tuple[SweepConfig, Path]:
    data = read_yaml(path)
    try:
        cfg = SweepConfig.model_validate(data)
    except ValidationError as err:
        lines = [f"{path}: {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()]
        raise ConfigError("\n".join(lines)) from None
    base = (path.parent / cfg.train_config).resolve()
    return cfg, base


def run_overrides(cfg: SweepConfig, run: SweepRun, run_dir: Path) -> list[str]:
    merged = {**cfg.overrides, **run.set}
    if cfg.sft_config is not None:       # every arm from the same SFT start
        merged["model.init_from"] = str(run_dir.parent / "sft")
    if cfg.heldout is not None:          # the held-out scoreboard decodes each arm's exported policy
        merged["train.export_model"] = True
    return [override(k, v) for k, v in merged.items()] + [f"run.dir={run_dir}", f"run.name={run.name}"]


def check_all(cfg: SweepConfig, base: Path, runs: list[SweepRun], out: Path) -> None:
    """Every run's training config validates; all problems reported together."""
    problems = []
    for run in runs:
        try:
            load_config(base, run_overrides(cfg, run, out / run.name))
        except ConfigError as exc:
            problems += [f"run {run.name}: {line}" for line in str(exc).splitlines()]
    if problems:
        raise ConfigError("\n".join(problems))


def run_state(run_dir: Path) -> str:
    if (run_dir / "summary.json").is_file():
        return "done"
    if (run_dir / "checkpoints" / "latest").is_file():
        return "resume"
    return "start"


def train_one(base: Path, overrides: list[str], run_dir: Path) -> int:
    from orchestration.training.loop import main as train_main

    state = run_state(run_dir)
    if state == "resume":
        args = argparse.Namespace(resume=str(run_dir), config=None, overrides=[], stop_after=None)
    else:
        if run_dir.exists():          # started but never checkpointed: nothing to keep
            import shutil

            shutil.rmtree(run_dir)
        args = argparse.Namespace(resume=None, config=str(base), overrides=overrides, stop_after=None)
    return train_main(args)


def table(out: Path, runs: list[SweepRun]) -> list[dict[str, Any]]:
    """One row per finished run: dev metrics before and after, and the change."""
    rows = []
    for run in runs:
        summary = out / run.name / "summary.json"
        if not summary.is_file():
            continue
        data = json.loads(summary.read_text())
        history, paired = data["history"], data.get("paired", {})
        before, after = history.get("before", {}), history.get("after", {})
        row: dict[str, Any] = {"run": run.name, "set": run.set}
        for key in TABLE_KEYS:
            row[f"{key}_before"], row[f"{key}_after"] = before.get(key), after.get(key)
            ci = paired.get(key)     # the paired bootstrap interval of after - before (train's summary)
            row[f"{key}_diff"] = ci["diff"] if ci else None
            row[f"{key}_ci"] = [ci["low"], ci["high"]] if ci else None
        rows.append(row)
    return rows


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def write_report(out: Path, rows: list[dict[str, Any]]) -> None:
    write_json_atomic(out / "sweep.json", {"runs": rows})
    head = "| run | " + " | ".join(f"{k}: before → after (Δ, 95% CI)" for k in TABLE_KEYS) + " |"
    lines = [head, "|" + "---|" * (len(TABLE_KEYS) + 1)]

    def cell(r: dict[str, Any], k: str) -> str:
        text = f"{_fmt(r[f'{k}_before'])} → {_fmt(r[f'{k}_after'])}"
        if r[f"{k}_ci"] is not None:
            lo, hi = r[f"{k}_ci"]
            text += f" ({r[f'{k}_diff']:+.3f}, [{lo:+.3f}, {hi:+.3f}]{'*' if lo > 0 or hi < 0 else ''})"
        return text

    for r in rows:
        cells = [cell(r, k) for k in TABLE_KEYS]
        lines.append(f"| {r['run']} | " + " | ".join(cells) + " |")
    tmp = out / "sweep.md.tmp"
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(out / "sweep.md")
    if rows:
        plot(out / "sweep.png", rows)


def plot(path: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from orchestration.runtime import save_figure_atomic

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    b = rows[0]
    if b["AL_before"] is not None:
        ax.scatter([b["AL_before"]], [b["quality_before"]], marker="s", color="gray", label="before training")
    for r in rows:
        if r["AL_after"] is None:
            continue
        # bars: the paired 95% interval of the change (after - before), drawn around the after point
        err = [[[r[f"{k}_diff"] - r[f"{k}_ci"][0]], [r[f"{k}_ci"][1] - r[f"{k}_diff"]]] if r[f"{k}_ci"] else None
               for k in ("AL", "quality")]
        ax.errorbar([r["AL_after"]], [r["quality_after"]], xerr=err[0], yerr=err[1], fmt="o", capsize=3)
        ax.annotate(r["run"], (r["AL_after"], r["quality_after"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    ax.set_xlabel("dev AL after training (target units)")
    ax.set_ylabel("dev quality after training")
    ax.set_title("sweep: each run after training (bars: 95% interval of the change)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure_atomic(fig, path)
    plt.close(fig)


def main(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    path = Path(args.config)
    cfg, base = load_sweep(path)
    runs = select(expand(cfg), args.runs)
    out = Path(args.out) if args.out else REPO_ROOT / "runs" / "sweeps" / path.stem
    out = out.resolve()
    check_all(cfg, base, runs, out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.sft_config is not None:
        from orchestration.training.sweep_heldout import warm_start

        warm_start((path.parent / cfg.sft_config).resolve(), out)
    todo = [r for r in runs if run_state(out / r.name) != "done"]
    print(f"sweep {path.stem}: {len(runs)} runs in {out}; {len(runs) - len(todo)} done, {len(todo)} to go")
    bar = tqdm(total=len(runs), initial=len(runs) - len(todo), desc="sweep", unit="run")
    for run in todo:
        bar.set_postfix_str(run.name)
        rc = train_one(base, run_overrides(cfg, run, out / run.name), out / run.name)
        if rc != 0:
            bar.close()
            write_report(out, table(out, runs))
            print(f"run {run.name} stopped (exit {rc}); run the same command again to continue the sweep")
            return rc
        bar.update(1)
        write_report(out, table(out, runs))
    bar.close()
    write_report(out, table(out, runs))
    print((out / "sweep.md").read_text(encoding="utf-8") + f"table: {out / 'sweep.md'}  plot: {out / 'sweep.png'}")
    if cfg.heldout is not None:
        from orchestration.training.sweep_heldout import heldout_scoreboard

        heldout_scoreboard((path.parent / cfg.heldout).resolve(), out, [r.name for r in runs],
                           start=cfg.sft_config is not None)
    return 0
