"""wait-k, LSG and offline: the decision rules as plain functions, and prefix-layout decoding
on the tiny model checked against the exact wait-k rule and a brute-force LSG reference."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rollout.hf_backend import HFBackend
from rollout.prefix_layout import (
    DEFAULT_PREFIX_SYSTEM_PROMPT, MAX_EMPTY_WRITES, PrefixPrompter, run_prefix_policy)
from rollout.types import GenerationResult, Source
from rollout.simul_policies import (
    ASK, READ, WRITE, IncrementalText, LSGPolicy, OfflinePolicy, WaitKPolicy, build_read_write_policy, kl_exact,
    kl_topk, lsg_bounds, lsg_range_action, normalize_spaces, waitk_delays)
from rollout.units import count_units

from tests.rollout.prefix_checks import (
    ReadRecorder, assert_exact, assert_lsg_rule, assert_waitk_rule, shared_with_previous)

SOURCES = [
    Source(0, "Die Katze sitzt auf der Matte und schaut aus dem Fenster.", "de", "en", "The cat sits."),
    Source(1, "Der Zug nach Berlin hat heute zwanzig Minuten Verspätung.", "de", "en"),
    Source(2, "Wir übersetzen den Satz.", "de", "en"),
]


# --- pure rules -----------------------------------------------------------------------------


def test_waitk_schedule():
    assert waitk_delays(3, 5, 8) == [3, 4, 5, 5, 5, 5, 5, 5]
    assert waitk_delays(1, 4, 3) == [1, 2, 3]
    assert waitk_delays(9, 4, 2) == [4, 4]          # k beyond the source: read it all first
    pol = WaitKPolicy(2)
    assert [pol.action(r, 0, 6) for r in range(3)] == [READ, READ, WRITE]
    assert pol.action(3, 1, 6) == WRITE and pol.action(2, 1, 6) == READ
    assert OfflinePolicy().action(5, 0, 6) == READ and OfflinePolicy().action(6, 0, 6) == WRITE


def test_lsg_range_rule():
    # unit i=1, L=2, U=3, S=10: READ below 2, ASK on [2, 5), WRITE at 5
    assert lsg_bounds(2, 3, 1, 10) == (2, 5)
    assert [lsg_range_action(j, 1, 10, 2, 3) for j in range(7)] == [READ, READ, ASK, ASK, ASK, WRITE, WRITE]
    assert lsg_bounds(2, 3, 9, 10) == (10, 10)
    assert lsg_range_action(10, 20, 10, 2, 3) == WRITE   # source finished -> WRITE
    assert lsg_range_action(4, 4, 10, 1, 0) == WRITE     # U = 0: exactly wait-L
    # unit 2 (written=1) of L=2, U=3, S=10: range [3, 6); one more READ stays inside below 6
    pol = LSGPolicy(delta=1.0, alpha=0.5, L=2, U=3)
    assert pol.read_within_bounds(5, 1, 10) and not pol.read_within_bounds(6, 1, 10)


def test_lsg_decision_thresholds_and_direction():
    cur = np.log(np.array([0.7, 0.2, 0.1]))
    base = np.log(np.array([0.2, 0.3, 0.5]))
    fwd = sum(p * math.log(p / q) for p, q in zip([0.7, 0.2, 0.1], [0.2, 0.3, 0.5]))
    rev = sum(q * math.log(q / p) for p, q in zip([0.7, 0.2, 0.1], [0.2, 0.3, 0.5]))
    assert kl_exact(cur, base) == pytest.approx(fwd)
    act, info = LSGPolicy(delta=fwd - 1e-6, alpha=0.99, L=1, U=1).decide(cur, base, 3)
    assert act == WRITE and info["kl"] == pytest.approx(fwd)
    act, info = LSGPolicy(delta=fwd + 1e-6, alpha=0.99, L=1, U=1).decide(cur, base, 3)
    assert act == READ                                   # neither rule fires
    act, _ = LSGPolicy(delta=100, alpha=0.69, L=1, U=1).decide(cur, base, 3)
    assert act == WRITE                                  # confidence rule: 0.7 > 0.69
    _, info = LSGPolicy(delta=100, alpha=1, L=1, U=1, kl_direction="reverse").decide(cur, base, 3)
    assert info["kl"] == pytest.approx(rev)


def test_topk_kl_is_exact_with_the_whole_vocabulary_and_close_with_most_mass():
    rng = np.random.default_rng(0)
    p = np.log(rng.dirichlet(np.ones(50) * 0.1))
    q = np.log(rng.dirichlet(np.ones(50) * 0.1))
    full_p, full_q = dict(enumerate(p)), dict(enumerate(q))
    assert kl_topk(full_p, full_q, 50) == pytest.approx(kl_exact(p, q), rel=1e-9)
    top = lambda d, k: dict(sorted(d.items(), key=lambda kv: -kv[1])[:k])  # noqa: E731
    assert kl_topk(top(full_p, 45), top(full_q, 45), 50) == pytest.approx(kl_exact(p, q), rel=0.05)


def test_build_policy_by_name():
    assert build_read_write_policy({"type": "waitk", "k": 3}) == WaitKPolicy(3)
    assert isinstance(build_read_write_policy({"type": "offline"}), OfflinePolicy)
    lsg = build_read_write_policy({"type": "lsg", "delta": 1.0, "alpha": 0.5, "L": 2, "U": 3, "kl": "reverse"})
    assert lsg == LSGPolicy(1.0, 0.5, 2, 3, "reverse")
    with pytest.raises(ValueError, match="unknown"):
        build_read_write_policy({"type": "nope"})


ZH_TEXT = "政府星期一宣布了新的交通规则。我们在说话人还在讲话的时候翻译这个句子。"


@pytest.mark.parametrize("text", [ZH_TEXT, "The cat sits on the mat.\n\n Die Katze sitzt  auf der Matte.",
                                  "Katze 星期一 sitzt。", ""])
@pytest.mark.parametrize("unit", ["word", "char"])
def test_incremental_text_is_the_one_shot_decoding_and_counts_units(tiny_tokenizer, text, unit):
    dec = lambda ids: tiny_tokenizer.decode(list(ids), skip_special_tokens=True)  # noqa: E731
    rng = np.random.default_rng(len(text))
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    ids += [int(t) for t in rng.integers(3, len(tiny_tokenizer), 40)]   # random tokens after it
    inc = IncrementalText(dec, unit)
    checked = 0
    for n, tok in enumerate(ids, 1):
        inc.append(tok)
        full = dec(ids[:n])
        if full.endswith("\ufffd"):
            assert full.startswith(inc.text)          # an unfinished character is held back
            continue
        assert inc.text == full
        units = count_units(normalize_spaces(full), unit)
        assert inc.units(finished=True) == units
        open_word = unit == "word" and bool(full) and not full[-1].isspace() and units > 0
        assert inc.units(finished=False) == units - open_word
        checked += 1
    assert checked > 10


class ScriptedBackend:
    """A fake generation backend that always continues one fixed token script (unit tests only;
    the tiny-model tests beside it run the real transformers backend)."""

    def __init__(self, script: list[int], eos: int, filler: int | None = None):
        self.script, self.eos, self.filler = script, eos, filler
        self.calls = 0

    def generate(self, prompts, caps, sampling):
        self.calls += 1
        out = []
        for p, cap in zip(prompts, caps):
            n = next(n for n in range(min(len(self.script), len(p)), -1, -1)
                     if n == 0 or list(p[-n:]) == self.script[:n])
            if self.filler is not None and sampling.min_tokens > 0:
                toks = [self.filler] * cap         # only whitespace while the source lasts
            else:
                toks = (self.script[n:] + [self.eos])[:cap]
            out.append(GenerationResult(toks, [0.0] * len(toks), len(p), 0))
        return out

    def next_token_logprobs(self, prompts):
        return [torch.full((self.eos + 1,), -math.log(self.eos + 1)) for _ in prompts]  # uniform


def test_multi_character_tokens_are_written_whole_with_the_delay_they_were_generated_with(tiny_tokenizer):
    enc = lambda t: tiny_tokenizer(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    eos = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    script = enc("我们在说话的时候。")
    # the tokens: 我's first byte, the rest of 我 + "们在", "说话", "的", 时's first byte, the
    # rest of 时 + 候's first bytes, 候's last byte, "。"
    assert [tiny_tokenizer.decode(script[:n]).rstrip("\ufffd") for n in range(1, len(script) + 1)] == [
        "", "我们在", "我们在说话", "我们在说话的", "我们在说话的", "我们在说话的时", "我们在说话的时候",
        "我们在说话的时候。"]
    prompter = PrefixPrompter(tiny_tokenizer)
    src = Source(0, "We translate the sentence while the speaker is still talking", "en", "zh")
    backend = ReadRecorder(ScriptedBackend(script, eos), prompter, [src])
    outs, stats = run_prefix_policy(backend, prompter, WaitKPolicy(2), [src], max_tokens_per_unit=2)
    out = outs[0]
    assert out.prediction == "我们在说话的时候。" and out.target_ids == script
    # every character of a token gets the delay of the write that generated the token: 我们在 at
    # 2 (the schedule's for 我), 说话 at 5 (说's), 时候 at 8 (时's): a later character of a token is
    # written earlier than the schedule min(k + i − 1, S) = [2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert out.delays == [2, 2, 2, 5, 5, 7, 8, 8, 10]
    assert_waitk_rule(out, 2, assert_exact(out, backend, prompter, "char"))
    assert stats["forced_reads"] == 0 and stats["discarded_lookahead"] == 0
    assert stats["generate_calls"] < len(out.delays)     # several units from one call


def test_forced_reads_are_reported_with_whether_they_break_the_bound(tiny_tokenizer):
    eos = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    newline = tiny_tokenizer("\n", add_special_tokens=False)["input_ids"][0]
    script = tiny_tokenizer("The cat sits.", add_special_tokens=False)["input_ids"]
    backend = ScriptedBackend(script, eos, filler=newline)
    src = Source(0, "Die Katze sitzt auf der Matte", "de", "en")
    outs, stats = run_prefix_policy(backend, PrefixPrompter(tiny_tokenizer), WaitKPolicy(2), [src],
                                    max_tokens_per_unit=2)
    out = outs[0]
    # 2 rule reads, then every further read is forced after MAX_EMPTY_WRITES empty writes
    assert [f["read"] for f in out.forced_reads] == [2, 3, 4, 5]
    assert all(f["beyond_bound"] for f in out.forced_reads)
    assert stats["forced_reads"] == stats["forced_reads_beyond_bound"] == 4
    assert stats["generate_calls"] == 4 * MAX_EMPTY_WRITES + 1
    assert out.delays == [6, 6, 6] and out.prediction == "The cat sits."
    # LSG (alpha 0: always WRITE when asked) with unit 1's range [1, 4): forced reads from 1-3
    # stay inside Eq. 5, those from 4 on are past its upper bound, and are reported as such
    outs, stats = run_prefix_policy(backend, PrefixPrompter(tiny_tokenizer),
                                    LSGPolicy(delta=1e9, alpha=0.0, L=1, U=3), [src], max_tokens_per_unit=2)
    assert [(f["read"], f["beyond_bound"]) for f in outs[0].forced_reads] == [
        (1, False), (2, False), (3, False), (4, True), (5, True)]
    assert stats["forced_reads_beyond_bound"] == 2


# --- decoding on the tiny model --------------------------------------------------------------


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield HFBackend(str(tiny_model_dir), dtype="float32")
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def prompter(backend):
    return PrefixPrompter(backend.tokenizer)


@pytest.mark.parametrize("k", [1, 3])
def test_waitk_delays_follow_the_exact_rule_in_word_units(backend, prompter, k):
    """delay_i = min(k + i − 1, S), except that a word sharing a token with the one before it
    has that one's delay (the random model often writes a broken byte, a token whose text shows
    only with the next one: "¦" + " wä" is "\ufffd wä", two words)."""
    rec = ReadRecorder(backend, prompter, SOURCES)
    outs, stats = run_prefix_policy(rec, prompter, WaitKPolicy(k), SOURCES, max_new_tokens_final=12)
    assert stats["generate_calls"] > 0 and stats["forced_reads"] == 0
    assert stats["discarded_lookahead"] > 0
    for out in outs:
        assert out.delays, out
        assert_waitk_rule(out, k, assert_exact(out, rec, prompter, "word"))
        assert len(out.compute_s) == len(out.delays) and out.compute_s == sorted(out.compute_s)


ZH_SOURCES = [
    Source(0, "政府星期一宣布了新的交通规则。", "zh", "en"),
    Source(1, "我们在说话人还在讲话的时候翻译这个句子。", "zh", "en"),
]
EN_SOURCES = [
    Source(0, "The government announced new traffic rules on Monday.", "en", "zh"),
    Source(1, "We translate the sentence while the speaker is still talking.", "en", "zh"),
]


@pytest.mark.parametrize("direction", ["zh-en", "en-zh"])
@pytest.mark.parametrize("k", [2, 4])
def test_waitk_delays_follow_the_exact_rule_in_character_units(backend, prompter, direction, k):
    """zh source: one READ = one character; zh target: one WRITE = one character, except that a
    token holding several characters (the random model's tokens often do; Latin pieces count a
    unit per letter) is written whole: delay_i = min(k + i − 1, S), but a character sharing a
    token with the one before it has that one's delay."""
    sources = ZH_SOURCES if direction == "zh-en" else EN_SOURCES
    tgt_unit = "char" if direction == "en-zh" else "word"
    rec = ReadRecorder(backend, prompter, sources)
    outs, stats = run_prefix_policy(rec, prompter, WaitKPolicy(k), sources, max_new_tokens_final=12)
    assert stats["forced_reads"] == 0
    shared = 0
    for src, out in zip(sources, outs):
        assert out.source_length == count_units(src.text, "char" if direction == "zh-en" else "word")
        assert len(out.delays) == count_units(out.prediction, tgt_unit)
        units = assert_exact(out, rec, prompter, tgt_unit)
        assert_waitk_rule(out, k, units)
        shared += len(shared_with_previous(units))
        reads = [d["read"] for d in out.decisions if d["action"] == READ]
        assert reads == list(range(out.source_length))   # one READ per source unit, in order
    if direction == "en-zh":
        assert shared > 0        # multi-character tokens were written whole, with one delay


