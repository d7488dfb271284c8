"""Two CPU learner ranks under ZeRO-2 and ZeRO-3 (full fine-tuning, the tiny model; ZeRO-3
built inside zero.Init): a GRPO step, the direct weight broadcast into a running engine (its
greedy rollouts must equal a fresh engine started on the weights all ranks saved), and a
checkpoint save + load that repeats the next step exactly."""
from __future__ import annotations

import random
import shutil
import socket

import pytest

from learner.batch import TrainBatch, TrainTrajectory
from learner.config import LearnerConfig, LoraConfig
from rollout.config import EngineConfig, EpisodeConfig, RolloutConfig
from rollout.types import Sampling, Source

pytestmark = pytest.mark.slow

SOURCES = [Source(0, "Die Katze sitzt auf der Matte und schaut aus dem Fenster", "de", "en"),
           Source(1, "Der Zug nach Berlin hat heute Verspätung", "de", "en")]
ROLLOUT = RolloutConfig(episode=EpisodeConfig(chunk_size=3, max_new_tokens_per_step=5, max_new_tokens_final=10),
                        engine=EngineConfig(max_model_len=1024, cpu_kv_cache_gib=1),
                        num_workers=1, num_cpus_per_worker=0.0, weight_sync="full", weight_bucket_mb=1)


def batch(seed: int, n: int = 6) -> TrainBatch:
    rng = random.Random(seed)
    trajs = []
    for _ in range(n):
        prompt, action = rng.randint(4, 10), rng.randint(2, 8)
        mask = [0] * prompt + [1] * action
        trajs.append(TrainTrajectory([rng.randint(3, 500) for _ in mask], mask, rng.uniform(-1.5, 1.5),
                                     [-rng.uniform(2, 7) * m for m in mask]))
    return TrainBatch(trajs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def greedy(pool):
    trajs, _ = pool.rollout(SOURCES, 1, Sampling(temperature=0.0))
    return [t["token_ids"] for t in trajs]


@pytest.fixture(scope="module")
def pool(ray_local, tiny_model_dir):
    from rollout.worker import RolloutPool

    p = RolloutPool(str(tiny_model_dir), "float32", ROLLOUT, seed=0, start_timeout_s=300, call_timeout_s=120)
    p.base_outputs = greedy(p)      # on the initial weights, before any sync
    yield p
    p.shutdown()


@pytest.mark.parametrize("stage", [2, 3])
def test_two_ranks_step_sync_and_checkpoint(stage, ray_local, pool, tiny_model_dir, tmp_path):
    from learner.worker import LearnerWorker, worker_options
    from orchestration.weight_sync import WeightSync
    from rollout.worker import RolloutPool

    ray = ray_local
    cfg = LearnerConfig(num_ranks=2, zero_stage=stage, dtype="float32", micro_batch_size=3, lr=5e-2, kl_beta=0.0,
                        torch_threads=1, num_cpus_per_rank=0.0, lora=LoraConfig(enabled=False))
    port = free_port()
    ranks = [LearnerWorker.options(**worker_options(cfg)).remote(cfg.model_dump(), str(tiny_model_dir), r, 2,
                                                                "127.0.0.1", port, 0) for r in range(2)]

    def step(data):
        shards = data.split(2)
        return ray.get([w.train_step.remote(s, data.counts()) for w, s in zip(ranks, shards)], timeout=300)

    try:
        first = step(batch(0))
        assert first[0]["loss"] == pytest.approx(first[1]["loss"])
        sync = WeightSync(ranks, pool, "full", None, tensor_parallel=1, backend="gloo", bucket_mb=1, timeout_s=120)
        sync.connect()
        info = sync.push(1)
        assert info["buckets"] > 1 and pool.infos and info["bytes"] > 0
        synced = greedy(pool)
        assert synced != pool.base_outputs

        # every rank saves (under ZeRO-3 a collective); a fresh engine on those weights agrees
        model_dir = tmp_path / "model"
        shutil.copytree(tiny_model_dir, model_dir)
        (model_dir / "model.safetensors").unlink()
        written = ray.get([w.save_weights.remote(str(model_dir), "full") for w in ranks], timeout=300)
        assert written[0] == ["model.safetensors"] and written[1] == []
        fresh = RolloutPool(str(model_dir), "float32", ROLLOUT, seed=0, start_timeout_s=300, call_timeout_s=120)
        try:
            assert greedy(fresh) == synced
        finally:
            fresh.shutdown()

        ckpt = tmp_path / "learner"
        ray.get([w.save_checkpoint.remote(str(ckpt)) for w in ranks], timeout=300)
        second = step(batch(1))
        ray.get([w.load_checkpoint.remote(str(ckpt)) for w in ranks], timeout=300)
        again = step(batch(1))
        for key in ("loss", "grad_norm", "logprob_mean", "clip_frac"):
            assert again[0][key] == pytest.approx(second[0][key], rel=1e-6, abs=1e-9), key
        sync.close()
    finally:
        try:
            ray.get([w.shutdown.remote() for w in ranks], timeout=60)
        finally:
            for w in ranks:
                ray.kill(w)


def test_a_replacement_rollout_worker_joins_and_receives_the_current_weights(ray_local, pool, tiny_model_dir):
    """Kill the engine's worker after a sync: the pool starts a new one, the group re-forms with it,
    it receives the current version, and the redone rollouts equal those before the kill."""
    import os
    import signal

    from learner.worker import LearnerWorker, worker_options
    from orchestration.weight_sync import WeightSync

    ray = ray_local
    cfg = LearnerConfig(num_ranks=1, dtype="float32", micro_batch_size=3, lr=5e-2, kl_beta=0.0, torch_threads=1,
                        num_cpus_per_rank=0.0, lora=LoraConfig(enabled=False))
    rank = LearnerWorker.options(**worker_options(cfg)).remote(cfg.model_dump(), str(tiny_model_dir), 0, 1,
                                                               "127.0.0.1", free_port(), 0)
    try:
        ray.get(rank.train_step.remote(batch(5)), timeout=300)
        sync = WeightSync([rank], pool, "full", None, tensor_parallel=1, backend="gloo", bucket_mb=1, timeout_s=120)
        pool.on_replace = sync.replace
        sync.push(7)
        before, _ = pool.rollout(SOURCES, 1, Sampling(temperature=0.0))
        restarts = pool.restarts
        os.kill(pool.infos[0]["pid"], signal.SIGKILL)
        after, _ = pool.rollout(SOURCES, 1, Sampling(temperature=0.0))
        assert pool.restarts == restarts + 1 and sync.generation == 2
        assert {t["meta"]["weight_version"] for t in after} == {7}
        assert [t["token_ids"] for t in after] == [t["token_ids"] for t in before]
        assert [t["token_ids"] for t in after] != pool.base_outputs
        sync.close()
    finally:
        pool.on_replace = None
        ray.get(rank.shutdown.remote(), timeout=60)
        ray.kill(rank)
