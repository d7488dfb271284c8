"""SeqPO's fused group reward and HPO's gated variant on hand-computed groups (DESIGN §2.2).

The over-generation tests below pin the published SeqPO settings they were written for (AL,
floor = chunk size m: ``latency_floor=None``), since the defaults are now LAAL and a floor of 4.
"""
from __future__ import annotations

import math

import pytest

from reward.fusion import fuse_group, hinge, length_ratio, outside_gate, raw_latency, zscores
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
    assert raw_latency(HONEST, "al") == pytest.approx(2.5)  # (3 + 1.5 + 3) / 3
    assert raw_latency(OVERGEN, "al") == pytest.approx(-5.25)  # (36 - 1.5 * 66) / 12: negative AL
    assert raw_latency(SLOW, "al") == pytest.approx(6.0)
    # LAAL (the default): |Y| = max(12, 4) = 12, gamma = 2: (36 - 0.5 * 66) / 12
    assert raw_latency(OVERGEN) == raw_latency(OVERGEN, "laal") == pytest.approx(0.25)
    assert raw_latency(HONEST) == pytest.approx(2.5)  # as long as the reference: LAAL = AL


def _overgen_group(truncate: str, c: float = -1.0):
    lats = [raw_latency(t, "al") for t in (HONEST, OVERGEN, SLOW)]
    # The over-generator is almost as good on quality: the hack pays if latency is untruncated.
    return fuse_group([60.0, 59.0, 55.0], lats, chunk_size=3, source_length=6, truncate=truncate,
                      truncate_c=c, latency_floor=None)


def test_raw_truncation_does_not_reward_over_generation():
    group = _overgen_group("raw")  # SeqPO's published form: floor = m = 3
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


# --- latency floor in source units ----------------------------------------------------------

def test_the_floor_is_in_source_units_and_null_is_the_chunk_size():
    # honest lag 3.5 (between the chunk m = 3 and the default floor 4) against running ahead (lag 1)
    q, lats = [50.0, 50.0, 40.0], [3.5, 1.0, 8.0]
    default = fuse_group(q, lats, chunk_size=3, source_length=8)
    assert [t.latency_truncated for t in default.trajectories] == [4.0, 4.0, 8.0]
    assert default.trajectories[0].reward == default.trajectories[1].reward  # waiting up to 4 is free
    published = fuse_group(q, lats, chunk_size=3, source_length=8, latency_floor=None)
    assert [t.latency_truncated for t in published.trajectories] == [3.5, 3.0, 8.0]
    assert published.trajectories[0].reward < published.trajectories[1].reward  # waiting is penalised
    # the floor is only read by truncate=raw
    none = fuse_group(q, lats, chunk_size=3, source_length=8, truncate="none", latency_floor=6.0)
    assert [t.latency_truncated for t in none.trajectories] == lats


# --- length gate ----------------------------------------------------------------------------

def test_length_ratio_and_gate_by_hand():
    assert length_ratio(HONEST) == 1.0 and length_ratio(OVERGEN) == 3.0
    assert length_ratio(_traj("", [])) is None
    assert length_ratio(RewardInput("a b c d", "我们是中国人", "我们是人", [4] * 4, 4, "char", 4)) == pytest.approx(4 / 6)
    gate = (0.5, 2.0)
    assert [outside_gate(r, gate) for r in (0.4, 0.5, 1.0, 2.0, 2.01)] == [True, False, False, False, True]
    assert not outside_gate(None, gate) and not outside_gate(9.0, None)


def test_degenerate_hypotheses_are_marked_and_floored():
    # honest (ratio 1), over-generated (ratio 3, chrF still 59), a stub (ratio 0.25), slow (ratio 1)
    stub = _traj("eins", [3])
    items = (HONEST, OVERGEN, stub, SLOW)
    lats = [raw_latency(t) for t in items]
    ratios = [length_ratio(t) for t in items]
    group = fuse_group([60.0, 59.0, 20.0, 55.0], lats, chunk_size=3, source_length=6, length_ratios=ratios)
    honest, over, short, slow = group.trajectories
    assert [t.gated for t in group.trajectories] == [False, True, True, False]
    assert not over.empty and over.quality == 0.0 and short.quality == 0.0   # the empty hypothesis's floor
    assert over.latency == pytest.approx(0.25)                                # its own LAAL, for the logs
    assert over.latency_truncated == short.latency_truncated == 6.0          # the group's worst, |X|
    assert over.reward == short.reward < slow.reward < honest.reward
    # without the gate the over-generator beats the slow, honest translation
    open_gate = fuse_group([60.0, 59.0, 20.0, 55.0], lats, chunk_size=3, source_length=6, length_ratios=ratios,
                           length_gate=None)
    assert not any(t.gated for t in open_gate.trajectories)
    assert open_gate.trajectories[1].reward > open_gate.trajectories[3].reward
    # no ratios given: nothing is gated
    assert not any(t.gated for t in fuse_group([60.0, 59.0], lats[:2], chunk_size=3, source_length=6).trajectories)


