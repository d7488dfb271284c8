"""Driver glue without Ray: groups matched by their draw id (a pair drawn twice is two groups,
each scored against its own reference), and a mismatch is an error even under ``python -O``."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from orchestration.data import Dataset, DatasetSpec, Pair
from orchestration.training.trajectories import RolloutMismatch, reward_groups, to_sources

DS = Dataset(DatasetSpec("t", "de", "en", "s", "r", "train"), [], Path("s"), Path("r"))


def _traj(group: int, index: int, sample: int, hyp: str) -> dict:
    return {"meta": {"group": group, "source_index": index, "sample": sample, "chunk_size": 3},
            "hypothesis": hyp, "delays": [1] * len(hyp.split()), "source_length": 3}


def test_a_pair_drawn_twice_is_two_groups_scored_against_their_references():
    pairs = [Pair(2, "a b c", "ref two"), Pair(5, "d e f", "ref five"), Pair(2, "a b c", "ref two")]
    sources = to_sources(pairs, DS, groups=[10, 11, 12], seeds=[1, 2, 3])
    assert [(s.group, s.seed) for s in sources] == [(10, 1), (11, 2), (12, 3)]
    trajs = [_traj(g, i, k, f"h{g}{k}") for g, i in ((10, 2), (11, 5), (12, 2)) for k in (0, 1)]
    groups = reward_groups(trajs, sources, 2)
    assert [[(x.reference, x.hypothesis) for x in g] for g in groups] == [
        [("ref two", "h100"), ("ref two", "h101")], [("ref five", "h110"), ("ref five", "h111")],
        [("ref two", "h120"), ("ref two", "h121")]]


def test_collapsed_or_reordered_groups_are_refused():
    pairs = [Pair(2, "a b c", "ref two"), Pair(2, "a b c", "ref two")]
    sources = to_sources(pairs, DS, groups=[0, 1])
    both = [_traj(0, 2, 0, "x"), _traj(0, 2, 1, "y"), _traj(1, 2, 0, "z"), _traj(1, 2, 1, "w")]
    with pytest.raises(RolloutMismatch, match="4 trajectories for 2 groups of 1"):
        reward_groups(both, sources, 1)
    with pytest.raises(RolloutMismatch, match=r"group 1 \(pair 2\) came back as"):
        reward_groups(both[:2] + both[:2], sources, 2)   # what keying by pair index would give


def test_the_check_survives_python_O():
    code = ("from tests.orchestration.training.test_trajectories import test_collapsed_or_reordered_groups_are_refused as t; "
            "t(); print('ok')")
    out = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[3])
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
