"""bench sft on the tiny model: three layouts of the same pairs, each on fresh learner ranks
(released before the next arm starts), with tokens, seconds and dev loss per layout."""
from __future__ import annotations

import json

import pytest

import launch
from tests.tiny_data import build_tiny_data


@pytest.mark.slow
def test_bench_sft_trains_three_layouts_from_the_same_weights(tiny_model_dir, tmp_path, capsys):
    data = build_tiny_data(tmp_path / "data")
    out = tmp_path / "bench"
    assert launch.main(["bench", "sft", "--out", str(out), f"model.path={tiny_model_dir}", "model.dtype=float32",
                        f"data.dir={data}", "learner.dtype=float32", "learner.lr=0.05", "learner.torch_threads=1",
                        "learner.num_cpus_per_rank=1", "ray.num_cpus=2", "sft.batch_size=4", "sft.dev_size=4",
                        "sft.min_source_units=4", "sft.eval_rollouts=false", "rollout.episode.chunk_size=3",
                        "data.limit=8", "sft.source_slots=96", "ray.start_timeout_s=120"]) == 0
    r = json.loads((out / "bench_sft.json").read_text())
    runs = r["runs"]
    assert set(runs) == {"interleaved", "simulmask", "prefix_expanded"} and r["baseline"] == "prefix_expanded"
    n = r["sentences"]
    assert n + r["skipped_pairs"] == 8 and r["dev_sentences"] == 4
    # one sequence per pair for the one-pass layouts, one per write for data expansion
    assert runs["interleaved"]["sequences"] == runs["simulmask"]["sequences"] == n
    assert runs["prefix_expanded"]["sequences"] > n
    assert runs["simulmask"]["tokens"] < runs["prefix_expanded"]["tokens"]
    # the same targets in both prefix layouts: the action tokens are the reference pieces + end of turn
    assert runs["simulmask"]["action_tokens"] == runs["prefix_expanded"]["action_tokens"]
    for label, run in runs.items():     # every arm trained its own fresh ranks
        assert run["dev_loss_after"] != run["dev_loss_before"], label
        assert r["ratios"][label]["tokens"] == pytest.approx(run["tokens"] / runs["prefix_expanded"]["tokens"])
    assert "speedup" in capsys.readouterr().out
