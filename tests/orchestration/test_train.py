"""launch.py train end to end on the tiny model (slow): stop after step 2 and resume gives the
uninterrupted run's step 3 batch; with a latency-only reward the policy learns to wait less."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import launch
from orchestration.checkpoint import latest_checkpoint
from tests.tiny_data import build_tiny_data
from tests.tiny_model import bias_towards_end_of_turn

REPO = Path(__file__).resolve().parents[2]


def _tiny_run(model: Path, data: Path, run: Path, *extra: str) -> list[str]:
    """Overrides for a short CPU run of the tiny model (fp32, one learner rank, chrF)."""
    return [f"model.path={model}", "model.dtype=float32", "learner.dtype=float32", f"data.dir={data}",
            f"run.dir={run}", "ray.num_cpus=2", "learner.num_cpus_per_rank=0", "learner.torch_threads=1",
            "rollout.num_cpus_per_worker=0", "rollout.engine.cpu_kv_cache_gib=1",
            "rollout.engine.max_model_len=1024", "rollout.episode.max_new_tokens_per_step=4",
            "rollout.episode.max_new_tokens_final=8", "train.max_source_units=12", "train.min_source_units=1",
            "train.dev_size=2", "train.tensorboard=false", *extra]


def _rows(run: Path) -> dict[int, dict]:
    rows: dict[int, dict] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows.setdefault(row["step"], {}).update(row)
    return rows


@pytest.mark.slow
def test_resume_after_step_2_runs_the_uninterrupted_step_3(tiny_model_dir, tmp_path, ray_local):
    data = build_tiny_data(tmp_path / "data", n=12)
    common = ["train.steps=3", "train.sources_per_step=2", "train.checkpoint_every=0",
              "rollout.sampling.group_size=2"]
    full, part = tmp_path / "full", tmp_path / "part"
    assert launch.main(["train", *_tiny_run(tiny_model_dir, data, full, *common)]) == 0
    assert launch.main(["train", "--stop-after", "2", *_tiny_run(tiny_model_dir, data, part, *common)]) == 0
    assert latest_checkpoint(part).name == "step-2" and max(_rows(part)) == 2
    assert launch.main(["train", "--resume", str(part)]) == 0

    a, b = _rows(full), _rows(part)
    assert sorted(a) == sorted(b) == [0, 1, 2, 3]
    for step in (1, 2, 3):
        assert a[step]["sources"] == b[step]["sources"], step
        assert a[step]["weight_version"] == b[step]["weight_version"] == step
    assert len(set(map(tuple, (a[s]["sources"] for s in (1, 2, 3))))) == 3   # the cursor moves on
    lines = (part / "metrics.jsonl").read_text().splitlines()
    assert sum(json.loads(x)["step"] == 3 for x in lines) == sum(json.loads(x)["step"] == 3
                                                                  for x in (full / "metrics.jsonl").read_text().splitlines())
    assert latest_checkpoint(part).name == "step-3" and (part / "curves.png").is_file()
    summary = json.loads((part / "summary.json").read_text())
    assert summary["steps"] == 3 and {"before", "after"} <= set(summary["history"])


@pytest.mark.slow
def test_latency_only_reward_teaches_the_tiny_model_to_wait_less(tiny_model_dir, tmp_path, ray_local):
    model = tmp_path / "waiting-model"
    shutil.copytree(tiny_model_dir, model)
    bias_towards_end_of_turn(model, logit=0.9)   # P(wait) ~0.84 on the first turn
    data = build_tiny_data(tmp_path / "data", n=40)
    run = tmp_path / "run"
    steps = 8
    assert launch.main(["train", *_tiny_run(
        model, data, run, f"train.steps={steps}", "train.sources_per_step=4", "train.checkpoint_every=0",
        "train.min_source_units=8", "rollout.sampling.group_size=4", "reward.mode=latency_only",
        "learner.lora.enabled=false", "rollout.weight_sync=full", "learner.lr=3e-3", "learner.kl_beta=0.0",
        "run.seed=1")]) == 0
    rows = _rows(run)

    def mean(key: str, steps_: range) -> float:
        return sum(rows[s][key] for s in steps_) / len(steps_)

    first, last = range(1, 2), range(steps - 2, steps + 1)   # step 1 ran on the untrained policy
    assert mean("rollout/wait_share", first) > 0.6    # the biased start mostly waits
    assert mean("rollout/wait_share", last) < mean("rollout/wait_share", first) - 0.3
    # latency with empty hypotheses counted at their worst (as the reward counts them)
    assert mean("reward/latency_truncated_mean", last) < mean("reward/latency_truncated_mean", first) - 1.0
