"""Quality scorers, the batched group scoring, reward settings and the ablation configs."""
from __future__ import annotations

from pathlib import Path

import pytest
from sacrebleu.metrics import BLEU, CHRF

from orchestration.config_loader import ConfigError, load_config
from reward.config import RewardConfig
from reward.fusion import fuse_group, length_ratio, raw_latency
from reward.scorers import QUALITY_SCORERS, BleuScorer, Chrf1Scorer, ChrfBpScorer, ChrfScorer, build_scorer
from reward.text_metrics import char_length, long_output_penalty
from reward.service import RewardWorker, actor_options, score_groups
from reward.types import QualityItem, RewardInput, RewardSettings

REPO = Path(__file__).resolve().parents[2]
PAIRS = [("Die Katze sitzt auf der Matte.", "The cat sits on the mat.", "The cat is sitting on the mat."),
         ("Guten Morgen", "Good morning", "Good morning!"),
         ("Hallo", "", "Hello")]


def test_chrf_equals_sacrebleu_sentence_chrf():
    items = [QualityItem(s, h, r) for s, h, r in PAIRS]
    expected = [CHRF().sentence_score(h, [r]).score for _, h, r in PAIRS]
    assert ChrfScorer().score(items) == expected
    assert ChrfScorer().info.name == "chrf" and "version" in ChrfScorer().info.signature


def test_bleu_uses_the_zh_tokenizer_for_chinese_targets():
    hyp, ref = "我们是中国人民", "我们都是中国人"
    zh = BleuScorer().score([QualityItem("we are", hyp, ref, "char")])[0]
    assert zh == BLEU(tokenize="zh", effective_order=True).sentence_score(hyp, [ref]).score
    assert zh > 0
    # with 13a the unsegmented Chinese string is one token: no match at all
    assert BleuScorer().score([QualityItem("we are", hyp, ref, "word")])[0] == 0.0
    en = BleuScorer().score([QualityItem(*PAIRS[0])])[0]
    assert en == BLEU(tokenize="13a", effective_order=True).sentence_score(PAIRS[0][1], [PAIRS[0][2]]).score


def test_chrf1_equals_sacrebleu_chrf_with_beta_1():
    items = [QualityItem(s, h, r) for s, h, r in PAIRS]
    assert Chrf1Scorer().score(items) == [CHRF(beta=1).sentence_score(h, [r]).score for _, h, r in PAIRS]
    assert Chrf1Scorer().info.signature.startswith("chrF1|")


def test_bleu_is_effective_order_with_exp_smoothing():
    hyp, ref = "the cat sat", "the cat sat on the mat"
    want = BLEU(tokenize="13a", effective_order=True, smooth_method="exp").sentence_score(hyp, [ref]).score
    assert BleuScorer().score([QualityItem("x", hyp, ref)]) == [want]
    # effective order: a 2-word hypothesis is not zeroed by its missing 3- and 4-grams
    assert BleuScorer().score([QualityItem("x", "the cat", ref)])[0] > 0
    assert "smooth:exp" in BleuScorer().info.signature and "eff:yes" in BleuScorer().info.signature


def test_chrf_bp_is_chrf2_with_a_penalty_on_long_outputs_only():
    ref = "The cat is sitting on the mat."
    short, long_ = "The cat sits.", "The cat is sitting on the mat. The cat is sitting."
    assert char_length(ref) == 24 and char_length(long_) == 40
    assert long_output_penalty(short, ref) == 1.0 and long_output_penalty(ref, ref) == 1.0
    assert long_output_penalty(long_, ref) == pytest.approx(2.718281828459045 ** (1 - 40 / 24))
    chrf2 = CHRF()
    got = ChrfBpScorer().score([QualityItem("x", h, ref) for h in (short, ref, long_)])
    assert got[:2] == [chrf2.sentence_score(short, [ref]).score, 100.0]          # chrF2 up to |ref|
    assert got[2] == pytest.approx(chrf2.sentence_score(long_, [ref]).score * long_output_penalty(long_, ref))
    # characters, not words: the same rule for an unsegmented Chinese target
    assert long_output_penalty("我们是中国人我们是", "我们是中国人") == pytest.approx(2.718281828459045 ** (1 - 9 / 6))


PADDED = [  # (reference, copy-padded hypothesis: the exact translation and its own repetition)
    ("The cat is sitting on the mat.", "The cat is sitting on the mat. The cat is sitting on the mat."),
    ("Good morning, everyone.", "Good morning, everyone. Good morning, everyone. Good morning"),
    ("The prime ministers of India and Japan met in Tokyo.",
     "The prime ministers of India and Japan met in Tokyo. The prime ministers of India"),
]


