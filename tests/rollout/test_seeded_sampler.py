"""The seeded sampler: exact samples of softmax(top_p(logits / T)), a function of (seed,
position) only, and the row bookkeeping of the vLLM logits-processor interface."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

from rollout.types import derive_seed
from rollout.seeded_sampler import (SEED_KEY, TEMPERATURE_KEY, TOP_P_KEY, SeededSampler, sample_index, sample_indices,
                                    top_p_mask)

LOGITS = torch.tensor([2.0, 1.0, 0.5, -1.0, 0.0])


def _target(temperature: float, top_p: float) -> torch.Tensor:
    return torch.softmax(top_p_mask(LOGITS / temperature, top_p), dim=-1)


def _frequencies(temperature: float, top_p: float, n: int = 6000) -> torch.Tensor:
    counts = torch.zeros(len(LOGITS))
    for seed in range(n):
        counts[sample_index(LOGITS, seed, 0, temperature, top_p)] += 1
    return counts / n


def test_argmax_samples_the_tempered_nucleus_distribution():
    for temperature, top_p in ((1.0, 1.0), (0.7, 1.0), (1.0, 0.8)):
        want = _target(temperature, top_p)
        got = _frequencies(temperature, top_p)
        # 6000 draws: the standard error of each frequency is below 0.0065
        assert torch.allclose(got, want, atol=0.025), (temperature, top_p, got, want)
    # top-p 0.8 keeps the three most likely tokens (0.896 of the mass)
    assert _frequencies(1.0, 0.8)[3] == 0.0


def test_top_p_keeps_the_smallest_set_reaching_the_mass():
    probs = torch.softmax(LOGITS, dim=-1).tolist()   # 0.563, 0.207, 0.126, 0.028, 0.076
    kept = torch.isfinite(top_p_mask(LOGITS, 0.8)).tolist()
    assert kept == [True, True, True, False, False] and sum(probs[:2]) < 0.8 <= sum(probs[:3])
    assert torch.isfinite(top_p_mask(LOGITS, 0.75)).tolist() == [True, True, False, False, False]
    assert torch.isfinite(top_p_mask(LOGITS, 1e-6)).tolist() == [True, False, False, False, False]


def test_draws_depend_on_seed_and_position_only():
    draws = [sample_index(LOGITS, 7, pos, 1.0, 1.0) for pos in range(40)]
    assert draws == [sample_index(LOGITS, 7, pos, 1.0, 1.0) for pos in range(40)]
    assert draws != [sample_index(LOGITS, 8, pos, 1.0, 1.0) for pos in range(40)]
    assert len(set(draws)) > 2


def test_a_flat_distribution_beyond_the_probe_finds_its_whole_nucleus():
    flat = torch.zeros(3000)          # uniform over 3000 tokens: the 0.9 nucleus holds 2700 of them
    assert int(torch.isfinite(top_p_mask(flat, 0.9)).sum()) == 2700


def test_derive_seed_is_stable_and_distinguishes_parts():
    # the same in another process with another hash seed: a resumed run draws what the first did
    other = subprocess.run([sys.executable, "-c", "from rollout.types import derive_seed; print(derive_seed(0, 1, 2))"],
                           capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONHASHSEED": "123"},
                           cwd=Path(__file__).resolve().parents[2])
    assert int(other.stdout) == derive_seed(0, 1, 2)
    assert len({derive_seed(0, s, g) for s in range(20) for g in range(20)}) == 400
    assert derive_seed(1, 23) != derive_seed(12, 3) and 0 <= derive_seed("x") < 2**63


def _params(seed=None):
    extra = None if seed is None else {SEED_KEY: seed, TEMPERATURE_KEY: 1.0, TOP_P_KEY: 1.0}
    return SimpleNamespace(extra_args=extra)


def _one_hot(token: int) -> torch.Tensor:
    row = torch.full_like(LOGITS, float("-inf"))
    row[token] = 0.0
    return row


def test_processor_follows_rows_through_batch_updates():
    proc = SeededSampler(None, torch.device("cpu"), False)
    out_a, out_b = [], [5, 6]
    proc.update_state(SimpleNamespace(batch_size=3, removed=[], moved=[],
                                      added=[(0, _params(11), [1], out_a), (1, _params(), [1], []),
                                             (2, _params(22), [1], out_b)]))
    got = proc.apply(LOGITS.repeat(3, 1))
    assert torch.equal(got[0], _one_hot(sample_index(LOGITS, 11, 0, 1.0, 1.0)))
    assert torch.equal(got[1], LOGITS)                       # an unseeded request is left alone
    assert torch.equal(got[2], _one_hot(sample_index(LOGITS, 22, 2, 1.0, 1.0)))
    out_a.append(3)                                          # vLLM appends to the running list
    proc.update_state(SimpleNamespace(batch_size=2, removed=[0], added=[], moved=[(2, 0, None)]))
    got = proc.apply(LOGITS.repeat(2, 1))
    assert torch.equal(got[0], _one_hot(sample_index(LOGITS, 22, 2, 1.0, 1.0))) and torch.equal(got[1], LOGITS)
    assert math.isfinite(float(got.max()))


def test_a_row_draws_the_same_alone_and_in_any_batch():
    gen = torch.Generator().manual_seed(0)
    batch = torch.randn(6, 5000, generator=gen) * 2
    seeds, positions = [3, 1, 4, 1, 5, 9], [0, 2, 7, 1, 8, 2]
    together = sample_indices(batch, seeds, positions, [1.0] * 6, [1.0, 0.9, 1.0, 0.5, 1.0, 1.0])
    alone = [sample_index(batch[i], seeds[i], positions[i], 1.0, [1.0, 0.9, 1.0, 0.5, 1.0, 1.0][i]) for i in range(6)]
    flipped = sample_indices(batch.flip(0), seeds[::-1], positions[::-1], [1.0] * 6, [1.0, 0.9, 1.0, 0.5, 1.0, 1.0][::-1])
    assert together == alone == flipped[::-1]
