"""Run-level checkpoints: learner state, exported weights, data cursor, RNG, weight version.

A checkpoint is a directory ``checkpoints/step-N`` written under a temporary name and renamed
when complete; ``checkpoints/latest`` (a one-line file, replaced atomically) names the newest.
A run killed at any moment therefore resumes from a complete checkpoint.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Callable

from orchestration.errors import UserInputError

STATE_FILE = "driver_state.json"


def checkpoint_root(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def write_checkpoint(run_dir: Path, step: int, driver_state: dict[str, Any],
                     write_parts: Callable[[Path], None]) -> Path:
    """Create ``step-N``: ``write_parts(tmp_dir)`` saves learner state and weights into it."""
    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    tmp = root / f".step-{step}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    write_parts(tmp)
    state = dict(driver_state, step=step, python_rng=random.getstate())
    (tmp / STATE_FILE).write_text(json.dumps(state, default=_json_default) + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    latest_tmp = root / ".latest.tmp"
    latest_tmp.write_text(final.name + "\n")
    os.replace(latest_tmp, root / "latest")
    return final


def _json_default(obj: Any) -> Any:
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def latest_checkpoint(run_dir: Path) -> Path:
    root = checkpoint_root(run_dir)
    pointer = root / "latest"
    if not pointer.is_file():
        raise UserInputError(f"{run_dir}: no checkpoint to resume from ({pointer} missing); "
                             "pass a run directory written by `launch.py train`")
    path = root / pointer.read_text().strip()
    if not (path / STATE_FILE).is_file():
        raise UserInputError(f"{path}: incomplete checkpoint ({STATE_FILE} missing)")
    return path


def read_driver_state(ckpt: Path) -> dict[str, Any]:
    state = json.loads((ckpt / STATE_FILE).read_text())
    rng = state.pop("python_rng", None)
    if rng is not None:
        random.setstate((rng[0], tuple(rng[1]), rng[2]))
    return state