@pytest.mark.parametrize("name", ["chrf1", "bleu", "chrf_bp"])
def test_new_scorers_punish_copy_padding_clearly(name):
    scorer, chrf2 = build_scorer(RewardSettings(quality=name)), ChrfScorer()
    assert scorer.info.name == name and scorer.info.scale == 100.0
    for ref, padded in PADDED:
        exact, longer = scorer.score([QualityItem("x", ref, ref), QualityItem("x", padded, ref)])
        c_exact, c_longer = chrf2.score([QualityItem("x", ref, ref), QualityItem("x", padded, ref)])
        assert longer < exact
        # and by more than chrF2, which weights recall twice and barely notices
        assert exact - longer > 1.5 * (c_exact - c_longer), (name, ref, exact, longer, c_exact, c_longer)


def test_registry_and_unknown_names():
    assert set(QUALITY_SCORERS) == {"chrf", "chrf1", "chrf_bp", "bleu", "comet"}
    for name in ("chrf", "chrf1", "chrf_bp", "bleu"):
        info = build_scorer(RewardSettings(quality=name)).info
        assert info.name == name and info.scale == 100.0 and "version" in info.signature
    assert build_scorer(RewardSettings(quality="bleu")).info.name == "bleu"
    with pytest.raises(ValueError, match="unknown quality scorer 'meteor'"):
        build_scorer(RewardSettings(quality="meteor"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs reward.comet_model"):
        build_scorer(RewardSettings(quality="comet"))


class CountingChrf(ChrfScorer):
    """The real chrF scorer, counting its calls (to check batching)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    def score(self, items):
        self.calls.append(len(items))
        return super().score(items)


def _group(src: str, ref: str, hyps: list[tuple[str, list[int]]], unit: str = "word") -> list[RewardInput]:
    n = len(src.split())
    return [RewardInput(src, ref, h, d, n, unit, 3) for h, d in hyps]


GROUPS = [
    _group("a b c d e f", "the cat sat on the mat",
           [("the cat sat", [3, 3, 6]), ("", []), ("a cat sat on a mat", [3, 3, 3, 6, 6, 6])]),
    _group("g h i", "good morning", [("good morning", [3, 3]), ("morning", [3])]),
    _group("j k l m", "我们是中国人", [("我们是人", [3, 3, 4, 4]), ("我们", [4, 4])], unit="char"),
]


def test_score_groups_batches_all_groups_in_one_call_and_fuses_each():
    scorer = CountingChrf()
    settings = RewardSettings()
    results, scored, _ = score_groups(GROUPS, scorer, settings)
    assert scorer.calls == [6]  # 7 trajectories, the empty one is not scored: one call
    assert scored == 6
    for group, result in zip(GROUPS, results):
        lats = [raw_latency(t) for t in group]
        q = [None if lat is None else CHRF().sentence_score(t.hypothesis, [t.reference]).score
             for t, lat in zip(group, lats)]
        expected = fuse_group(q, lats, chunk_size=3, source_length=group[0].source_length,
                              length_ratios=[length_ratio(t) for t in group], scorer=scorer.info)
        assert result == expected
    assert results[0].trajectories[1].empty and results[0].scorer.name == "chrf"
    # "我们" against a 6-character reference: ratio 1/3, outside the default gate [0.5, 2]
    assert [t.gated for g in results for t in g.trajectories] == [False, False, False, False, False, False, True]


def test_worker_reports_time_and_throughput():
    worker = RewardWorker(RewardSettings(latency_metric="laal", lam=1.0))
    batch = worker.score(GROUPS)
    assert batch.segments == 7 and batch.scored_segments == 6 and batch.seconds > 0
    assert batch.segments_per_s > 0 and batch.stats["calls"] == 1
    assert batch.stats["degenerate"] == 1
    assert RewardWorker(RewardSettings(length_gate=None)).score(GROUPS).stats["degenerate"] == 0
    assert worker.quality([QualityItem(*PAIRS[0])]).scores == [CHRF().sentence_score(PAIRS[0][1], [PAIRS[0][2]]).score]
    assert worker.stats()["segments"] == 8


def test_a_group_must_share_its_source():
    mixed = [GROUPS[0][0], GROUPS[1][0]]
    with pytest.raises(ValueError, match="group 0 mixes sources"):
        score_groups([mixed], ChrfScorer(), RewardSettings())


def test_comet_actor_options_use_the_comet_interpreter():
    opts = actor_options(RewardSettings(quality="comet", comet_model="x", device="cuda"))
    assert opts["runtime_env"]["py_executable"] == str(REPO / ".venv-comet" / "bin" / "python")
    assert opts["num_gpus"] == 1
    assert "runtime_env" not in actor_options(RewardSettings())
    with pytest.raises(FileNotFoundError, match="reward.comet_python"):
        actor_options(RewardSettings(quality="comet", comet_model="x", comet_python="nope/python"))


# --- configuration --------------------------------------------------------------------------

def test_config_to_settings_and_comet_needs_a_model():
    cfg = load_config(None, ["reward.quality=bleu", "reward.lam=0.5", "reward.truncate=normalized",
                             "reward.truncate_c=-0.5", "reward.replicas=2"])
    s = cfg.reward.settings()
    assert (s.quality, s.lam, s.truncate, s.truncate_c, s.replicas) == ("bleu", 0.5, "normalized", -0.5, 2)
    assert RewardConfig().settings() == RewardSettings()  # one set of defaults
    with pytest.raises(ConfigError, match="quality=comet needs reward.comet_model"):
        load_config(None, ["reward.quality=comet"])
    with pytest.raises(ConfigError, match="reward.truncate: Input should be 'raw', 'normalized' or 'none'"):
        load_config(None, ["reward.truncate=clip"])
    with pytest.raises(ConfigError, match="reward.lam: Input should be less than or equal to 100"):
        load_config(None, ["reward.lam=1000"])


def test_new_reward_keys_defaults_and_settings():
    cfg = RewardConfig()
    assert (cfg.latency_metric, cfg.latency_floor, cfg.length_gate, cfg.mode, cfg.quality) == \
        ("laal", 4.0, [0.5, 2.0], "fused", "chrf")
    assert (cfg.quality_threshold, cfg.max_latency) == (None, 10.0)
    s = load_config(None, ["reward.mode=gated", "reward.quality_threshold=30", "reward.max_latency=8",
                           "reward.latency_floor=null", "reward.length_gate=[0.25, 3]",
                           "reward.quality=chrf_bp"]).reward.settings()
    assert (s.mode, s.quality_threshold, s.max_latency, s.latency_floor, s.length_gate, s.quality) == \
        ("gated", 30.0, 8.0, None, (0.25, 3.0), "chrf_bp")
    assert load_config(None, ["reward.length_gate=null"]).reward.settings().length_gate is None
    with pytest.raises(ConfigError, match="reward.length_gate: List should have at least 2 items"):
        load_config(None, ["reward.length_gate=[1.0]"])
    with pytest.raises(ConfigError, match="reward.latency_floor: Input should be less than or equal to 1000"):
        load_config(None, ["reward.latency_floor=5000"])
    with pytest.raises(ConfigError, match="reward.mode: Input should be"):
        load_config(None, ["reward.mode=hinge"])


def test_reward_cross_field_rules_report_everything_at_once():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["reward.mode=gated", "reward.length_gate=[2.0, 0.5]"])
    text = str(err.value)
    assert "2 inconsistent setting(s)" in text
    assert "reward.mode=gated: needs reward.quality_threshold" in text
    assert "reward.length_gate=[2, 0.5]: needs lo < hi" in text
    with pytest.raises(ConfigError, match=r"reward.quality_threshold=30: above the top of comet's scale \(1\)"):
        load_config(None, ["reward.mode=gated", "reward.quality_threshold=30", "reward.quality=comet",
                           "reward.comet_model=x"])
    # a latency floor with another truncation is allowed and ignored (it has a default; see fusion tests)
    cfg = load_config(None, ["reward.truncate=none", "reward.latency_floor=6"])
    assert cfg.reward.truncate == "none" and cfg.reward.latency_floor == 6.0
    assert load_config(None, ["reward.mode=gated", "reward.quality_threshold=0.5", "reward.quality=comet",
                              "reward.comet_model=x"]).reward.mode == "gated"


ABLATIONS = {
    "lambda-0.5": {"lam": 0.5}, "lambda-1": {"lam": 1.0}, "lambda-2": {"lam": 2.0},
    "lambda-4": {"lam": 4.0}, "no-truncation": {"truncate": "none"}, "al": {"latency_metric": "al"},
    "quality-only": {"mode": "quality_only"}, "latency-only": {"mode": "latency_only"},
}


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_ablation_configs_load(name):
    path = REPO / "configs" / "ablations" / f"{name}.yaml"
    assert path.read_text().splitlines()[1] == "base: ../default.yaml"
    cfg = load_config(path)
    default = load_config(REPO / "configs" / "default.yaml")
    for key, value in ABLATIONS[name].items():
        assert getattr(cfg.reward, key) == value
    # everything else is the default run
    changed = {k for k, v in cfg.reward.model_dump().items() if v != getattr(default.reward, k)}
    assert changed <= set(ABLATIONS[name])
    assert cfg.run.name == f"ablation-{name}"


def test_every_ablation_file_is_tested():
    assert {p.stem for p in (REPO / "configs" / "ablations").glob("*.yaml")} == set(ABLATIONS)


def test_bench_config_loads():
    cfg = load_config(REPO / "configs" / "bench" / "reward-chrf.yaml")
    assert cfg.reward.quality == "chrf"
