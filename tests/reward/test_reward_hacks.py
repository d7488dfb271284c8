"""The over-generation hack on one hand-made group, scored end to end (real sentence metrics):
SeqPO's published settings reward it, the new defaults do not."""
from __future__ import annotations

import pytest

from reward.scorers import build_scorer
from reward.service import score_groups
from reward.types import RewardInput, RewardSettings

SRC = "der Premierminister von Indien und Japan trafen sich gestern in Tokio"   # |X| = 11 words
REF = "the prime ministers of India and Japan met in Tokyo yesterday"           # 11 words
# waits one chunk (reads 6 words), then writes in step: a fair paraphrase, 12 words
HONEST = "the heads of government of India and Japan met in Tokyo yesterday"
# writes from the first chunk on: the translation, then keeps going (26 words, 2.4 x the reference,
# the length ratio the no-truncation ablation reached)
OVERGEN = ("the prime ministers of India and Japan met in Tokyo yesterday and the prime ministers "
           "of India and Japan said they met in Tokyo yesterday too")
# waits for the whole source
SLOW = "the leaders of India and Japan met yesterday in Tokyo"

OLD = RewardSettings(quality="chrf", latency_metric="al", latency_floor=None, length_gate=None)  # SeqPO's form
NEW = RewardSettings()   # laal, floor 4, length gate [0.5, 2], quality chrf (unchanged)


def _group() -> list[RewardInput]:
    n = len(OVERGEN.split())
    over_d = [3] * (n // 3) + [6] * (n // 3) + [9] * (n - 2 * (n // 3))
    return [RewardInput(SRC, REF, HONEST, [6] * 3 + [9] * 3 + [11] * 6, 11, "word", 3),
            RewardInput(SRC, REF, OVERGEN, over_d, 11, "word", 3),
            RewardInput(SRC, REF, SLOW, [11] * len(SLOW.split()), 11, "word", 3)]


def _score(settings: RewardSettings):
    (group,), _, _ = score_groups([_group()], build_scorer(settings), settings)
    return group.trajectories


def test_the_published_settings_reward_running_ahead_with_more_text():
    honest, over, _ = _score(OLD)
    assert over.latency < 0 < honest.latency            # AL below zero: more words, earlier
    assert over.latency_truncated == 3.0                 # floored at the chunk: ties with any lag <= 3
    assert honest.latency_truncated == pytest.approx(5.0)   # one chunk of honest waiting
    assert over.quality > honest.quality                 # chrF2 even prefers the padded text
    assert over.reward > honest.reward                   # the hack pays


def test_the_new_defaults_do_not():
    honest, over, slow = _score(NEW)
    assert over.gated and not honest.gated and not slow.gated   # 26 / 11 = 2.36 > 2: degenerate
    assert over.quality == 0.0 and over.latency_truncated == 11.0
    assert over.latency == pytest.approx(0.942, abs=1e-3)       # its own LAAL, kept for the logs
    assert honest.latency == pytest.approx(5.25)                # LAAL: |Y| = 12, not the reference's 11
    assert over.reward < slow.reward < honest.reward


def test_laal_and_the_floor_alone_do_not_stop_it_with_chrf2():
    """What the length gate is for: with chrF2 and no gate the early, padded text still wins."""
    honest, over, _ = _score(RewardSettings(length_gate=None))
    assert over.latency_truncated == 4.0 and over.reward > honest.reward


@pytest.mark.parametrize("quality", ["chrf1", "bleu", "chrf_bp"])
def test_a_scorer_that_punishes_over_generation_stops_it_even_with_the_published_latency(quality):
    honest, over, _ = _score(RewardSettings(quality=quality, latency_metric="al", latency_floor=None,
                                            length_gate=None))
    assert over.quality < honest.quality and over.reward < honest.reward
