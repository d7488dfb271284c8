"""The pure parts of bench scaling and bench train: size lists, throughput, core placements."""
from __future__ import annotations

import pytest

from orchestration.bench.scaling import parse_sizes, throughput
from orchestration.bench.train import mean_phases, placements
from orchestration.errors import UserInputError


def test_sizes_parse_and_bad_ones_name_the_flag():
    assert parse_sizes("1x1, 2x1,2x2") == [(1, 1), (2, 1), (2, 2)]
    for bad in ("1x0", "2", "axb", "1x1,,2x2"):
        with pytest.raises(UserInputError, match="--sizes"):
            parse_sizes(bad)


def test_throughput_leaves_out_the_warm_up_step():
    rows = [{"time/step_s": 100.0, "rollout/generated_tokens": 1},
            {"time/step_s": 2.0, "rollout/generated_tokens": 30}, {"time/step_s": 4.0, "rollout/generated_tokens": 30}]
    out = throughput(rows, trajectories_per_step=6)
    assert out == {"step_s": 3.0, "trajectories_per_s": 2.0, "generated_tokens_per_s": 10.0}
    assert mean_phases(rows)["step_s"] == 3.0


def test_disjoint_placement_splits_the_cores(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: {0, 1, 2, 3})
    p = placements()
    assert p["disjoint"] == ["rollout.engine.cpu_threads='0'", "learner.cpu_cores='1,2,3'", "learner.torch_threads=3"]
    assert p["shared"][0] == "rollout.engine.cpu_threads=all"
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: {0})
    with pytest.raises(UserInputError, match="2 CPU cores"):
        placements()
