"""The learner's adapter and merged exports through the broadcast (slow): after a LoRA step, the
adapter sent over the weight group acts exactly like the same adapter sent the old way (bytes
through the driver), and the merged delta reloaded in place gives the same greedy rollouts."""
from __future__ import annotations

import random
import socket

import pytest

from learner.batch import TrainBatch, TrainTrajectory
from learner.config import LearnerConfig, LoraConfig
from rollout.config import EngineConfig, EpisodeConfig, RolloutConfig
from rollout.types import Sampling, Source

pytestmark = pytest.mark.slow

SOURCES = [Source(0, "Die Katze sitzt auf der Matte und schaut aus dem Fenster", "de", "en"),
           Source(1, "Der Zug nach Berlin hat heute Verspätung", "de", "en")]


def greedy(pool):
    trajs, _ = pool.rollout(SOURCES, 1, Sampling(temperature=0.0))
    assert len({t["meta"]["weight_version"] for t in trajs}) == 1
    return [t["token_ids"] for t in trajs], trajs[0]["meta"]["weight_version"]


def test_adapter_and_merged_modes_through_the_weight_group(ray_local, tiny_model_dir):
    from learner.worker import LearnerWorker, worker_options
    from orchestration.weight_sync import WeightSync, push_via_driver
    from rollout.weights import expand_packed
    from rollout.worker import RolloutPool

    ray = ray_local
    cfg = LearnerConfig(dtype="float32", micro_batch_size=4, lr=5e-2, kl_beta=0.0, torch_threads=1,
                        num_cpus_per_rank=0.0, lora=LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rank = LearnerWorker.options(**worker_options(cfg)).remote(cfg.model_dump(), str(tiny_model_dir), 0, 1,
                                                               "127.0.0.1", port, 0)
    rollout = RolloutConfig(episode=EpisodeConfig(chunk_size=3, max_new_tokens_per_step=5, max_new_tokens_final=10),
                            engine=EngineConfig(max_model_len=1024, cpu_kv_cache_gib=1, enable_lora=True,
                                                max_lora_rank=8),
                            num_workers=1, num_cpus_per_worker=0.0)
    pool = RolloutPool(str(tiny_model_dir), "float32", rollout, seed=0, start_timeout_s=300, call_timeout_s=120)
    try:
        base, _ = greedy(pool)
        rng = random.Random(0)
        trajs = []
        for _ in range(8):
            mask = [0] * 6 + [1] * 6
            trajs.append(TrainTrajectory([rng.randint(3, 500) for _ in mask], mask, rng.uniform(-2, 2), [-4.0] * 12))
        ray.get(rank.train_step.remote(TrainBatch(trajs)), timeout=300)

        adapter = WeightSync([rank], pool, "adapter", None, tensor_parallel=1, backend="gloo", bucket_mb=1,
                             timeout_s=120)
        adapter.push(1)
        by_group, version = greedy(pool)
        assert version == 1 and by_group != base
        push_via_driver([rank], pool, "adapter", None, 2, 120)
        assert greedy(pool) == (by_group, 2)

        names = expand_packed(ray.get(rank.trainable_names.remote(), timeout=60))
        merged = WeightSync([rank], pool, "merged", names, tensor_parallel=1, backend="gloo", bucket_mb=1,
                            timeout_s=120)
        merged.push(3)
        assert greedy(pool) == (by_group, 3)
        adapter.close()
        merged.close()
    finally:
        pool.shutdown()
        ray.get(rank.shutdown.remote(), timeout=60)
        ray.kill(rank)
