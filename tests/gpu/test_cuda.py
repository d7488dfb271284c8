"""GPU tests (``-m gpu``; excluded from the default run): vLLM on CUDA with the direct weight
broadcast, the DeepSpeed learner in bf16 on CUDA, COMET on CUDA, and a 2-step train of the tiny
model with every actor on the GPU. All fit one GPU in a few minutes; the NCCL broadcast needs
two GPUs (NCCL refuses two ranks of one group on the same device)."""
from __future__ import annotations

import json
import shutil
import threading

import pytest
import torch

from rollout.config import EngineConfig, EpisodeConfig
from rollout.runner import EpisodeFactory, run_episodes
from rollout.types import Sampling, Source

pytestmark = [pytest.mark.gpu, pytest.mark.slow]   # slow too: `-m "not slow"` stays CPU-only

SOURCES = [Source(0, "Die Katze sitzt auf der Matte und schaut aus dem Fenster", "de", "en"),
           Source(1, "Der Zug nach Berlin hat heute Verspätung", "de", "en")]
ENGINE = EngineConfig(max_model_len=1024, block_size=16, gpu_memory_utilization=0.2, enforce_eager=True)
EPISODE = EpisodeConfig(chunk_size=3, max_new_tokens_per_step=6, max_new_tokens_final=12)


def greedy(engine, tokenizer):
    trajs, _ = run_episodes(engine, EpisodeFactory(tokenizer, EPISODE), SOURCES, 1, Sampling(temperature=0.0))
    return [t.token_ids for t in trajs]


def perturbed(model_dir, seed: int) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    gen = torch.Generator().manual_seed(seed)
    return {n: (t + 0.05 * torch.randn(t.shape, generator=gen)).contiguous()
            for n, t in load_file(model_dir / "model.safetensors").items()}


def send_in_thread(tensors, buckets, port, backend, world=2):
    from learner.weight_broadcast import WeightSender

    errors: list[Exception] = []

    def run():
        try:
            sender = WeightSender("127.0.0.1", port, world, backend, 120, 1)
            on = {n: t.to(sender.device) for n, t in tensors.items()}
            for b in buckets:
                sender.send(b, on)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, errors


def test_vllm_on_cuda_takes_broadcast_weights_like_a_fresh_engine(tiny_model_dir, tiny_tokenizer, tmp_path):
    """gloo into a CUDA engine (one GPU): outputs equal a fresh CUDA engine on the new weights."""
    from safetensors.torch import save_file

    from learner.weight_broadcast import free_port, tensor_layout
    from rollout.engine import VLLMEngine
    from rollout.weights import plan_buckets

    engine = VLLMEngine(str(tiny_model_dir), "bfloat16", ENGINE, seed=0)
    assert engine.gpu
    try:
        new = perturbed(tiny_model_dir, 3)
        buckets = plan_buckets(tensor_layout([(n, t.dtype, t.shape) for n, t in new.items()]), 64 * 1024)
        port = free_port()
        thread, errors = send_in_thread(new, buckets, port, "gloo")
        engine.join_weight_group("127.0.0.1", port, 1, 2, "gloo", 120, 1)
        engine.receive_weights(1, "full", buckets, None, 120)
        thread.join(120)
        assert not errors
        after = greedy(engine, tiny_tokenizer)
    finally:
        engine.shutdown()
    shutil.copytree(tiny_model_dir, tmp_path / "new")
    save_file(new, tmp_path / "new" / "model.safetensors", metadata={"format": "pt"})
    fresh = VLLMEngine(str(tmp_path / "new"), "bfloat16", ENGINE, seed=0)
    try:
        assert after == greedy(fresh, tiny_tokenizer)
    finally:
        fresh.shutdown()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs the sender and the engine on two GPUs")