def test_lsg_delays_stay_inside_its_range_in_character_units(backend, prompter):
    """Every unit's delay lies in Eq. 5's range for it, except a character sharing a token with
    the one before it, written with that one's delay."""
    L, U = 1, 3
    rec = ReadRecorder(backend, prompter, EN_SOURCES)
    outs, stats = run_prefix_policy(rec, prompter, LSGPolicy(delta=2e-5, alpha=0.0037, L=L, U=U),
                                    EN_SOURCES, max_new_tokens_final=12)
    assert stats["forced_reads_beyond_bound"] == 0
    shared = 0
    for out in outs:
        units = assert_exact(out, rec, prompter, "char")
        assert_lsg_rule(out, L, U, units)
        shared += len(shared_with_previous(units))
    assert shared > 0


def test_offline_reads_everything_first(backend, prompter):
    outs, stats = run_prefix_policy(backend, prompter, OfflinePolicy(), SOURCES, max_new_tokens_final=12)
    assert stats["generate_calls"] == 1
    for out in outs:
        assert set(out.delays) == {out.source_length}


def test_prompt_is_the_chat_template_with_the_target_appended(backend, prompter):
    tok = backend.tokenizer
    src = SOURCES[0]
    system = DEFAULT_PREFIX_SYSTEM_PROMPT.format(src_lang="German", tgt_lang="English")
    want = tok.apply_chat_template([{"role": "system", "content": system},
                                    {"role": "user", "content": "Die Katze sitzt"}],
                                   tokenize=False, add_generation_prompt=True)
    target = tok("The cat", add_special_tokens=False)["input_ids"]
    assert prompter.prompt(src, 3, target) == tok(want, add_special_tokens=False)["input_ids"] + target