def test_degenerate_floor_follows_negative_qualities():
    group = fuse_group([-0.4, 0.2, 0.5], [3.0, 2.0, 5.0], chunk_size=3, source_length=8,
                       length_ratios=[1.0, 2.5, 1.1])
    assert group.trajectories[1].gated and group.trajectories[1].quality == -0.4
    assert group.trajectories[1].latency_truncated == 8.0 and _finite(group)


# --- gated mode (HPO) -----------------------------------------------------------------------

def test_hinge_by_hand():
    assert hinge(40.0, 4.0, quality_threshold=30.0, max_latency=10.0) == -6.0
    assert hinge(40.0, 12.0, quality_threshold=30.0, max_latency=10.0) == 0.0   # too late: no credit
    assert hinge(29.9, 1.0, quality_threshold=30.0, max_latency=10.0) == 0.0    # below the threshold
    assert hinge(30.0, 4.0, quality_threshold=30.0, max_latency=10.0) == -6.0   # q >= T clears it


def _gated(q, lats, **kw):
    return fuse_group(q, lats, chunk_size=3, source_length=12, mode="gated", quality_threshold=30.0,
                      max_latency=10.0, **kw)


def test_gated_mode_gives_no_latency_credit_below_the_threshold():
    # two below the threshold (a fast and a slow one), two above it (a fast and a slow one)
    q, lats = [20.0, 20.0, 40.0, 40.0], [4.0, 9.0, 4.0, 9.0]
    group = _gated(q, lats)
    terms = [t.latency_term for t in group.trajectories]
    assert terms == [0.0, 0.0, -6.0, -1.0]
    low_fast, low_slow, high_fast, high_slow = group.trajectories
    assert low_fast.reward == low_slow.reward      # below the threshold latency does not count
    assert high_fast.reward > high_slow.reward     # above it they are ranked by latency
    # by hand: z(q) = [-a, -a, a, a] with a = sqrt(3)/2; h = [0, 0, -6, -1]: mean -7/4
    a = SQ3 / 2
    h = [0.0, 0.0, -6.0, -1.0]
    zh = zscores(h)
    assert group.rewards == pytest.approx([2 * -a - zh[0], 2 * -a - zh[1], 2 * a - zh[2], 2 * a - zh[3]])
    # fused mode would have rewarded the fast low-quality one over the slow one
    fused = fuse_group(q, lats, chunk_size=3, source_length=12)
    assert fused.trajectories[0].reward > fused.trajectories[1].reward


def test_gated_mode_uses_the_floored_latency_and_ignores_empty_and_degenerate():
    # with the floor 4, lags 1 and 4 are the same (no extra credit for running ahead)
    group = _gated([40.0, 40.0, 0.0, 45.0], [1.0, 4.0, None, 2.0], length_ratios=[1.0, 1.0, None, 2.6])
    terms = [t.latency_term for t in group.trajectories]
    assert terms == [-6.0, -6.0, 0.0, 0.0]   # empty and degenerate members get h = 0
    assert group.trajectories[2].empty and group.trajectories[3].gated
    assert group.trajectories[0].reward == group.trajectories[1].reward > group.trajectories[3].reward


def test_gated_mode_normalized_floors_the_latency_z_and_needs_a_threshold():
    q, lats = [40.0, 40.0, 40.0, 40.0], [1.0, 9.0, 9.0, 9.0]
    raw_z = zscores([-9.0, -1.0, -1.0, -1.0])
    group = _gated(q, lats, truncate="normalized", truncate_c=-1.0)
    assert raw_z[0] < -1.0 and group.trajectories[0].z_latency == -1.0
    with pytest.raises(ValueError, match="needs a quality_threshold"):
        fuse_group([1.0], [1.0], chunk_size=3, source_length=3, mode="gated")
    with pytest.raises(ValueError, match="needs lo < hi"):
        fuse_group([1.0], [1.0], chunk_size=3, source_length=3, length_gate=(2.0, 0.5))
