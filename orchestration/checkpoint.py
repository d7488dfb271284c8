"""Run-level checkpoints: learner state, exported weights, data cursor, weight version.

A checkpoint is a directory ``checkpoints/step-N`` written under a temporary name and renamed
when complete; ``checkpoints/latest`` (a one-line file, replaced atomically) names the newest.
A run killed at any moment therefore resumes from a complete checkpoint, and a write that
fails (a full disk, an unwritable directory) removes its partial copy and leaves the previous
checkpoint and ``latest`` as they were.

No random-generator state is saved because none carries over between steps: data order is a
function of (seed, epoch), rollout sampling of (seed, step, group, sample, turn) and learner
randomness of (seed, step, rank); the cursor in the driver state is all a resume needs.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable

from orchestration.errors import UserInputError

STATE_FILE = "driver_state.json"


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written; the previous one is intact."""


def checkpoint_root(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def check_writable(run_dir: Path, key: str = "run.dir") -> None:
    """Fail before anything starts when ``run_dir`` cannot be created or written."""
    run_dir = Path(run_dir)
    probe = run_dir / f".write-probe-{uuid.uuid4().hex}"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with probe.open("wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise UserInputError(f"{key}={run_dir}: cannot write there ({exc.strerror or exc}); "
                             f"pick a writable directory with {key}=PATH") from None
    finally:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass   # never created


def write_checkpoint(run_dir: Path, step: int, driver_state: dict[str, Any],
                     write_parts: Callable[[Path], None]) -> Path:
    """Create ``step-N``: ``write_parts(tmp_dir)`` saves learner state and weights into it.

    Any error on the way (``OSError`` from a full or read-only disk, or a failed part) leaves
    no partial directory and raises :class:`CheckpointWriteError` naming the intact previous one."""
    root = checkpoint_root(run_dir)
    final = root / f"step-{step}"
    tmp = root / f".step-{step}.tmp"
    old = root / f".step-{step}.old"
    placed = False
    try:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        write_parts(tmp)
        state = dict(driver_state, step=step)
        _write_synced(tmp / STATE_FILE, json.dumps(state) + "\n")
        if final.exists():   # the same step written again (a resumed run redoing it)
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        placed = True
        _write_synced(root / ".latest.tmp", final.name + "\n")
        os.replace(root / ".latest.tmp", root / "latest")
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if placed:   # `latest` could not be moved to it: the new copy must not linger half-adopted
            shutil.rmtree(final, ignore_errors=True)
        if old.exists() and not final.exists():
            os.replace(old, final)   # put back the copy being replaced
        (root / ".latest.tmp").unlink(missing_ok=True)
        previous = newest_checkpoint(run_dir)
        kept = f"the previous checkpoint {previous} is intact and `latest` names it" if previous \
            else "no earlier checkpoint exists"
        raise CheckpointWriteError(f"could not write checkpoint {final} ({exc}); {kept}") from exc
    shutil.rmtree(old, ignore_errors=True)
    return final


def _write_synced(path: Path, text: str) -> None:
    with path.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def newest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint ``latest`` names, if it is complete; None otherwise."""
    pointer = checkpoint_root(run_dir) / "latest"
    try:
        path = checkpoint_root(run_dir) / pointer.read_text().strip()
    except OSError:
        return None
    return path if (path / STATE_FILE).is_file() else None


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
    state.pop("python_rng", None)   # older checkpoints saved it; nothing ever used it
    return state