def _reference_decision(model, tok, src: Source, read: int, written: int, target_ids: list[int],
                        L: int, U: int, delta: float, alpha: float) -> tuple[str, float, float]:
    """LSG written out plainly: chat template, full softmax, explicit KL sum, Eq. 3-5."""
    S = len(src.text.split())
    i = written + 1
    low, high = min(L + i - 1, S), min(L + i - 1 + U, S)
    if read >= S or read >= high:
        return "write", 0.0, 0.0
    if read < low:
        return "read", 0.0, 0.0
    system = DEFAULT_PREFIX_SYSTEM_PROMPT.format(src_lang="German", tgt_lang="English")

    def probs(j: int) -> torch.Tensor:
        text = tok.apply_chat_template(
            [{"role": "system", "content": system}, {"role": "user", "content": " ".join(src.text.split()[:j])}],
            tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False)["input_ids"] + target_ids
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1].double()
        return torch.softmax(logits, dim=-1)

    p_cur, p_base = probs(read), probs(min(i, S))
    kl = float(sum(p_cur[v] * (torch.log(p_cur[v]) - torch.log(p_base[v])) for v in range(len(p_cur))))
    p_max = float(p_cur.max())
    return ("write" if kl > delta or p_max > alpha else "read"), kl, p_max


def test_lsg_matches_a_brute_force_reference_at_every_decision(backend, prompter):
    # The random tiny model is nearly uniform: thresholds at its scale give both outcomes.
    L, U, delta, alpha = 1, 3, 2e-5, 0.004
    policy = LSGPolicy(delta=delta, alpha=alpha, L=L, U=U)
    outs, stats = run_prefix_policy(backend, prompter, policy, SOURCES, max_new_tokens_final=12)
    assert stats["distribution_calls"] > 0
    by_model = {"read": 0, "write": 0}
    checked = 0
    for src, out in zip(SOURCES, outs):
        for d in out.decisions:
            if d["by"] in ("no-unit", "continue"):
                continue   # not the model's decision: a forced read, a begun unit finished
            want, kl, p_max = _reference_decision(backend.model, backend.tokenizer, src, d["read"], d["written"],
                                                  out.target_ids[:d["target"]], L, U, delta, alpha)
            if d["by"] == "model":
                by_model[d["action"]] += 1
                assert d["kl"] == pytest.approx(kl, abs=1e-6) and d["p_max"] == pytest.approx(p_max, abs=1e-6)
                if min(abs(kl - delta), abs(p_max - alpha)) < 1e-6:
                    continue  # a float tie at the threshold may go either way
            assert d["action"] == want, (src.index, d, kl, p_max)
            checked += 1
    assert checked > 20 and by_model["read"] > 0 and by_model["write"] > 0, by_model


def test_an_overlong_word_is_cut_within_the_schedule(tiny_tokenizer):
    eos = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    word = "Verkehrsregelnankündigungsminutenverspätung"
    script = tiny_tokenizer(word + " ok", add_special_tokens=False)["input_ids"]
    assert len(tiny_tokenizer(word, add_special_tokens=False)["input_ids"]) > MAX_EMPTY_WRITES
    src = Source(0, "Die Katze sitzt auf der Matte", "de", "en")
    prompter = PrefixPrompter(tiny_tokenizer)
    backend = ReadRecorder(ScriptedBackend(script, eos), prompter, [src])
    outs, stats = run_prefix_policy(backend, prompter, WaitKPolicy(2), [src], max_tokens_per_unit=1)
    out = outs[0]
    assert stats["cut_words"] >= 1 and stats["forced_reads"] == 0
    assert out.prediction.replace(" ", "") == word + "ok" and " " in out.prediction
    assert out.delays == waitk_delays(2, 6, len(out.delays))
    assert out.target_ids == script                  # the model's tokens are kept as they are
    # the cut word's tokens were all generated with the source its delay records
    assert_exact(out, backend, prompter, "word")
