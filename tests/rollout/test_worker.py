"""RolloutWorker actors: sharding, weight versions, and a killed replica redone exactly once with
the same seeded samples; a pair drawn twice comes back as two groups."""
from __future__ import annotations

import os
import signal
from dataclasses import replace

import pytest

from rollout.config import EngineConfig, EpisodeConfig, RolloutConfig
from rollout.types import Sampling, Source
from rollout.worker import RolloutPool, shard_sources

SOURCES = [Source(i, text, "de", "en") for i, text in enumerate([
    "Die Katze sitzt auf der Matte", "Der Zug nach Berlin hat Verspätung",
    "Wir übersetzen den Satz", "Die Regierung hat neue Regeln angekündigt",
    "Heute ist Montag", "Der Sprecher redet noch"])]


def test_shards_keep_every_source_once_and_balance():
    shards = shard_sources(SOURCES, 2)
    assert sorted(s.index for sh in shards for s in sh) == list(range(6))
    loads = [sum(len(s.text) for s in sh) for sh in shards]
    assert max(loads) - min(loads) <= max(len(s.text) for s in SOURCES)


@pytest.mark.slow
def test_killed_worker_is_restarted_and_its_shard_redone(ray_local, tiny_model_dir, tmp_path):
    from safetensors.torch import load_file, save

    cfg = RolloutConfig(
        episode=EpisodeConfig(chunk_size=2, max_new_tokens_per_step=4, max_new_tokens_final=8),
        engine=EngineConfig(max_model_len=1024, cpu_kv_cache_gib=1),
        num_workers=2, num_cpus_per_worker=0.5)
    pool = RolloutPool(str(tiny_model_dir), "float32", cfg, seed=0)
    try:
        state = load_file(tiny_model_dir / "model.safetensors")
        info = pool.update_weights(1, "full", save(state))
        assert info["seconds"] > 0
        # seeded sampling, and pair 0 drawn twice (two groups, each with its own draws)
        seeded = [replace(s, group=10 + s.index, seed=s.index) for s in SOURCES] + [replace(SOURCES[0], group=99, seed=7)]
        sampling = Sampling(temperature=1.0)
        before, _ = pool.rollout(seeded, 3, sampling)
        victim = pool.infos[1]["pid"]
        os.kill(victim, signal.SIGKILL)
        trajs, stats = pool.rollout(seeded, 3, sampling)
        assert pool.restarts == 1 and pool.infos[1]["pid"] != victim
        keys = [(t["meta"]["group"], t["meta"]["source_index"], t["meta"]["sample"]) for t in trajs]
        assert keys == [(s.group, s.index, k) for s in seeded for k in range(3)]    # none lost, none twice
        assert [t["token_ids"] for t in trajs[:3]] != [t["token_ids"] for t in trajs[-3:]]
        # the restarted replica got the latest weights replayed before redoing its shard
        assert stats["weight_versions"] == [1]
        assert all(t["meta"]["weight_version"] == 1 for t in trajs)
        assert [t["token_ids"] for t in trajs] == [t["token_ids"] for t in before]
    finally:
        pool.shutdown()


def test_every_weight_sync_mode_has_a_target_and_unknown_ones_are_named():
    import typing

    import pytest

    from rollout.config import WEIGHT_SYNC_TARGETS, WeightSyncMode, weight_target

    assert set(typing.get_args(WeightSyncMode)) == set(WEIGHT_SYNC_TARGETS)
    assert {weight_target(m) for m in WEIGHT_SYNC_TARGETS} == {"base", "adapter"}
    with pytest.raises(ValueError, match="unknown weight sync mode 'lazy'; known: merged, full, adapter"):
        weight_target("lazy")
