"""The GRPO update loop against grpo.py applied by hand, on a toy policy (no DeepSpeed).

The toy policy scores token t with log sigmoid(theta[t]): every quantity of the step can be
recomputed by hand on the whole padded batch. Data-parallel ranks are simulated with threads
that all-reduce through a barrier and average gradients like DeepSpeed does.
"""
from __future__ import annotations

import random
import threading

import pytest
import torch
import torch.nn.functional as F

from learner.batch import TrainBatch, TrainTrajectory
from learner.grpo import aggregate_loss, grpo_token_loss, masked_mean
from learner.policy import collate
from learner.step import StepSettings, grpo_step, plan_micro_batches, split_minibatches

VOCAB = 40


class World:
    """In-process stand-in for a process group: all-reduce over threads."""

    def __init__(self, size: int):
        self.size = size
        self.barrier = threading.Barrier(size, timeout=60)   # a rank that fails breaks it: no hang
        self.slots: list[torch.Tensor | None] = [None] * size

    def all_reduce(self, rank: int, values: torch.Tensor, op: str) -> torch.Tensor:
        self.slots[rank] = values.clone()
        self.barrier.wait()
        stacked = torch.stack(self.slots)  # type: ignore[arg-type]
        out = stacked.sum(0) if op == "sum" else stacked.max(0).values
        self.barrier.wait()
        return out


class ToyRank:
    def __init__(self, world: World | None = None, rank: int = 0, lr: float = 0.0):
        self.world, self.rank = world, rank
        self.world_size = world.size if world else 1
        gen = torch.Generator().manual_seed(0)
        self.theta = torch.nn.Parameter(torch.randn(VOCAB, generator=gen))
        self.theta_ref = torch.randn(VOCAB, generator=gen)
        self.opt = torch.optim.SGD([self.theta], lr=lr)
        self.grads: list[torch.Tensor] = []
        self.passes: list[tuple[bool, bool]] = []

    def logprobs(self, inputs, *, reference, grad):
        self.passes.append((reference, grad))
        table = self.theta_ref if reference else self.theta
        with torch.set_grad_enabled(grad):
            return toy_logprobs(table, inputs)

    def backward(self, loss, boundary):
        loss.backward()

    def step(self):
        grad = self.theta.grad.detach().clone()
        if self.world:   # DeepSpeed averages gradients over ranks
            grad = self.all_reduce(grad.double(), "sum").float() / self.world_size
            self.theta.grad.copy_(grad)
        self.grads.append(grad)
        self.opt.step()
        self.opt.zero_grad()
        return float(grad.norm())

    def all_reduce(self, values, op):
        return self.world.all_reduce(self.rank, values, op) if self.world else values.clone()


def toy_logprobs(table: torch.Tensor, inputs) -> torch.Tensor:
    keep = (inputs["action_mask"] > 0) & (inputs["attention_mask"] > 0)
    keep[:, 0] = False
    return torch.where(keep, F.logsigmoid(table[inputs["input_ids"]]), torch.zeros(()))


def run_on_ranks(world_size: int, step, times: int = 2) -> list[list]:
    """``step(rank)`` ``times`` times on every rank, one thread per rank (their collectives meet in
    the toy World); the results per rank, in order."""
    results: list[list] = [[] for _ in range(world_size)]

    def run(r):
        for _ in range(times):
            results[r].append(step(r))

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world_size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def make_batch(n: int = 7, seed: int = 0) -> TrainBatch:
    rng = random.Random(seed)
    trajs = []
    for _ in range(n):
        length = rng.randint(4, 12)
        mask = [0] + [int(rng.random() < 0.6) for _ in range(length - 1)]
        trajs.append(TrainTrajectory([rng.randrange(VOCAB) for _ in range(length)], mask,
                                     rng.uniform(-1.5, 1.5), [-rng.random() * m for m in mask]))
    return TrainBatch(trajs)


