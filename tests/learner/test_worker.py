"""LearnerWorker actors: real DeepSpeed engines over gloo on the tiny model (LoRA, fp32).

One module-scoped set of actors: a 1-rank learner and a 2-rank learner trained on the same
batches, then a fresh 1-rank learner restored from a checkpoint.
"""
from __future__ import annotations

import random
import socket

import pytest
import torch

from learner.batch import TrainBatch, TrainTrajectory
from learner.config import LearnerConfig

pytestmark = pytest.mark.slow

CALL_TIMEOUT_S = 300   # the longest a call on a rank may take here (its first waits for DeepSpeed's start)
CFG = LearnerConfig(dtype="float32", micro_batch_size=3, lr=1e-2, kl_beta=0.05, torch_threads=1,
                    num_cpus_per_rank=0.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def batch(seed: int, n: int = 7) -> TrainBatch:
    rng = random.Random(seed)
    trajs = []
    for _ in range(n):
        prompt, action = rng.randint(4, 12), rng.randint(2, 10)
        ids = [rng.randint(3, 500) for _ in range(prompt + action)]
        mask = [0] * prompt + [1] * action
        trajs.append(TrainTrajectory(ids, mask, rng.uniform(-1.5, 1.5), [-rng.uniform(2, 7) * m for m in mask]))
    return TrainBatch(trajs)


def start(ray, model_dir, world_size: int, **changes):
    from learner.worker import LearnerWorker, worker_options

    port = free_port()
    cfg = CFG.model_copy(update={"num_ranks": world_size, **changes})
    return [LearnerWorker.options(**worker_options(cfg)).remote(cfg.model_dump(), str(model_dir), r, world_size,
                                                                "127.0.0.1", port, 0) for r in range(world_size)]


def train(ray, ranks, data: TrainBatch):
    shards = data.split(len(ranks))
    return ray.get([w.train_step.remote(s, data.counts()) for w, s in zip(ranks, shards)], timeout=CALL_TIMEOUT_S)


def stop(ray, ranks):
    try:
        ray.get([w.shutdown.remote() for w in ranks], timeout=60)
    finally:
        for w in ranks:
            ray.kill(w)


def lora_state(ray, worker, *others) -> dict[str, torch.Tensor]:
    """Merged LoRA weights of ``worker`` (under ZeRO-3 every rank must take part: ``others``)."""
    from safetensors.torch import load

    return load(ray.get([w.export_weights.remote("merged") for w in (worker, *others)], timeout=CALL_TIMEOUT_S)[0])


@pytest.fixture(scope="module")
def runs(ray_local, tiny_model_dir, tmp_path_factory):
    """Two steps on 1 rank, on 2 ranks and on 2 ZeRO-3 ranks; the 1-rank learner's step-1
    checkpoint restored into a fresh learner that repeats step 2."""
    ray = ray_local
    one, two = start(ray, tiny_model_dir, 1), start(ray, tiny_model_dir, 2)
    ckpt = tmp_path_factory.mktemp("learner-ckpt") / "learner"
    out = {"one": [], "two": [], "ckpt": ckpt}
    resumed: list = []
    try:
        for step in range(2):
            out["one"].append(train(ray, one, batch(step)))
            out["two"].append(train(ray, two, batch(step)))
            if step == 0:
                ray.get(one[0].save_checkpoint.remote(str(ckpt)), timeout=CALL_TIMEOUT_S)
        out["w_one"], out["w_two"] = lora_state(ray, one[0]), lora_state(ray, two[0])
        out["w_two_rank1"] = lora_state(ray, two[1])
        out["adapter"] = ray.get(one[0].export_weights.remote("adapter"), timeout=CALL_TIMEOUT_S)
        out["full"] = ray.get(one[0].export_weights.remote("full"), timeout=CALL_TIMEOUT_S)
        out["names"] = ray.get(one[0].trainable_names.remote(), timeout=CALL_TIMEOUT_S)
        stop(ray, two)
        two = []
        # the same on 2 ranks under ZeRO-3 (partitioned weights, collective forwards)
        two = zero3 = start(ray, tiny_model_dir, 2, zero_stage=3)
        # and a fresh learner restored from the step-1 checkpoint, to repeat step 2
        resumed = start(ray, tiny_model_dir, 1)
        out["zero3"] = [train(ray, zero3, batch(step)) for step in range(2)]
        out["w_zero3"] = lora_state(ray, *zero3)
        ray.get(resumed[0].load_checkpoint.remote(str(ckpt)), timeout=CALL_TIMEOUT_S)
        out["resumed"] = train(ray, resumed, batch(1))
        out["w_resumed"] = lora_state(ray, resumed[0])
        yield out
    finally:
        for group in (one, two, resumed):
            if group:
                stop(ray, group)


def test_two_ranks_with_accumulation_update_like_one_rank(runs):
    for step in range(2):
        single, (rank0, rank1) = runs["one"][step][0], runs["two"][step]
        timed = {"seconds", "seconds_reference", "seconds_old_logprobs", "seconds_update", "tokens_per_s"}
        assert {k: v for k, v in rank0.items() if k not in timed} == \
            pytest.approx({k: v for k, v in rank1.items() if k not in timed}, rel=1e-12)   # global metrics
        for key in ("loss", "kl", "grad_norm", "clip_frac", "ratio_mean", "logprob_mean",
                    "logprob_mismatch", "tokens", "sequences", "forward_tokens"):
            assert rank0[key] == pytest.approx(single[key], rel=1e-5, abs=1e-8), (step, key)
    assert runs["one"][1][0]["kl"] > 0        # the adapter moved away from the reference
    w1, w2 = runs["w_one"], runs["w_two"]
    assert set(w1) == set(runs["names"]) and set(w1) == set(w2)
    for name in w1:
        assert torch.allclose(w1[name], w2[name], atol=1e-6), name
        assert torch.equal(w2[name], runs["w_two_rank1"][name])   # ranks stay in sync


def test_zero3_two_ranks_update_like_one_rank(runs):
    for step in range(2):
        for key in ("loss", "kl", "grad_norm", "logprob_mismatch"):
            assert runs["zero3"][step][0][key] == pytest.approx(runs["one"][step][0][key], rel=1e-5), (step, key)
    for name, value in runs["w_one"].items():
        assert torch.allclose(runs["w_zero3"][name], value, atol=1e-6), name


def test_exports_match_each_other_after_training(runs, tiny_model_dir, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load
    from transformers import AutoModelForCausalLM

    ids = torch.randint(3, 500, (2, 9), generator=torch.Generator().manual_seed(0))
    merged = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    base_q = merged.state_dict()["model.layers.0.self_attn.q_proj.weight"].clone()
    merged.load_state_dict(runs["w_one"], strict=False)
    assert not torch.allclose(base_q, runs["w_one"]["model.layers.0.self_attn.q_proj.weight"])
    for name, data in runs["adapter"].items():
        (tmp_path / name).write_bytes(data)
    adapter = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), tmp_path).eval()
    full = load(runs["full"])
    assert set(full) == set(merged.state_dict())
    with torch.no_grad():
        want = merged(input_ids=ids).logits
        assert torch.allclose(adapter(input_ids=ids).logits, want, atol=1e-5)
        fresh = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
        fresh.load_state_dict(full)
        assert torch.allclose(fresh(input_ids=ids).logits, want, atol=1e-6)


