"""SeqPO's fused group reward on hand-computed groups (DESIGN §2.2)."""
from __future__ import annotations

import math

import pytest

from reward.fusion import fuse_group, raw_latency, zscores
from reward.latency import al, laal
from reward.types import RewardInput

SQ3 = math.sqrt(3.0)


def _finite(group) -> bool:
    return all(math.isfinite(v) for t in group.trajectories
               for v in (t.quality, t.latency_truncated, t.z_quality, t.z_latency, t.reward))


# --- z-scores -------------------------------------------------------------------------------

def test_zscores_use_the_sample_std():
    assert zscores([10.0, 20.0, 30.0]) == pytest.approx([-1.0, 0.0, 1.0])
    assert zscores([1.0, 3.0]) == pytest.approx([-1 / math.sqrt(2), 1 / math.sqrt(2)])


@pytest.mark.parametrize("values", [[5.0, 5.0, 5.0], [0.1 + 0.2, 0.3, 0.3], [7.0], [], [-2.5] * 5])
def test_zero_std_and_single_member_give_zero(values):
    assert zscores(values) == [0.0] * len(values)


def test_zscores_refuse_nan():
    with pytest.raises(ValueError, match="non-finite"):
        zscores([1.0, float("nan")])


# --- hand-computed groups -------------------------------------------------------------------

def test_all_rewards_equal_give_zero():
    group = fuse_group([50.0, 50.0, 50.0], [4.0, 4.0, 4.0], chunk_size=3, source_length=9)
    assert group.rewards == [0.0, 0.0, 0.0] and group.all_equal
    assert all(t.z_quality == 0.0 and t.z_latency == 0.0 for t in group.trajectories)


def test_fused_reward_by_hand():
    # z(q) = [-1, 0, 1], z(l') = [-1, 0, 1] (l >= m: untouched), r = 2 z(q) - z(l')
    group = fuse_group([10.0, 20.0, 30.0], [4.0, 5.0, 6.0], chunk_size=3, source_length=9, lam=2.0)
    assert group.rewards == pytest.approx([-1.0, 0.0, 1.0])
    t = group.trajectories[2]
    assert (t.quality, t.latency, t.latency_truncated) == (30.0, 6.0, 6.0)
    assert (t.z_quality, t.z_latency) == pytest.approx((1.0, 1.0))
    assert not group.all_equal


SRC = "one two three four five six"  # S = 6 words, chunk m = 3
REF = "eins zwei drei vier"  # |Y| = 4 words: gamma = 2/3


def _traj(hyp: str, delays: list[int]) -> RewardInput:
    return RewardInput(SRC, REF, hyp, delays, 6, "word", 3)


HONEST = _traj("eins zwei drei vier", [3, 3, 6, 6])
OVERGEN = _traj(" ".join(["eins"] * 12), [3] * 12)  # writes 12 words after 3 source words
SLOW = _traj("eins zwei drei vier", [6, 6, 6, 6])


def test_raw_latencies_of_the_hand_trajectories():
    assert raw_latency(HONEST) == pytest.approx(2.5)  # (3 + 1.5 + 3) / 3
    assert raw_latency(OVERGEN) == pytest.approx(-5.25)  # (36 - 1.5 * 66) / 12: negative AL
    assert raw_latency(SLOW) == pytest.approx(6.0)


def _overgen_group(truncate: str, c: float = -1.0):
    lats = [raw_latency(t) for t in (HONEST, OVERGEN, SLOW)]
    # The over-generator is almost as good on quality: the hack pays if latency is untruncated.
    return fuse_group([60.0, 59.0, 55.0], lats, chunk_size=3, source_length=6, truncate=truncate,
                      truncate_c=c)


def test_raw_truncation_does_not_reward_over_generation():
    group = _overgen_group("raw")
    honest, overgen, slow = group.trajectories
    # l' = max(l, 3) = [3, 3, 6]: both fast ones get the same latency term.
    assert [t.latency_truncated for t in group.trajectories] == [3.0, 3.0, 6.0]
    assert overgen.latency == pytest.approx(-5.25)
    assert overgen.z_latency == honest.z_latency == pytest.approx(-1 / SQ3)
    zq = [2 / math.sqrt(7), 1 / math.sqrt(7), -3 / math.sqrt(7)]  # q - 58 over std sqrt(7)
    assert group.rewards == pytest.approx([2 * zq[0] + 1 / SQ3, 2 * zq[1] + 1 / SQ3, 2 * zq[2] - 2 / SQ3])
    assert honest.reward > overgen.reward


