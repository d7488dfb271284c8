"""bench sync on the tiny model (slow): both paths deliver the same weights (greedy rollouts
agree), the broadcast moves the bytes of the tensors it sends while only the small bucket layout
passes through the driver, and the JSON holds the ratios."""
from __future__ import annotations

import json

import pytest

import launch

pytestmark = pytest.mark.slow


def test_bench_sync_on_the_tiny_model(tiny_model_dir, tmp_path, ray_local):
    out = tmp_path / "bench"
    assert launch.main(["bench", "sync", "--config", "configs/bench/sync-cpu.yaml", "--out", str(out),
                        f"model.path={tiny_model_dir}", "model.dtype=float32", "learner.dtype=float32",
                        "learner.num_cpus_per_rank=0", "learner.torch_threads=1", "rollout.num_cpus_per_worker=0",
                        "rollout.engine.cpu_kv_cache_gib=1", "rollout.engine.max_model_len=1024",
                        "rollout.weight_bucket_mb=1"]) == 0
    result = json.loads((out / "bench_sync.json").read_text())
    assert set(result["cases"]) == {"merged", "full"}
    full, merged = result["cases"]["full"], result["cases"]["merged"]
    for case in (full, merged):
        assert case["outputs_equal"] is True
        b, d = case["broadcast"], case["driver"]
        assert b["driver_bytes"] < 50_000 < d["driver_bytes"]   # only the layout crosses the driver
        assert case["seconds_ratio"] == pytest.approx(d["seconds_median"] / b["seconds_median"])
        assert len(b["seconds"]) == len(d["seconds"]) == result["repeats"]
    assert full["buckets"] > 1 and merged["tensors"] < full["tensors"]
    assert merged["broadcast"]["bytes"] < full["broadcast"]["bytes"]
