"""Waiting on learner ranks (Ray, no model): a dead rank is named at once even while the other
blocks, a hung one after the timeout, and the message names the checkpoint to resume from."""
from __future__ import annotations

import pytest

from orchestration.checkpoint import write_checkpoint
from orchestration.training.learners import RunStopped, wait_ranks

pytestmark = pytest.mark.slow


class Rank:
    def __init__(self, rank: int):
        self.rank = rank

    def step(self, seconds: float) -> int:
        import time

        time.sleep(seconds)
        return self.rank

    def die(self) -> None:
        import os

        os._exit(1)


def test_dead_rank_named_while_the_other_blocks(ray_local, tmp_path):
    ray = ray_local
    write_checkpoint(tmp_path, 5, {}, lambda tmp: None)
    actors = [ray.remote(num_cpus=0)(Rank).remote(i) for i in range(2)]
    try:
        assert wait_ranks([a.step.remote(0.0) for a in actors], "train_step", 120, tmp_path) == [0, 1]
        # rank 0 blocks (as in a collective waiting for its peer); rank 1's process dies
        refs = [actors[0].step.remote(300.0), actors[1].die.remote()]
        with pytest.raises(RunStopped, match=rf"learner rank 1 died during train_step \(.*\); the run stopped\. "
                                             rf"last checkpoint: {tmp_path / 'checkpoints' / 'step-5'}; continue with "
                                             rf"`launch.py train --resume {tmp_path}`"):
            wait_ranks(refs, "train_step", 200, tmp_path)
    finally:
        for a in actors:
            ray.kill(a)


def test_hung_rank_stops_after_the_timeout(ray_local, tmp_path):
    ray = ray_local
    actors = [ray.remote(num_cpus=0)(Rank).remote(i) for i in range(2)]
    try:
        assert wait_ranks([a.step.remote(0.0) for a in actors], "warm-up", 120, tmp_path) == [0, 1]
        refs = [actors[0].step.remote(0.0), actors[1].step.remote(300.0)]
        with pytest.raises(RunStopped, match=r"learner rank\(s\) \[1\] did not finish train_step within "
                                             r"train.call_timeout_s=2 s; the run stopped\. no checkpoint was written yet"):
            wait_ranks(refs, "train_step", 2, tmp_path)
    finally:
        for a in actors:
            ray.kill(a)
