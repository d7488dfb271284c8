"""The training pairs (``load_training_data``) and a resumable, seeded walk over them.

Each epoch visits every pair once in an order fixed by (seed, epoch); the cursor's state is
two integers, so a resumed run draws exactly the batches the uninterrupted run would have.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass

from orchestration.data import load_pairs, source_units
from orchestration.errors import UserInputError


@dataclass
class DataCursor:
    size: int
    seed: int
    epoch: int = 0
    position: int = 0

    def _order(self, epoch: int) -> list[int]:
        order = list(range(self.size))
        random.Random(f"{self.seed}:{epoch}").shuffle(order)
        return order

    def next_batch(self, n: int) -> list[int]:
        """The next ``n`` indices; an epoch boundary continues into the next epoch's order."""
        if self.size <= 0:
            raise ValueError("no training pairs to draw from")
        out: list[int] = []
        while len(out) < n:
            order = self._order(self.epoch)
            take = order[self.position:self.position + n - len(out)]
            out += take
            self.position += len(take)
            if self.position >= self.size:
                self.epoch, self.position = self.epoch + 1, 0
        return out

    @property
    def draws(self) -> int:
        """How many indices have been drawn so far: the id of the next draw."""
        return self.epoch * self.size + self.position

    def state(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, int]) -> "DataCursor":
        return cls(**state)


def load_training_data(cfg) -> tuple:
    """Training pairs (filtered by length) and the dev pairs, validated before anything starts."""
    train = load_pairs(cfg.data.train, cfg.data, seed=cfg.run.seed, purpose="train", limit=cfg.data.limit)
    keep = [p for p in train.pairs
            if cfg.train.min_source_units <= source_units(p.source, train.src_lang) <= cfg.train.max_source_units]
    if not keep:
        raise UserInputError(f"train.min_source_units/max_source_units: no pair of {cfg.data.train} has "
                             f"{cfg.train.min_source_units}-{cfg.train.max_source_units} source units")
    dev = load_pairs(cfg.data.dev, cfg.data, seed=cfg.run.seed, purpose="dev", limit=cfg.train.dev_size)
    return train, keep, dev
