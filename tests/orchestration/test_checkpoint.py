"""Checkpoints under failure: an injected write error (a full disk) at any point of a checkpoint
leaves the previous one intact and `latest` naming it; an unwritable run directory stops
`train` before anything starts."""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

import launch
from orchestration import checkpoint as ck
from orchestration.checkpoint import (CheckpointWriteError, check_writable, latest_checkpoint, newest_checkpoint,
                                      read_driver_state, write_checkpoint)
from orchestration.errors import UserInputError


def _parts(tmp: Path) -> None:
    (tmp / "learner").mkdir()
    (tmp / "learner" / "state.bin").write_bytes(b"x" * 100)


def _full_disk(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device")


def _snapshot(run: Path) -> dict[str, bytes]:
    root = run / "checkpoints"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("where", ["parts", "state", "pointer"])
def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch, where):
    write_checkpoint(tmp_path, 1, {"cursor": {"epoch": 0}}, _parts)
    before = _snapshot(tmp_path)
    parts = _parts
    if where == "parts":
        def parts(tmp):   # the learner's files are half written when the disk fills
            (tmp / "learner").mkdir()
            (tmp / "learner" / "half").write_bytes(b"y")
            _full_disk()
    else:
        real = ck._write_synced
        target = ck.STATE_FILE if where == "state" else ".latest.tmp"
        monkeypatch.setattr(ck, "_write_synced", lambda p, t: _full_disk() if p.name == target else real(p, t))
    with pytest.raises(CheckpointWriteError, match=r"step-2 \(.*No space left on device\); the previous checkpoint "
                                                   r".*step-1 is intact and `latest` names it"):
        write_checkpoint(tmp_path, 2, {"cursor": {"epoch": 1}}, parts)
    assert _snapshot(tmp_path) == before   # nothing partial left, nothing changed
    assert latest_checkpoint(tmp_path).name == "step-1" and newest_checkpoint(tmp_path).name == "step-1"
    assert read_driver_state(latest_checkpoint(tmp_path)) == {"cursor": {"epoch": 0}, "step": 1}


def test_rewriting_a_step_that_fails_keeps_the_old_copy(tmp_path, monkeypatch):
    write_checkpoint(tmp_path, 3, {"v": 1}, _parts)
    before = _snapshot(tmp_path)
    real = ck._write_synced
    monkeypatch.setattr(ck, "_write_synced", lambda p, t: _full_disk() if p.name == ".latest.tmp" else real(p, t))
    with pytest.raises(CheckpointWriteError):
        write_checkpoint(tmp_path, 3, {"v": 2}, _parts)
    assert _snapshot(tmp_path) == before
    monkeypatch.undo()
    write_checkpoint(tmp_path, 3, {"v": 2}, _parts)
    assert read_driver_state(latest_checkpoint(tmp_path))["v"] == 2
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step-3"]


def test_first_checkpoint_failure_says_none_exists(tmp_path):
    with pytest.raises(CheckpointWriteError, match="no earlier checkpoint exists"):
        write_checkpoint(tmp_path, 1, {}, lambda tmp: _full_disk())
    assert newest_checkpoint(tmp_path) is None


def test_unwritable_run_dir_is_refused_before_anything_starts(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    with pytest.raises(UserInputError, match=f"run.dir={blocker / 'run'}: cannot write there"):
        check_writable(blocker / "run")
    # a disk that is full already: the probe write fails
    monkeypatch.setattr(os, "fsync", _full_disk)
    with pytest.raises(UserInputError, match="No space left on device"):
        check_writable(tmp_path / "full")
    monkeypatch.undo()
    from tests.tiny_data import build_tiny_data

    data = build_tiny_data(tmp_path / "data", n=4)
    started = []
    monkeypatch.setattr("orchestration.training.loop.start_ray", lambda *a, **k: started.append(1))
    code = launch.main(["train", f"data.dir={data}", f"run.dir={blocker / 'run'}", "model.path=gpt2-hub-id"])
    assert code == 2 and not started
    assert f"run.dir={blocker / 'run'}: cannot write there" in capsys.readouterr().err


def test_resume_records_the_overrides_it_applied(tmp_path, monkeypatch):
    from orchestration.training import loop as train

    run = tmp_path / "run"
    write_checkpoint(run, 2, {"weight_version": 2, "cursor": {}}, _parts)
    train.record_resume(run, latest_checkpoint(run), ["train.steps=9"])
    train.record_resume(run, latest_checkpoint(run), [])
    rows = [json.loads(x) for x in (run / "resumes.jsonl").read_text().splitlines()]
    assert [(r["checkpoint"], r["overrides"]) for r in rows] == [("step-2", ["train.steps=9"]), ("step-2", [])]


def test_a_full_disk_at_a_checkpoint_ends_train_with_the_intact_checkpoint(tmp_path, monkeypatch, capsys):
    """The loop of `train` around a checkpoint whose write fails (the actors are stubbed out):
    exit status 1, a message naming the intact checkpoint, nothing partial on disk."""
    from orchestration.training import loop as train
    from orchestration.training.dev_eval import DevResult
    from tests.tiny_data import build_tiny_data

    dev = DevResult(quality=1.0, AL=1.0, LAAL=1.0, reward=0.0, empty=0, sentences=2, scorer="chrf")
    calls = {"n": 0}

    def fake_step(self):
        self.cursor.next_batch(self.cfg.train.sources_per_step)
        self.step += 1
        return {"reward/quality_mean": 1.0, "reward/latency_mean": 1.0, "time/step_s": 0.0, "reward/mean": 0.0}

    def parts(tmp):
        calls["n"] += 1
        if calls["n"] == 2:
            _full_disk()
        (tmp / "learner").mkdir()

    def fake_checkpoint(self):
        return write_checkpoint(self.run_dir, self.step, {"weight_version": self.step, "cursor": self.cursor.state(),
                                                          "history": self.history}, parts)

    monkeypatch.setattr(train.TrainingRun, "start", lambda self: None)
    monkeypatch.setattr(train.TrainingRun, "close", lambda self: self.log.close())
    monkeypatch.setattr(train.TrainingRun, "train_step", fake_step)
    monkeypatch.setattr(train.TrainingRun, "evaluate", lambda self, tag: dev)
    monkeypatch.setattr(train.TrainingRun, "checkpoint", fake_checkpoint)
    data = build_tiny_data(tmp_path / "data", n=6)
    run = tmp_path / "run"
    code = launch.main(["train", f"data.dir={data}", f"run.dir={run}", "model.path=some-hub-id", "train.steps=6",
                        "train.checkpoint_every=2", "train.tensorboard=false"])
    err = capsys.readouterr().err
    assert code == 1
    assert f"could not write checkpoint {run / 'checkpoints' / 'step-4'}" in err and "No space left on device" in err
    assert f"the previous checkpoint {run / 'checkpoints' / 'step-2'} is intact" in err
    assert f"launch.py train --resume {run}" in err
    assert latest_checkpoint(run).name == "step-2"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step-2"]
