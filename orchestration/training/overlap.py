"""Rollouts produced ahead of the learner (``train.mode``, DESIGN §7 "Overlap").

- ``sync``: batch t is rolled out, then learned, then the weights are synced (nothing ahead).
- ``one_step_off``: while the learner updates on batch t, batch t+1 is rolled out on the
  weights before that update; the sync waits for that rollout, so batch t+1 is exactly one
  version stale, every time (deterministic, like ``sync``).
- ``async``: up to ``max_staleness`` batches are rolled out ahead, back to back; a sync slips in
  between two rollouts, so a batch's weight version depends on timing (each trajectory is
  tagged with it, and a batch staler than ``max_staleness`` is rolled out again).

The rollouts run in one background thread of the driver (Ray calls release the GIL while they
wait); a lock keeps a weight sync and a rollout from touching the pool at the same time. This
module knows nothing of rollouts: ``produce(step)`` is whatever the driver passes.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

MODES = ("sync", "one_step_off", "async")


def depth_of(mode: str, max_staleness: int) -> int:
    """How many batches may be produced ahead of the one being learned."""
    if mode == "sync":
        return 0
    if mode == "one_step_off":
        return 1
    if mode == "async":
        return max(1, max_staleness)
    raise ValueError(f"unknown train.mode {mode!r}; use one of {', '.join(MODES)}")


class RolloutAhead:
    """Batches for later steps, produced in the background by ``produce(step)``."""

    def __init__(self, produce: Callable[[int], Any], depth: int, timeout_s: float):
        self.produce, self.depth, self.timeout_s = produce, depth, timeout_s
        self.pool_lock = threading.Lock()        # held by a rollout, or by a weight sync
        self._sync_waiting = threading.Event()   # a sync wants the pool: start no new rollout
        self._ready: dict[int, Any] = {}         # restored from a checkpoint
        self._futures: dict[int, Future] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollout-ahead") if depth else None

    def _locked_produce(self, step: int) -> Any:
        while self._sync_waiting.is_set():     # let a waiting sync go first
            time.sleep(0.01)
        with self.pool_lock:
            return self.produce(step)

    def take(self, step: int) -> Any:
        """Batch ``step``: produced ahead (waited for) or, if not, produced now."""
        if step in self._ready:
            return self._ready.pop(step)
        fut = self._futures.pop(step, None)
        if fut is not None:
            return fut.result(timeout=self.timeout_s)
        with self.pool_lock:
            return self.produce(step)

    def prefetch(self, first: int, last: int) -> None:
        """Start producing steps ``first`` .. min(first + depth - 1, last) not yet under way."""
        if self._executor is None:
            return
        for step in range(first, min(first + self.depth, last + 1)):
            if step not in self._futures and step not in self._ready:
                self._futures[step] = self._executor.submit(self._locked_produce, step)

    def settle(self, steps: list[int] | None = None) -> None:
        """Wait for the batches under way (``steps``: only those) to finish."""
        for step, fut in sorted(self._futures.items()):
            if steps is None or step in steps:
                self._ready[step] = fut.result(timeout=self.timeout_s)
        for step in self._ready:
            self._futures.pop(step, None)

    def exclusive(self) -> "_SyncGuard":
        """Context for a weight sync or an evaluation: no rollout touches the pool meanwhile."""
        return _SyncGuard(self)

    def pending(self) -> dict[int, Any]:
        """Finished batches not yet taken (after :meth:`settle`): what a checkpoint keeps."""
        return dict(self._ready)

    def restore(self, batches: dict[int, Any]) -> None:
        self._ready.update(batches)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)


class _SyncGuard:
    def __init__(self, ahead: RolloutAhead):
        self.ahead = ahead

    def __enter__(self) -> None:
        self.ahead._sync_waiting.set()
        acquired = self.ahead.pool_lock.acquire(timeout=self.ahead.timeout_s)
        self.ahead._sync_waiting.clear()
        if not acquired:
            raise TimeoutError(f"a rollout held the pool for more than {self.ahead.timeout_s:.0f} s")

    def __exit__(self, *exc: Any) -> None:
        self.ahead.pool_lock.release()
