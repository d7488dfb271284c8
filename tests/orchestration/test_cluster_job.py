"""The README's cluster recipe, run as written against a local head node: ``ray start --head``
(its own temp dir and ports, stopped by its process group at the end) and ``ray job submit``
with the README's entrypoint (``cd`` into the checkout, ``.venv/bin/python launch.py train``),
training the tiny model to the end. Also: a config asking for more GPUs than the cluster has
ends with exit status 2, naming the keys, before any actor starts."""
from __future__ import annotations

import json
import os
import random
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.tiny_data import build_tiny_data

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def tiny_overrides(model, data, run) -> list[str]:
    return [f"model.path={model}", "model.dtype=float32", "learner.dtype=float32", f"data.dir={data}",
            f"run.dir={run}", "learner.num_cpus_per_rank=0", "learner.torch_threads=1", "rollout.num_cpus_per_worker=0",
            "reward.num_cpus=0", "rollout.engine.cpu_kv_cache_gib=1", "rollout.engine.max_model_len=1024",
            "rollout.episode.max_new_tokens_per_step=4", "rollout.episode.max_new_tokens_final=8",
            "train.max_source_units=12", "train.dev_size=2", "train.tensorboard=false", "train.steps=1",
            "train.sources_per_step=2", "rollout.sampling.group_size=2"]


@pytest.fixture(scope="module")
def head_node():
    """``ray start --head --block`` in its own session; yields the dashboard (job API) address."""
    ports = free_ports(9)
    gcs, dash, client, nm, om, agent, agent_grpc, env_agent, metrics = ports
    # Ray refuses a worker-port range that holds any other chosen port. The free ports come from the
    # kernel's ephemeral range (32768+ by default), so the block is drawn below it, and redrawn if
    # a differently configured kernel put one of them inside.
    low = random.randrange(20000, 32400, 200)
    while any(low <= p <= low + 199 for p in ports):
        low = random.randrange(20000, 32400, 200)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    with tempfile.TemporaryDirectory(prefix="srl-job-", dir="/tmp") as temp_dir:
        head = subprocess.Popen(
            [RAY, "start", "--head", "--block", f"--temp-dir={temp_dir}", "--node-ip-address=127.0.0.1",
             f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true",
             f"--ray-client-server-port={client}", f"--node-manager-port={nm}", f"--object-manager-port={om}",
             f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
             f"--runtime-env-agent-port={env_agent}", f"--metrics-export-port={metrics}",
             f"--min-worker-port={low}", f"--max-worker-port={low + 199}", "--num-cpus=2", "--num-gpus=0"],
            env=env, cwd=REPO, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        address = f"http://127.0.0.1:{dash}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    urllib.request.urlopen(f"{address}/api/version", timeout=2)
                    break
                except OSError:
                    if time.monotonic() > deadline or head.poll() is not None:
                        out = head.stdout.read() if head.poll() is not None else ""
                        raise RuntimeError(f"the local head node did not come up:\n{out[-3000:]}") from None
                    time.sleep(1)
            yield address, env
        finally:
            try:
                os.killpg(head.pid, signal.SIGTERM)  # the head and every process it started
            except ProcessLookupError:               # a head that failed to start left no process
                pass
            try:
                head.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(head.pid, signal.SIGKILL)
                head.wait(timeout=30)


def submit(address: str, env: dict, command: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """The README's form: ray job submit --address ... -- bash -c "cd CHECKOUT && .venv/bin/python ..." """
    return subprocess.run([RAY, "job", "submit", "--address", address, "--", "bash", "-c",
                           f"cd {shlex.quote(str(REPO))} && {command}"],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_job_submit_trains_the_tiny_model_to_the_end(head_node, tiny_model_dir, tmp_path):
    address, env = head_node
    data, run = build_tiny_data(tmp_path / "data", n=8), tmp_path / "run"
    args = " ".join(shlex.quote(a) for a in tiny_overrides(tiny_model_dir, data, run))
    proc = submit(address, env, f".venv/bin/python launch.py train --config configs/default.yaml {args}")
    assert proc.returncode == 0 and "succeeded" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 1 and {"before", "after"} <= set(summary["history"])
    assert (run / "checkpoints" / "latest").is_file() or (run / "checkpoints" / "latest").is_symlink()


def test_a_config_bigger_than_the_cluster_exits_2_naming_the_keys(head_node, tiny_model_dir, tmp_path):
    address, env = head_node
    data, run = build_tiny_data(tmp_path / "data", n=8), tmp_path / "run"
    args = " ".join(shlex.quote(a) for a in tiny_overrides(tiny_model_dir, data, run))
    proc = submit(address, env, f".venv/bin/python launch.py train --config configs/default.yaml {args} "
                                "rollout.num_gpus_per_worker=1 learner.num_gpus_per_rank=1", timeout=300)
    assert proc.returncode != 0
    assert "GPU: the config asks for 2, the cluster has 0" in proc.stdout
    assert "rollout.num_workers × rollout.num_gpus_per_worker = 1" in proc.stdout
    assert "exit code 2" in proc.stdout or "exited with code 2" in proc.stdout, proc.stdout[-2000:]
    assert not (run / "checkpoints").exists()
