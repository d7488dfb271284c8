"""Soak (slow): 50 steps of the tiny model while a rollout worker and the reward actor are killed
at random steps and learner rank 1 dies mid-run. The dead rank ends the run with a message naming
it and the last checkpoint; the resumed run finishes, and every pair drawn was trained exactly once
per draw, in the cursor's order."""
from __future__ import annotations

import json
import random

import pytest

import launch
from orchestration.training.cursor import DataCursor
from tests.orchestration.training.test_loop import _rows, _tiny_run, _train_lines
from tests.tiny_data import build_tiny_data

STEPS, PER_STEP, GROUP = 50, 2, 2


@pytest.mark.slow
def test_soak_with_killed_actors_and_a_dead_learner_rank(tiny_model_dir, tmp_path, ray_local, monkeypatch, capsys):
    import ray

    from orchestration.training import loop as train_mod

    rng = random.Random(15)
    steps = rng.sample(range(2, STEPS + 1), 4)
    kills = {steps[0]: "rollout", steps[1]: "reward", steps[2]: "rollout", steps[3]: "reward"}
    rank_dies_at = rng.randrange(12, 40)
    injected: list[tuple[int, str]] = []
    real_step = train_mod.TrainingRun.train_step

    def step_with_failures(self):
        step = self.step + 1
        what = kills.pop(step, None)
        if what == "rollout":
            ray.kill(self.rollout.workers[0])            # the process dies; the pool must notice
        elif what == "reward":
            ray.kill(self.reward.actors[0], no_restart=False)   # a crash: Ray restarts the replica
        if what:
            injected.append((step, what))
        if step == rank_dies_at and (step, "learner") not in injected:   # once: the resumed run redoes it
            injected.append((step, "learner"))
            ray.kill(self.learners[1])
        return real_step(self)

    monkeypatch.setattr(train_mod.TrainingRun, "train_step", step_with_failures)
    data = build_tiny_data(tmp_path / "data", n=14)
    run = tmp_path / "soak"
    args = _tiny_run(tiny_model_dir, data, run, f"train.steps={STEPS}", f"train.sources_per_step={PER_STEP}",
                     f"rollout.sampling.group_size={GROUP}", "train.checkpoint_every=5", "learner.num_ranks=2",
                     "rollout.episode.max_new_tokens_final=6", "run.seed=3")
    assert launch.main(["train", *args]) == 1
    last = (rank_dies_at - 1) // 5 * 5
    err = capsys.readouterr().err
    assert "learner rank 1 died during train_step" in err, err
    assert f"last checkpoint: {run / 'checkpoints' / f'step-{last}'}" in err, err
    assert launch.main(["train", "--resume", str(run)]) == 0

    assert _train_lines(run) == list(range(1, STEPS + 1))   # every step once, the redone ones included
    rows = _rows(run)
    cursor = DataCursor(size=14, seed=3)
    for step in range(1, STEPS + 1):
        assert rows[step]["groups"] == [(step - 1) * PER_STEP + k for k in range(PER_STEP)], step
        assert rows[step]["sources"] == cursor.next_batch(PER_STEP), step
        assert rows[step]["learner/sequences"] == PER_STEP * GROUP   # each draw's group trained once
    assert sorted(what for _, what in injected) == ["learner", "reward", "reward", "rollout", "rollout"]
    assert max(r.get("rollout/worker_restarts", 0) for r in rows.values()) >= 1
    assert max(r.get("reward/replica_restarts", 0) for r in rows.values()) >= 1
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == STEPS and "after" in summary["history"]
