"""The RewardService actor: chrF replicas, restart after a killed process, tiny COMET in .venv-comet."""
from __future__ import annotations

import os
import signal
import time

import pytest

from reward.client import RewardClient, shard
from reward.scorers import ChrfScorer
from reward.service import score_groups
from reward.types import QualityItem, RewardInput, RewardSettings

pytestmark = pytest.mark.slow
CALL_TIMEOUT_S = 300   # a replica's first call waits for its start (COMET: a model load)


def _groups() -> list[list[RewardInput]]:
    """Six groups of three trajectories (one empty), en->de and en->zh."""
    out = []
    for i in range(6):
        src = " ".join(f"w{i}{j}" for j in range(6))
        unit, ref = ("char", "我们是中国人民") if i % 2 else ("word", "das ist ein kleines Haus")
        hyps = ([("我们是人", [3, 3, 6, 6]), ("我们是中国人民", [3, 3, 3, 6, 6, 6, 6]), ("", [])] if i % 2 else
                [("das ist ein Haus", [3, 3, 6, 6]), ("das ist ein kleines Haus", [6] * 5), ("", [])])
        out.append([RewardInput(src, ref, h, d, 6, unit, 3) for h, d in hyps])
    return out


def test_shard_keeps_order_and_covers_everything():
    assert shard(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert shard([1], 4) == [[1]]
    assert shard([], 2) == []


def test_chrf_replicas_match_the_local_computation(ray_local):
    client = RewardClient(RewardSettings(replicas=2))
    try:
        infos = client.wait_ready()
        assert len({i["pid"] for i in infos}) == 2
        groups = _groups()
        batch = client.score(groups)
        expected, _, _ = score_groups(groups, ChrfScorer(), RewardSettings())
        assert batch.groups == expected  # order kept across the two shards
        assert batch.scorer.name == "chrf" and batch.segments == 18 and batch.scored_segments == 12
        assert batch.seconds > 0 and batch.segments_per_s > 0 and batch.stats["replicas"] == 2
        assert client.score([]).groups == []
    finally:
        client.close()


@pytest.mark.parametrize("how", ["os.kill", "ray.kill"])
def test_a_killed_replica_is_restarted_and_the_call_retried(ray_local, how):
    ray = ray_local
    client = RewardClient(RewardSettings())
    try:
        old_pid = ray.get(client.actors[0].pid.remote(), timeout=CALL_TIMEOUT_S)
        if how == "os.kill":
            os.kill(old_pid, signal.SIGKILL)
        else:
            ray.kill(client.actors[0], no_restart=False)   # a crash Ray may restart from
        time.sleep(0.2)
        groups = _groups()
        batch = client.score(groups)
        assert client.restarts == 1
        assert batch.groups == score_groups(groups, ChrfScorer(), RewardSettings())[0]
        assert ray.get(client.actors[0].pid.remote(), timeout=CALL_TIMEOUT_S) != old_pid
    finally:
        client.close()


def test_tiny_comet_through_the_actor(ray_local, tiny_comet_dir):
    """Real COMET in .venv-comet: deterministic, batched == per sample, survives a restart."""
    ray = ray_local
    settings = RewardSettings(quality="comet", comet_model=str(tiny_comet_dir), comet_batch_size=4)
    client = RewardClient(settings)
    try:
        info = client.wait_ready()[0]
        assert info["python"].endswith(os.path.join(".venv-comet", "bin", "python"))
        assert info["scorer"].name == "comet"
        assert info["scorer"].checkpoint == str(tiny_comet_dir / "checkpoints" / "model.ckpt")

        groups = _groups()
        first = client.score(groups)
        assert client.score(groups).groups == first.groups  # deterministic
        assert first.scorer.label().startswith("comet:")
        assert first.scored_segments == 12  # empty hypotheses never reach COMET

        items = [QualityItem(t.source, t.hypothesis, t.reference, t.unit)
                 for g in groups for t in g if t.hypothesis]
        batched = client.quality(items).scores
        single = [client.quality([it]).scores[0] for it in items]
        assert max(abs(a - b) for a, b in zip(batched, single)) < 1e-5
        assert len(set(round(s, 4) for s in batched)) > 3  # the scores tell inputs apart
        fused = [t.quality for g in first.groups for t in g.trajectories if not t.empty]
        assert max(abs(a - b) for a, b in zip(fused, batched)) < 1e-5

        # a fresh replica in the COMET environment scores exactly the same
        os.kill(ray.get(client.actors[0].pid.remote(), timeout=CALL_TIMEOUT_S), signal.SIGKILL)
        again = client.score(groups)
        assert client.restarts == 1 and again.groups == first.groups
    finally:
        client.close()
