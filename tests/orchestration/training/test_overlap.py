"""RolloutAhead: what is produced ahead, on which weights, and what a checkpoint keeps."""
from __future__ import annotations

import threading
import time

import pytest

from orchestration.training.overlap import RolloutAhead, depth_of


class Weights:
    """A stand-in for the rollout pool: a batch records the version it was produced on."""

    def __init__(self):
        self.version = 0
        self.produced: list[int] = []
        self.busy = threading.Lock()
        self.overlaps = 0

    def produce(self, step):
        if not self.busy.acquire(blocking=False):
            self.overlaps += 1
            self.busy.acquire()
        try:
            time.sleep(0.02)
            self.produced.append(step)
            return {"step": step, "version": self.version}
        finally:
            self.busy.release()


def run(mode, steps=5, max_staleness=2, learn_s=0.05):
    w = Weights()
    ahead = RolloutAhead(w.produce, depth_of(mode, max_staleness), timeout_s=10)
    seen = []
    for step in range(1, steps + 1):
        batch = ahead.take(step)
        ahead.prefetch(step + 1, steps)
        time.sleep(learn_s)                       # the learner's update of this batch
        if mode == "one_step_off":
            ahead.settle([step + 1])
        with ahead.exclusive():
            w.version = step
        seen.append((batch["step"], batch["version"]))
    ahead.close()
    return seen, w


def test_sync_rolls_out_on_the_latest_weights():
    seen, w = run("sync")
    assert seen == [(s, s - 1) for s in range(1, 6)]


def test_one_step_off_is_exactly_one_version_stale():
    seen, w = run("one_step_off")
    assert seen == [(1, 0)] + [(s, s - 2) for s in range(2, 6)]
    assert w.produced == [1, 2, 3, 4, 5] and w.overlaps == 0


def test_async_stays_within_its_staleness():
    seen, w = run("async", max_staleness=2)
    assert [s for s, _ in seen] == [1, 2, 3, 4, 5]
    assert all(s - 1 - v <= 2 for s, v in seen)
    assert sorted(w.produced) == [1, 2, 3, 4, 5] and w.overlaps == 0   # never two rollouts at once


def test_pending_batches_survive_a_checkpoint():
    w = Weights()
    ahead = RolloutAhead(w.produce, 1, timeout_s=10)
    ahead.take(1)
    ahead.prefetch(2, 5)
    ahead.settle()
    kept = ahead.pending()
    assert list(kept) == [2]
    resumed = RolloutAhead(w.produce, 1, timeout_s=10)
    resumed.restore(kept)
    assert resumed.take(2) == kept[2] and w.produced == [1, 2]   # not produced again
    with pytest.raises(ValueError, match="train.mode"):
        depth_of("overlapped", 1)
