"""Hand-built instances for the scoreboard tests: references of made-up words, predictions that
copy them with some words replaced, wait-k delays, so quality and latency are set by hand."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from orchestration.eval.score import ScoredInstance, read_instances

WORDS = ("alpha beta gamma delta epsilon zeta theta iota kappa lambda sigma omega "
         "river stone cloud light north field house bridge garden window").split()


def references(n: int, seed: int = 0) -> list[str]:
    """n references of 6-13 words."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(6, 14)))) for _ in range(n)]


def record(index: int, reference: str, k: int, wrong: float, source_length: int = 12,
           rng: np.random.Generator | None = None, extra_words: int = 0) -> dict:
    """One SimulEval line: the reference with a share ``wrong`` of its words replaced (the first
    round(wrong·|ref|) of a shuffled order, or from the end without ``rng``), wait-k delays."""
    words = reference.split()
    bad = int(round(min(max(wrong, 0.0), 1.0) * len(words)))
    order = rng.permutation(len(words)) if rng is not None else np.arange(len(words))[::-1]
    hyp = list(words)
    for j in order[:bad]:
        hyp[j] = "xq" + words[j][::-1]
    hyp += ["filler"] * extra_words
    delays = [min(k + j, source_length) for j in range(len(hyp))]
    return {"index": index, "source_length": source_length, "delays": delays,
            "prediction": " ".join(hyp), "reference": reference}


def write(path: Path, rows: list[dict]) -> Path:
    """An instances.jsonl of these rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def instances(tmp: Path, name: str, rows: list[dict], unit: str = "word") -> list[ScoredInstance]:
    """The rows as ``launch.py score`` reads them."""
    return read_instances(write(tmp / f"{name}.jsonl", rows), unit)  # type: ignore[arg-type]
