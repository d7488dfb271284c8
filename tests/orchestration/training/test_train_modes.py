"""train.mode=one_step_off on the tiny model (slow): it learns what sync learns, every batch
after the first is exactly one weight version stale, and a stop + resume trains the batch that
was rolled out ahead exactly once (the same trajectories as the uninterrupted run)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import launch
from tests.orchestration.training.test_loop import WAIT_LESSON_STEPS, _rows, _tiny_run, _wait_lesson
from tests.tiny_data import build_tiny_data


def _rollouts(run: Path, step: int) -> list[dict]:
    return [json.loads(x) for x in (run / "rollouts" / f"step-{step}.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_one_step_off_resume_trains_the_batch_ahead_once(tiny_model_dir, tmp_path, ray_local):
    data = build_tiny_data(tmp_path / "data", n=12)
    common = ["train.steps=3", "train.sources_per_step=2", "train.checkpoint_every=0", "train.mode=one_step_off",
              "rollout.sampling.group_size=2", "train.save_rollouts=true", "learner.is_correction=truncate"]
    full, part = tmp_path / "full", tmp_path / "part"
    assert launch.main(["train", *_tiny_run(tiny_model_dir, data, full, *common)]) == 0
    assert launch.main(["train", "--stop-after", "2", *_tiny_run(tiny_model_dir, data, part, *common)]) == 0
    assert launch.main(["train", "--resume", str(part)]) == 0
    a, b = _rows(full), _rows(part)
    assert [a[s]["groups"] for s in (1, 2, 3)] == [b[s]["groups"] for s in (1, 2, 3)]
    groups = [g for s in (1, 2, 3) for g in a[s]["groups"]]
    assert groups == list(range(6))                       # every draw trained once, none skipped
    assert a[1]["rollout/staleness_max"] == 0
    assert a[2]["rollout/staleness_max"] == a[3]["rollout/staleness_max"] == 1
    assert b[3]["rollout/staleness_max"] == 1             # the resumed run trained the saved batch
    for step in (1, 2, 3):
        ra, rb = _rollouts(full, step), _rollouts(part, step)
        assert [r["token_ids"] for r in ra] == [r["token_ids"] for r in rb], step
        assert [r["reward"] for r in ra] == pytest.approx([r["reward"] for r in rb])
    assert a[3]["learner/loss"] == pytest.approx(b[3]["learner/loss"], abs=1e-6)
    assert "learner/is_weight_mean" in a[3] and a[3]["learner/is_ratio_max"] > 0


@pytest.mark.slow
def test_one_step_off_teaches_the_tiny_model_to_wait_less(tiny_model_dir, tmp_path, ray_local):
    """The sync learning test of test_train.py, overlapped: the same lesson is learned."""
    run = _wait_lesson(tiny_model_dir, tmp_path, "train.mode=one_step_off", "learner.is_correction=truncate")
    steps = WAIT_LESSON_STEPS
    rows = _rows(run)

    def mean(key: str, steps_: range) -> float:
        return sum(rows[s][key] for s in steps_) / len(steps_)

    first, last = range(1, 2), range(steps - 2, steps + 1)
    assert mean("rollout/wait_share", first) > 0.6
    assert mean("rollout/wait_share", last) < mean("rollout/wait_share", first) - 0.3
    assert mean("reward/latency_truncated_mean", last) < mean("reward/latency_truncated_mean", first) - 1.0
    assert all(rows[s]["rollout/staleness_max"] == 1 for s in range(2, steps + 1))