def test_without_truncation_the_hack_pays():
    group = _overgen_group("none")
    honest, overgen, _ = group.trajectories
    assert overgen.latency_truncated == pytest.approx(-5.25)
    assert overgen.reward > honest.reward  # what the `none` ablation measures


def test_normalized_truncation_floors_the_latency_z():
    lats = [2.5, -5.25, 6.0]
    z = zscores(lats)
    group = _overgen_group("normalized", c=-1.0)
    assert [t.z_latency for t in group.trajectories] == pytest.approx([z[0], -1.0, z[2]])
    assert z[1] < -1.0  # the floor was hit
    assert [t.latency_truncated for t in group.trajectories] == pytest.approx(lats)
    group0 = _overgen_group("normalized", c=0.0)
    assert [t.z_latency for t in group0.trajectories] == pytest.approx([z[0], 0.0, z[2]])
    assert group0.trajectories[0].reward > group0.trajectories[1].reward


def test_ablation_modes():
    q, lats = [10.0, 20.0, 30.0], [6.0, 5.0, 4.0]
    quality_only = fuse_group(q, lats, chunk_size=3, source_length=9, mode="quality_only")
    latency_only = fuse_group(q, lats, chunk_size=3, source_length=9, mode="latency_only")
    assert quality_only.rewards == pytest.approx([-1.0, 0.0, 1.0])
    assert latency_only.rewards == pytest.approx([-1.0, 0.0, 1.0])  # -z(l'), l' = [6, 5, 4]
    lam4 = fuse_group(q, [5.0, 5.0, 5.0], chunk_size=3, source_length=9, lam=4.0)
    assert lam4.rewards == pytest.approx([-4.0, 0.0, 4.0])


def test_empty_hypothesis_gets_lowest_quality_and_worst_latency():
    empty = _traj("", [])
    assert raw_latency(empty) is None
    lats = [raw_latency(t) for t in (HONEST, empty, SLOW)]
    group = fuse_group([60.0, 12.0, 55.0], lats, chunk_size=3, source_length=6)
    honest, e, slow = group.trajectories
    assert e.empty and not honest.empty
    assert e.quality == 0.0  # its own score (12.0) is ignored: chrF/BLEU floor
    assert e.latency is None  # no latency score of its own
    assert e.latency_truncated == 6.0  # max(|X|, slowest member) = 6
    assert e.reward == min(group.rewards) and e.reward < slow.reward
    assert _finite(group)


def test_empty_hypothesis_with_negative_qualities_takes_the_group_minimum():
    # COMET-style scores can be negative: the empty one is never above any real one.
    group = fuse_group([-0.5, None, 0.3], [3.0, None, 4.0], chunk_size=3, source_length=8)
    assert group.trajectories[1].quality == -0.5
    assert group.trajectories[1].latency_truncated == 8.0
    assert _finite(group)


def test_all_empty_group_is_zero_not_nan():
    group = fuse_group([None, None], [None, None], chunk_size=3, source_length=5)
    assert group.rewards == [0.0, 0.0] and _finite(group)


def test_latency_in_characters_for_a_chinese_target():
    item = RewardInput("a b c d e f g h", "我们是中国人", "我们是人", [4, 4, 8, 8], 8, "char", 4)
    assert item.unit == "char"
    # |Y| = 6 characters of the reference, not 1 "word"
    assert raw_latency(item) == pytest.approx(al([4, 4, 8, 8], 8, 6)) == pytest.approx(4.0)
    assert raw_latency(item, "laal") == pytest.approx(laal([4, 4, 8, 8], 8, 6))


def test_delays_must_match_the_hypothesis_units():
    with pytest.raises(ValueError, match="3 delays for a hypothesis of 2 word"):
        raw_latency(_traj("eins zwei", [3, 3, 6]))
    with pytest.raises(ValueError, match="unknown latency metric"):
        raw_latency(HONEST, "dal")


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="2 qualities but 1 latencies"):
        fuse_group([1.0, 2.0], [1.0], chunk_size=3, source_length=3)
    with pytest.raises(ValueError, match="unknown truncate mode"):
        fuse_group([1.0], [1.0], chunk_size=3, source_length=3, truncate="clip")
    with pytest.raises(ValueError, match="needs a quality score"):
        fuse_group([None, 1.0], [2.0, 1.0], chunk_size=3, source_length=3)