def by_hand(batch: TrainBatch, theta: torch.Tensor, old_theta: torch.Tensor, theta_ref, s: StepSettings):
    """Loss, its gradient in theta, and token stats of one update on the whole ``batch``."""
    inputs = collate(batch)
    theta = theta.detach().clone().requires_grad_(True)
    logp = toy_logprobs(theta, inputs)
    old = toy_logprobs(old_theta, inputs)
    ref = toy_logprobs(theta_ref, inputs) if s.kl_beta > 0 else None
    mask = inputs["action_mask"]
    out = grpo_token_loss(logp, old, inputs["advantages"], mask, s.clip_low, s.clip_high, s.kl_beta, ref)
    counts = batch.counts()
    loss = aggregate_loss(out.loss, mask, s.loss_agg, counts["tokens"], counts["sequences"])
    loss.backward()
    return loss.item(), theta.grad, out, inputs


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_single_update_equals_grpo_functions_by_hand(agg):
    batch = make_batch()
    s = StepSettings(clip_low=0.2, clip_high=0.28, kl_beta=0.05, loss_agg=agg, micro_batch_size=2)
    trainer = ToyRank(lr=0.1)
    theta0 = trainer.theta.detach().clone()
    metrics = grpo_step(trainer, batch, s, batch.counts())
    loss, grad, out, inputs = by_hand(batch, theta0, theta0, trainer.theta_ref, s)
    mask = inputs["action_mask"]
    assert metrics["loss"] == pytest.approx(loss, rel=1e-6, abs=1e-9)
    assert torch.allclose(trainer.grads[0], grad, atol=1e-7)
    assert metrics["kl"] == pytest.approx(masked_mean(out.kl.detach(), mask), rel=1e-6)
    assert metrics["clip_frac"] == 0.0 and metrics["ratio_mean"] == pytest.approx(1.0)
    assert metrics["grad_norm"] == pytest.approx(float(grad.norm()), rel=1e-6)
    logp0 = toy_logprobs(theta0, inputs)
    assert metrics["logprob_mean"] == pytest.approx(masked_mean(logp0, mask), rel=1e-6)
    mismatch = (inputs["rollout_logprobs"] - logp0).abs()
    assert metrics["logprob_mismatch"] == pytest.approx(masked_mean(mismatch, mask), rel=1e-6)
    assert metrics["tokens"] == batch.counts()["tokens"] and metrics["updates"] == 1
    # one update: the old log-probs are the gradient pass's own values, no extra forward
    assert (False, False) not in trainer.passes and metrics["seconds_old_logprobs"] == 0.0
    assert metrics["seconds_reference"] > 0


def test_several_updates_use_old_logprobs_from_before_the_first():
    batch = make_batch(n=6, seed=1)
    s = StepSettings(clip_low=0.1, clip_high=0.1, kl_beta=0.0, ppo_epochs=2, num_minibatches=2,
                     micro_batch_size=2)
    trainer = ToyRank(lr=2.0)
    theta0 = trainer.theta.detach().clone()
    metrics = grpo_step(trainer, batch, s)
    assert (False, False) in trainer.passes and metrics["updates"] == 4
    halves = split_minibatches(len(batch), 2)
    theta = theta0.clone()
    for k, grad in enumerate(trainer.grads):
        part = TrainBatch([batch.trajectories[i] for i in halves[k % 2]])
        _, want, _, _ = by_hand(part, theta, theta0, None, s)
        assert torch.allclose(grad, want, atol=1e-6), k
        theta = theta - 2.0 * want
    assert metrics["clip_frac"] > 0 and metrics["ratio_max"] > 1.1


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_two_ranks_with_accumulation_equal_one_rank(agg):
    batch = make_batch(n=7, seed=2)
    s = StepSettings(kl_beta=0.02, loss_agg=agg, micro_batch_size=3)
    single = ToyRank(lr=0.5)
    one = [grpo_step(single, batch, s, batch.counts()) for _ in range(2)]
    world = World(2)
    ranks = [ToyRank(world, r, lr=0.5) for r in range(2)]
    shards = batch.split(2)       # 4 and 3 trajectories: rank 1 runs a zero-weight filler micro-batch
    results = run_on_ranks(2, lambda r: grpo_step(ranks[r], shards[r], s, batch.counts()))
    for r in range(2):
        for k in range(2):
            assert torch.allclose(ranks[r].grads[k], single.grads[k], atol=1e-7)
            for key in ("loss", "kl", "grad_norm", "logprob_mismatch", "tokens", "clip_frac"):
                assert results[r][k][key] == pytest.approx(one[k][key], rel=1e-6, abs=1e-9), key
        assert torch.allclose(ranks[r].theta, single.theta, atol=1e-7)


def test_wrong_global_counts_and_empty_shards_are_refused():
    batch = make_batch(n=3)
    with pytest.raises(ValueError, match="lost or duplicated"):
        grpo_step(ToyRank(), batch, StepSettings(), {"tokens": 1, "sequences": 3})
    with pytest.raises(ValueError, match="no trajectories"):
        grpo_step(ToyRank(), TrainBatch([]), StepSettings())


def test_micro_batch_plan_sorts_and_pads_with_zero_weight_fillers():
    assert split_minibatches(5, 2) == [[0, 1], [2, 3, 4]]
    assert split_minibatches(1, 3) == [[], [0], []]
    plan = plan_micro_batches([0, 1, 2], [5, 9, 7], size=2, count=3, filler=0)
    assert plan == [([1, 2], 1.0), ([0], 1.0), ([0], 0.0)]
    with pytest.raises(ValueError):
        plan_micro_batches([0, 1, 2], [1, 1, 1], size=1, count=2, filler=0)
