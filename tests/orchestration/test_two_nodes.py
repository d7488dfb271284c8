"""Two simulated Ray nodes on this machine (ray.cluster_utils.Cluster, custom resources node_a and
node_b): the learner on node A, the rollout engine and the reward service on node B, two real
train steps of the tiny model with the broadcast weight sync across the nodes, stopped after step
1 and resumed from its checkpoint. Runs in a subprocess: this process holds the session's Ray."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from orchestration.checkpoint import latest_checkpoint
from tests.tiny_data import build_tiny_data

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def test_learner_on_one_node_rollout_and_reward_on_the_other(tiny_model_dir, tmp_path):
    data = build_tiny_data(tmp_path / "data", n=8)
    run = tmp_path / "run"
    overrides = [f"model.path={tiny_model_dir}", "model.dtype=float32", "learner.dtype=float32", f"data.dir={data}",
                 "learner.num_cpus_per_rank=0", "learner.torch_threads=1", "rollout.num_cpus_per_worker=0",
                 "reward.num_cpus=0", "rollout.engine.cpu_kv_cache_gib=1", "rollout.engine.max_model_len=1024",
                 "rollout.episode.max_new_tokens_per_step=4", "rollout.episode.max_new_tokens_final=8",
                 "train.max_source_units=12", "train.min_source_units=1", "train.dev_size=2",
                 "train.tensorboard=false", "train.steps=2", "train.sources_per_step=2",
                 "train.checkpoint_every=0", "rollout.sampling.group_size=2"]
    with tempfile.TemporaryDirectory(prefix="srl-2n-", dir="/tmp") as temp_dir:   # short: socket paths
        env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
        env.pop("RAY_ADDRESS", None)
        proc = subprocess.run([sys.executable, "-m", "tests.two_node_run", temp_dir, str(run), *overrides],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["rc"] == [0, 0]
    node_a = [n for n, res in result["nodes"].items() if "node_a" in res]
    node_b = [n for n, res in result["nodes"].items() if "node_b" in res]
    assert len(node_a) == len(node_b) == 1
    placement = json.loads((run / "placement.json").read_text())      # written by the resumed run
    assert placement["actors"]["Learner"] == node_a
    assert placement["actors"]["RolloutWorker"] == node_b and placement["actors"]["RewardWorker"] == node_b
    rows: dict[int, dict] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows.setdefault(row["step"], {}).update(row)
    assert sorted(rows) == [0, 1, 2]
    for step in (1, 2):
        assert rows[step]["weight_version"] == step and rows[step]["sync/bytes"] > 0
    assert latest_checkpoint(run).name == "step-2"
    assert (latest_checkpoint(run) / "adapter" / "adapter_model.safetensors").is_file()