def test_checkpoint_round_trip_repeats_the_next_step(runs):
    ckpt = runs["ckpt"]
    assert (ckpt / "learner").is_dir() and not ckpt.with_name(ckpt.name + ".tmp").exists()
    again, first = runs["resumed"][0], runs["one"][1][0]
    for key in ("loss", "kl", "grad_norm", "clip_frac", "logprob_mean", "logprob_mismatch"):
        assert again[key] == pytest.approx(first[key], rel=1e-6, abs=1e-9), key
    for name, value in runs["w_one"].items():
        assert torch.allclose(runs["w_resumed"][name], value, atol=1e-7), name


def test_a_dead_builds_lock_is_cleared_and_a_live_one_kept(tmp_path):
    """A JIT build killed midway leaves torch's lock file; a rank must not wait on it forever."""
    import os
    import time

    from learner.worker import STALE_BUILD_LOCK_S, clear_stale_build_locks

    dead, live = tmp_path / "op_a" / "lock", tmp_path / "op_b" / "lock"
    for lock in (dead, live):
        lock.parent.mkdir()
        lock.touch()
    old = time.time() - STALE_BUILD_LOCK_S - 60
    os.utime(dead, (old, old))
    assert clear_stale_build_locks(tmp_path) == [dead]
    assert not dead.exists() and live.exists()
