"""Every curves.png panel plots a key the components really emit (no silently empty panel), and
the metrics log keeps each step once across a resume."""
from __future__ import annotations

from dataclasses import fields

from orchestration.metrics_log import CURVES, MetricsLog, plot_curves
from orchestration.training.dev_eval import DevResult
from orchestration.training.trajectories import group_metrics
from tests.learner.test_step import ToyRank, make_batch


def _emitted_keys() -> set[str]:
    from learner.step import StepSettings, grpo_step
    from reward.scorers import build_scorer
    from reward.service import score_groups
    from reward.types import RewardInput, RewardSettings, ScoreBatch

    batch = make_batch()
    learner = grpo_step(ToyRank(lr=0.1), batch, StepSettings(), batch.counts())
    settings = RewardSettings()
    scorer = build_scorer(settings)
    group = [RewardInput(source="a b c", reference="x y z", hypothesis=h, delays=[1, 2, 3][:len(h.split())],
                         source_length=3, unit="word", chunk_size=1) for h in ("x y z", "x y")]
    rewards, n, _ = score_groups([group], scorer, settings)
    scored = ScoreBatch(rewards, scorer.info, n, n, 0.0, 0.0)
    trajs = [{"pieces": ["x", "y z"], "action_mask": [0, 1, 1], "token_ids": [1, 2, 3], "truncated_steps": 0}] * 2
    keys = {f"learner/{k}" for k in learner}
    keys |= set(group_metrics(scored, trajs, 0))
    keys |= {f"dev/{f.name}" for f in fields(DevResult)}
    keys.add("time/step_s")   # TrainingRun.train_step's own timing (test_train checks it in metrics.jsonl)
    return keys


def test_every_panel_plots_an_emitted_key():
    emitted = _emitted_keys()
    missing = [key for key, _ in CURVES if key not in emitted]
    assert missing == []
    assert "learner/clip_frac" in [key for key, _ in CURVES]


def test_plot_has_a_panel_per_curve(tmp_path):
    log = MetricsLog(tmp_path, tensorboard=False)
    for step in (1, 2):
        log.log(step, {key: float(step) for key, _ in CURVES})
    png = plot_curves(log.rows(), tmp_path / "curves.png")
    assert png is not None and png.stat().st_size > 1000


def test_truncate_after_drops_the_steps_a_checkpoint_does_not_cover(tmp_path):
    log = MetricsLog(tmp_path, tensorboard=False)
    for step in (0, 1, 2, 3):
        log.log(step, {"reward/mean": step / 10})
    log.truncate_after(2)
    log.log(3, {"reward/mean": 0.33})
    assert [(r["step"], r["reward/mean"]) for r in log.rows()] == [(0, 0.0), (1, 0.1), (2, 0.2), (3, 0.33)]
