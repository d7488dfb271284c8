"""The SFT step: cross-entropy on action tokens only, exact across ranks and micro-batches
(toy policy, as in test_step), and on the real DeepSpeed learner actor (tiny model)."""
from __future__ import annotations

import pytest
import torch

from learner.batch import TrainBatch, TrainTrajectory
from learner.policy import collate
from learner.sft_step import sft_eval, sft_step, sft_token_loss
from tests.learner.test_step import ToyRank, World, make_batch, run_on_ranks, toy_logprobs


def by_hand(batch: TrainBatch, theta: torch.Tensor) -> tuple[float, torch.Tensor]:
    inputs = collate(batch)
    theta = theta.detach().clone().requires_grad_(True)
    logp = toy_logprobs(theta, inputs)
    mask = inputs["action_mask"]
    loss = -(logp * mask).sum() / mask.sum()
    loss.backward()
    return loss.item(), theta.grad


def test_loss_counts_action_tokens_only():
    logp = torch.tensor([[0.0, -1.0, -2.0, -3.0]])
    mask = torch.tensor([[0.0, 1.0, 0.0, 1.0]])
    assert float(sft_token_loss(logp, mask, 2)) == pytest.approx(2.0)
    assert float(sft_token_loss(logp, mask, 4)) == pytest.approx(1.0)   # share of a larger global batch


def test_one_step_equals_mean_cross_entropy_by_hand():
    batch = make_batch(n=7, seed=3)
    trainer = ToyRank(lr=0.1)
    theta0 = trainer.theta.detach().clone()
    metrics = sft_step(trainer, batch, micro_batch_size=2, global_tokens=batch.counts()["tokens"])
    loss, grad = by_hand(batch, theta0)
    assert metrics["loss"] == pytest.approx(loss, rel=1e-6)
    assert torch.allclose(trainer.grads[0], grad, atol=1e-7)
    assert len(trainer.grads) == 1 and metrics["tokens"] == batch.counts()["tokens"]
    assert metrics["forward_tokens"] == sum(len(t.token_ids) for t in batch.trajectories)
    # dev loss: same number without an update
    assert sft_eval(ToyRank(), batch, 3)["loss"] == pytest.approx(loss, rel=1e-6)
    with pytest.raises(ValueError, match="action tokens"):
        sft_step(ToyRank(), batch, 2, global_tokens=1)


def test_two_ranks_equal_one_rank():
    batch = make_batch(n=7, seed=4)
    single = ToyRank(lr=0.5)
    one = [sft_step(single, batch, 3) for _ in range(2)]
    world = World(2)
    ranks = [ToyRank(world, r, lr=0.5) for r in range(2)]
    shards = batch.split(2)
    results = run_on_ranks(2, lambda r: sft_step(ranks[r], shards[r], 3, batch.counts()["tokens"]))
    for r in range(2):
        for k in range(2):
            assert torch.allclose(ranks[r].grads[k], single.grads[k], atol=1e-7)
            assert results[r][k]["loss"] == pytest.approx(one[k]["loss"], rel=1e-6)


@pytest.mark.slow
def test_deepspeed_learner_lowers_action_cross_entropy(ray_local, tiny_model_dir):
    """The real learner actor (DeepSpeed, peft LoRA, fp32): SFT steps lower the loss on a batch,
    and on a prefix-layout batch trained under its SimulMask mask and ExPosST positions."""
    from learner.config import LearnerConfig
    from learner.worker import LearnerWorker, worker_options
    from tests.learner.test_worker import free_port

    ray = ray_local
    cfg = LearnerConfig(dtype="float32", micro_batch_size=4, lr=3e-2, kl_beta=0.0, torch_threads=1,
                        num_cpus_per_rank=0.0)
    ids = [[5 + (i * 7 + j * 3) % 400 for j in range(12)] for i in range(6)]
    batch = TrainBatch([TrainTrajectory(x, [0] * 6 + [1] * 6, 0.0, [0.0] * 12) for x in ids])
    worker = LearnerWorker.options(**worker_options(cfg)).remote(cfg.model_dump(), str(tiny_model_dir), 0, 1,
                                                                 "127.0.0.1", free_port(), 0)
    # a prefix-layout batch (SimulMask mask, ExPosST positions): 4 prompt, 6 source, 2 middle, 6 target
    from learner.batch import PrefixSegments

    seg = PrefixSegments(4, 6, 2, 6, source_slots=10)
    prefix = TrainBatch([TrainTrajectory(x + [7, 8, 9, 10, 11, 12], [0] * 12 + [1] * 6, 0.0, [0.0] * 18,
                                         segments=seg, reads=(2, 3, 4, 5, 6, 6)) for x in ids])
    try:
        before = ray.get(worker.sft_eval.remote(batch), timeout=300)
        steps = [ray.get(worker.sft_step.remote(batch, batch.counts()["tokens"]), timeout=300) for _ in range(4)]
        after = ray.get(worker.sft_eval.remote(batch), timeout=300)
        prefix_before = ray.get(worker.sft_eval.remote(prefix), timeout=300)
        prefix_steps = [ray.get(worker.sft_step.remote(prefix, prefix.counts()["tokens"]), timeout=300)
                        for _ in range(4)]
        prefix_after = ray.get(worker.sft_eval.remote(prefix), timeout=300)
    finally:
        ray.get(worker.shutdown.remote(), timeout=60)
        ray.kill(worker)
    assert steps[0]["loss"] == pytest.approx(before["loss"], rel=1e-5)
    assert after["loss"] < before["loss"] - 0.5
    assert before["tokens"] == 36
    assert prefix_steps[0]["loss"] == pytest.approx(prefix_before["loss"], rel=1e-5)
    assert prefix_after["loss"] < prefix_before["loss"] - 0.5 and prefix_before["tokens"] == 36
    assert prefix_steps[0]["forward_tokens"] == 6 * 18
