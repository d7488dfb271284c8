"""launch.py train end to end on the tiny model (slow): exact resume after a clean stop and after
a SIGKILL of the driver (an epoch-boundary batch with a pair drawn twice included); with a
latency-only reward the policy learns to wait less."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import launch
from orchestration.checkpoint import latest_checkpoint
from orchestration.config_loader import load_config
from orchestration.training.dev_instances import PAIRED_METRICS, compare_dev, read_instances
from orchestration.training.cursor import DataCursor
from orchestration.metrics_log import CURVES
from tests.tiny_data import build_tiny_data
from tests.tiny_model import bias_towards_end_of_turn

REPO = Path(__file__).resolve().parents[3]


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


def _boundary_seed(size: int, per_step: int) -> int:
    """A run seed whose epoch-boundary batch holds one pair twice (the last of epoch 0, the first of 1)."""
    for seed in range(1000):
        cur = DataCursor(size=size, seed=seed)
        batches = [cur.next_batch(per_step) for _ in range(-(-size // per_step))]
        if len(set(batches[-1])) < len(batches[-1]):
            return seed
    raise AssertionError("no seed gives a duplicate")


def _rollouts(run: Path, step: int) -> list[dict]:
    return [json.loads(x) for x in (run / "rollouts" / f"step-{step}.jsonl").read_text().splitlines()]


def _weights(run: Path, step: int) -> dict:
    from safetensors.torch import load_file

    return load_file(run / "checkpoints" / f"step-{step}" / "adapter" / "adapter_model.safetensors")


def _assert_same_step(a: Path, b: Path, step: int) -> None:
    """Same trajectories (token ids), rewards, losses at ``step``; log-probs to float tolerance."""
    ra, rb = _rollouts(a, step), _rollouts(b, step)
    assert [(r["group"], r["source_index"], r["sample"], r["token_ids"], r["hypothesis"]) for r in ra] == \
        [(r["group"], r["source_index"], r["sample"], r["token_ids"], r["hypothesis"]) for r in rb], step
    assert [r["reward"] for r in ra] == pytest.approx([r["reward"] for r in rb], abs=1e-9)
    assert [r["advantage"] for r in ra] == pytest.approx([r["advantage"] for r in rb], abs=1e-9)
    for x, y in zip(ra, rb):
        assert x["logprobs"] == pytest.approx(y["logprobs"], abs=1e-5)
    ma, mb = _rows(a)[step], _rows(b)[step]
    for key in ("learner/loss", "learner/kl", "learner/grad_norm", "learner/logprob_mean", "reward/mean"):
        assert ma[key] == pytest.approx(mb[key], rel=1e-6, abs=1e-9), (step, key)


def _train_lines(run: Path) -> list[int]:
    """The step of every training line of metrics.jsonl (dev lines carry no reward)."""
    return [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "reward/mean" in r]


@pytest.mark.slow
def test_exact_resume_after_a_clean_stop_and_after_sigkill(tiny_model_dir, tmp_path, ray_local):
    """Two fresh runs draw the same trajectories; a run stopped after step 2, and one whose driver
    was SIGKILLed in the middle of step 2, resume into the uninterrupted run's token ids, rewards,
    losses and weights. Step 3 is an epoch-boundary batch holding one pair twice."""
    data = build_tiny_data(tmp_path / "data", n=5)
    seed = _boundary_seed(5, 2)
    common = ["train.steps=3", "train.sources_per_step=2", "train.checkpoint_every=1", "train.save_rollouts=true",
              "rollout.sampling.group_size=2", "rollout.sampling.top_p=0.9", f"run.seed={seed}"]
    full, part, killed = tmp_path / "full", tmp_path / "part", tmp_path / "killed"

    # the driver killed mid-step: a subprocess with its own Ray, SIGKILLed once step 1's checkpoint
    # is complete (so in step 2); everything it started goes with its session
    log = (tmp_path / "killed.log").open("w")
    proc = subprocess.Popen([sys.executable, "launch.py", "train", *_tiny_run(tiny_model_dir, data, killed, *common)],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    pointer = killed / "checkpoints" / "latest"
    deadline = time.monotonic() + 900
    try:
        while proc.poll() is None and not (pointer.is_file() and pointer.read_text().strip() == "step-1"):
            assert time.monotonic() < deadline, "the run never wrote its step-1 checkpoint"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)   # the Ray processes the killed driver left behind
        except ProcessLookupError:
            pass
    log.close()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    assert _train_lines(killed) == [1]            # killed after step 1, before step 2 was logged

    assert launch.main(["train", *_tiny_run(tiny_model_dir, data, full, *common)]) == 0
    assert launch.main(["train", "--stop-after", "2", *_tiny_run(tiny_model_dir, data, part, *common)]) == 0
    assert latest_checkpoint(part).name == "step-2" and _train_lines(part) == [1, 2]
    for step in (1, 2):                            # two fresh runs of one config and seed
        _assert_same_step(full, part, step)
    assert launch.main(["train", "--resume", str(part), "train.call_timeout_s=900"]) == 0
    assert launch.main(["train", "--resume", str(killed)]) == 0

    for run in (part, killed):
        _assert_same_step(full, run, 3)
        if run is killed:
            _assert_same_step(full, run, 1)        # a fresh run in another process, its own Ray
            _assert_same_step(full, run, 2)        # the step the kill interrupted, redone
        assert _train_lines(run) == [1, 2, 3]      # each step once
        wa, wb = _weights(full, 3), _weights(run, 3)
        assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
        assert not all(torch.equal(wa[k], _weights(full, 1)[k]) for k in wa)   # training moved them
    resumes = [json.loads(x) for x in (part / "resumes.jsonl").read_text().splitlines()]
    assert resumes == [{"time": resumes[0]["time"], "checkpoint": "step-2", "overrides": ["train.call_timeout_s=900"]}]
    assert load_config(part / "config.yaml").train.call_timeout_s == 900

    rows = _rows(full)
    assert len(set(rows[3]["sources"])) == 1 and rows[3]["groups"] == [4, 5]   # one pair, two groups
    by_group = {g: [r for r in _rollouts(full, 3) if r["group"] == g] for g in (4, 5)}
    assert [len(v) for v in by_group.values()] == [2, 2]
    assert [r["token_ids"] for r in by_group[4]] != [r["token_ids"] for r in by_group[5]]   # own draws
    for key, _ in CURVES:                          # every panel of curves.png has data
        assert any(key in r for r in rows.values()), key
    summary = json.loads((part / "summary.json").read_text())
    assert summary["steps"] == 3 and {"before", "after"} <= set(summary["history"])


WAIT_LESSON_STEPS = 8


def _wait_lesson(tiny_model_dir: Path, tmp_path: Path, *extra: str) -> Path:
    """Train a tiny model biased to wait (P(wait) ~0.84 on the first turn) with the latency-only
    reward for WAIT_LESSON_STEPS steps; the run directory."""
    model = tmp_path / "waiting-model"
    shutil.copytree(tiny_model_dir, model)
    bias_towards_end_of_turn(model, logit=0.9)
    data = build_tiny_data(tmp_path / "data", n=40)
    run = tmp_path / "run"
    assert launch.main(["train", *_tiny_run(
        model, data, run, f"train.steps={WAIT_LESSON_STEPS}", "train.sources_per_step=4",
        "train.checkpoint_every=0", "train.min_source_units=8", "rollout.sampling.group_size=4",
        # latency alone as SeqPO published it (AL, floored at the chunk, no length gate: a random
        # model's output length says nothing here), in the one-piece-per-turn layout, where every
        # wait given up moves a whole piece earlier
        "reward.mode=latency_only", "reward.latency_metric=al", "reward.latency_floor=null",
        "reward.length_gate=null", "rollout.episode.layout=pieces",
        "learner.lora.enabled=false", "rollout.weight_sync=full",
        "learner.lr=3e-3", "learner.kl_beta=0.0", "run.seed=1", *extra)]) == 0
    return run


@pytest.mark.slow
def test_latency_only_reward_teaches_the_tiny_model_to_wait_less(tiny_model_dir, tmp_path, ray_local):
    run, steps = _wait_lesson(tiny_model_dir, tmp_path), WAIT_LESSON_STEPS
    rows = _rows(run)

    def mean(key: str, steps_: range) -> float:
        return sum(rows[s][key] for s in steps_) / len(steps_)

    first, last = range(1, 2), range(steps - 2, steps + 1)   # step 1 ran on the untrained policy
    assert mean("rollout/wait_share", first) > 0.6    # the biased start mostly waits
    assert mean("rollout/wait_share", last) < mean("rollout/wait_share", first) - 0.3
    # latency with empty hypotheses counted at their worst (as the reward counts them)
    assert mean("reward/latency_truncated_mean", last) < mean("reward/latency_truncated_mean", first) - 1.0

    # every dev evaluation wrote its sentences as instances; the table's intervals come from them
    summary = json.loads((run / "summary.json").read_text())
    for tag in ("before", "after"):
        rows_ = read_instances(run / "dev" / tag / "instances.jsonl")
        assert [r["index"] for r in rows_] == [0, 1]                  # train.dev_size=2
        for r in rows_:
            assert {"source_length", "delays", "prediction", "reference", "quality", "AL", "LAAL",
                    "wait_share", "length_ratio", "reward"} <= set(r)
            assert len(r["delays"]) == len(r["prediction"].split()) and r["source_length"] > 0
        hist = summary["history"][tag]
        assert sum(r["reward"] for r in rows_) / 2 == pytest.approx(hist["reward"])
        assert sum(r["quality"] for r in rows_) / 2 == pytest.approx(hist["quality"])
    paired = compare_dev(run)
    assert set(summary["paired"]) == set(PAIRED_METRICS)
    for key, ci in paired.items():
        assert summary["paired"][key]["diff"] == pytest.approx(ci.diff, nan_ok=True)
        assert summary["paired"][key]["before"] == pytest.approx(ci.before, nan_ok=True)