def test_nccl_broadcast_between_two_gpus(tiny_model_dir, tiny_tokenizer, monkeypatch):
    """The learner side on cuda:1, the engine on cuda:0, NCCL between them."""
    from learner.weight_broadcast import free_port, tensor_layout
    from rollout.engine import VLLMEngine
    from rollout.weights import plan_buckets

    engine = VLLMEngine(str(tiny_model_dir), "bfloat16", ENGINE, seed=0)
    try:
        base = greedy(engine, tiny_tokenizer)
        new = perturbed(tiny_model_dir, 4)
        buckets = plan_buckets(tensor_layout([(n, t.dtype, t.shape) for n, t in new.items()]), 64 * 1024)
        port = free_port()
        torch.cuda.set_device(1)
        thread, errors = send_in_thread(new, buckets, port, "nccl")
        engine.join_weight_group("127.0.0.1", port, 1, 2, "nccl", 120, 1)
        info = engine.receive_weights(1, "full", buckets, None, 120)
        thread.join(120)
        assert not errors and info["weight_version"] == 1
        assert greedy(engine, tiny_tokenizer) != base
    finally:
        engine.shutdown()


def test_deepspeed_learner_bf16_on_cuda(ray_local, tiny_model_dir):
    """One rank on the GPU in bf16 (full fine-tuning: DeepSpeed's bf16 mode), two GRPO steps."""
    from learner.batch import TrainBatch, TrainTrajectory
    from learner.config import LearnerConfig, LoraConfig
    from learner.worker import LearnerWorker, worker_options

    ray = ray_local
    cfg = LearnerConfig(dtype="bfloat16", num_gpus_per_rank=1, num_cpus_per_rank=0, micro_batch_size=4, lr=1e-3,
                        kl_beta=0.02, lora=LoraConfig(enabled=False))
    rank = LearnerWorker.options(**worker_options(cfg)).remote(cfg.model_dump(), str(tiny_model_dir), 0, 1,
                                                               "127.0.0.1", 29517, 0)
    trajs = [TrainTrajectory(list(range(3, 23)), [0] * 10 + [1] * 10, adv, [-3.0] * 20) for adv in (1.0, -1.0, 0.5, -0.5)]
    try:
        first = ray.get(rank.train_step.remote(TrainBatch(trajs)), timeout=300)
        second = ray.get(rank.train_step.remote(TrainBatch(trajs)), timeout=300)
        assert all(torch.isfinite(torch.tensor([m["loss"], m["grad_norm"]])).all() for m in (first, second))
        assert second["kl"] > 0          # the policy moved away from its reference
    finally:
        ray.get(rank.shutdown.remote(), timeout=60)
        ray.kill(rank)


def test_comet_on_cuda(ray_local, tiny_comet_dir):
    """The reward service in .venv-comet with reward.device=cuda: scores equal the CPU service's."""
    from reward.client import RewardClient
    from reward.types import QualityItem, RewardSettings

    items = [QualityItem("Die Katze sitzt", "The cat sits", "The cat sits", "word"),
             QualityItem("Der Zug ist spät", "The train", "The train is late", "word")]
    scores = {}
    for device in ("cpu", "cuda"):
        client = RewardClient(RewardSettings(quality="comet", comet_model=str(tiny_comet_dir), device=device))
        try:
            client.wait_ready(timeout_s=300)
            scores[device] = client.quality(items).scores
        finally:
            client.close()
    assert scores["cuda"] == pytest.approx(scores["cpu"], abs=1e-3)


def test_two_train_steps_with_every_actor_on_the_gpu(ray_local, tiny_model_dir, tmp_path):
    import launch
    from tests.tiny_data import build_tiny_data

    data, run = build_tiny_data(tmp_path / "data", n=8), tmp_path / "run"
    assert launch.main(["train", f"model.path={tiny_model_dir}", "model.dtype=bfloat16", "learner.dtype=bfloat16",
                        f"data.dir={data}", f"run.dir={run}", "rollout.num_gpus_per_worker=0.4",
                        "learner.num_gpus_per_rank=0.4", "rollout.num_cpus_per_worker=0", "learner.num_cpus_per_rank=0",
                        "rollout.engine.gpu_memory_utilization=0.2", "rollout.engine.block_size=16",
                        "rollout.engine.max_model_len=1024", "rollout.episode.max_new_tokens_per_step=4",
                        "rollout.episode.max_new_tokens_final=8", "train.max_source_units=12", "train.dev_size=2",
                        "train.tensorboard=false", "train.steps=2", "train.sources_per_step=2",
                        "rollout.sampling.group_size=2", "train.checkpoint_every=0"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["weight_version"] for r in rows if "weight_version" in r} == {1, 2}
    placement = json.loads((run / "placement.json").read_text())
    assert placement["totals"]["GPU"] == pytest.approx(0.8)
