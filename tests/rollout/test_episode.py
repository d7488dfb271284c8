"""The interleaved append-only layout (DESIGN §2.1) on the tiny model's chat template."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rollout.episode import ChatLayout, ChatTemplateError, Episode, hf_codec, system_prompt_for
from rollout.units import count_units

SYSTEM = "Translate German into English. Wait with an empty reply. [END] ends the source."
word = st.text(alphabet="abcXYZäöü12.,!?'-", min_size=1, max_size=7)
source_text = st.lists(word, min_size=1, max_size=14).map(" ".join)
# what the policy may write: empty (a wait), or text not starting with a newline
piece_text = st.one_of(st.just(""), st.text(alphabet="ab cdXY.,!?äö\n1'", max_size=14)
                       .filter(lambda s: not s.startswith("\n")))


@pytest.fixture(scope="module")
def codec(tiny_tokenizer):
    return (ChatLayout.from_tokenizer(tiny_tokenizer),) + hf_codec(tiny_tokenizer)


def make_episode(codec, source, chunk_size, unit="word"):
    layout, encode, decode, eot = codec
    return Episode(layout, encode, decode, source=source, system_prompt=SYSTEM, end_marker="[END]",
                   source_unit=unit, target_unit=unit, chunk_size=chunk_size, end_of_turn_id=eot)


def test_layout_from_chatml(codec, tiny_tokenizer):
    layout, _, _, eot = codec
    assert layout.system_open == "<|im_start|>system\n"
    assert layout.user_open == "<|im_start|>user\n"
    assert layout.user_close == "<|im_end|>\n<|im_start|>assistant\n"
    assert layout.end_of_turn == "<|im_end|>" and layout.after_turn == "\n"
    assert eot == tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(source=source_text, chunk_size=st.integers(1, 4), data=st.data())
def test_turn_by_turn_equals_whole_conversation(codec, tiny_tokenizer, source, chunk_size, data):
    """Appending step by step gives exactly the ids of the whole templated conversation."""
    ep = make_episode(codec, source, chunk_size)
    _, encode, _, eot = codec
    messages = [{"role": "system", "content": SYSTEM}]
    while not ep.done:
        user = ep.chunks[ep.step] + (" [END]" if ep.is_last_step else "")
        messages.append({"role": "user", "content": user})
        assert ep.prompt_ids == encode(tiny_tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True))
        piece = data.draw(piece_text)
        messages.append({"role": "assistant", "content": piece})
        ep.add_action(encode(piece) + [eot])
    whole = encode(tiny_tokenizer.apply_chat_template(messages, tokenize=False))
    n = len(ep.token_ids)
    assert whole[:n] == ep.token_ids and whole[n:] == encode("\n")
    # mask: 1 exactly on the assistant pieces and their end of turn
    traj = ep.trajectory()
    assert len(traj.action_mask) == len(traj.token_ids) == len(traj.logprobs)
    expected_actions = sum(len(encode(m["content"])) + 1 for m in messages if m["role"] == "assistant")
    assert sum(traj.action_mask) == expected_actions
    assert traj.token_ids[-1] == eot and traj.action_mask[-1] == 1


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(source=source_text, chunk_size=st.integers(1, 5), data=st.data())
def test_delays_and_waits(codec, source, chunk_size, data):
    _, encode, _, eot = codec
    ep = make_episode(codec, source, chunk_size)
    units_per_step = []
    while not ep.done:
        piece = data.draw(piece_text)
        before = len(ep.delays)
        ep.add_action(encode(piece) + [eot])
        units_per_step.append(len(ep.delays) - before)
        if not piece.strip():
            assert len(ep.delays) == before          # a wait writes no target units
    traj = ep.trajectory()
    S = traj.source_length
    assert S == len(source.split())
    assert all(a <= b for a, b in zip(traj.delays, traj.delays[1:]))
    assert all(1 <= d <= S for d in traj.delays)
    assert len(traj.delays) == count_units(traj.hypothesis, "word") == sum(units_per_step)
    assert traj.num_steps == -(-S // chunk_size)


def test_hand_built_episode(codec):
    _, encode, decode, eot = codec
    ep = make_episode(codec, "Die Katze sitzt auf der Matte", 2)
    assert ep.chunks == ["Die Katze", "sitzt auf", "der Matte"]
    lp = [-0.5] * (len(encode("The cat")) + 1)
    assert ep.add_action(encode("The cat") + [eot], lp) == "The cat"
    assert ep.add_action([eot]) == ""                            # wait
    assert not ep.done and ep.is_last_step
    assert decode(ep.prompt_ids).endswith("user\nder Matte [END]\nassistant\n")
    ep.add_action(encode(" sits on the mat.") + [eot])
    traj = ep.trajectory(source_index=7)
    assert traj.hypothesis == "The cat sits on the mat."
    assert traj.delays == [2, 2, 6, 6, 6, 6]
    assert traj.pieces == ["The cat", "", "sits on the mat."]
    assert traj.meta == {"source_index": 7}
    sampled = [lp for lp, m in zip(traj.logprobs, traj.action_mask) if m]
    assert sampled[:len(lp)] == lp
    with pytest.raises(RuntimeError):
        ep.add_action([eot])


def test_cap_without_end_of_turn_closes_the_turn(codec):
    _, encode, _, eot = codec
    ep = make_episode(codec, "a b c d", 2)
    n_before = len(ep.token_ids)
    cut = encode("The cat sat")
    ep.add_action(cut)                                           # hit the cap: no end of turn
    assert ep.truncated_steps == 1
    added = ep.token_ids[n_before:n_before + len(cut) + 1]
    assert added == cut + [eot]
    assert ep.action_mask[n_before:n_before + len(cut) + 1] == [1] * len(cut) + [0]


def test_chinese_source_and_target_count_characters(codec):
    _, encode, _, eot = codec
    layout = codec[0]
    ep = Episode(layout, codec[1], codec[2], source="我们在说话人还在讲话", system_prompt=SYSTEM,
                 end_marker="[END]", source_unit="char", target_unit="char", chunk_size=4,
                 end_of_turn_id=eot)
    assert ep.chunks == ["我们在说", "话人还在", "讲话"]
    ep.add_action(encode("我们") + [eot])
    ep.add_action([eot])
    ep.add_action(encode("在说话") + [eot])
    traj = ep.trajectory()
    assert traj.hypothesis == "我们在说话" and traj.delays == [4, 4, 10, 10, 10]


def test_llama3_style_template_and_a_rejected_one():
    """Any append-only template works; one that rewrites earlier turns is refused."""
    def llama(msgs, gen):
        out = "<|begin_of_text|>" + "".join(
            f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content']}<|eot_id|>" for m in msgs)
        return out + ("<|start_header_id|>assistant<|end_header_id|>\n\n" if gen else "")

    from rollout.episode import _A1, _SYS, _U1, _U2
    s, u1, a1, u2 = ({"role": "system", "content": _SYS}, {"role": "user", "content": _U1},
                     {"role": "assistant", "content": _A1}, {"role": "user", "content": _U2})
    specials = ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]
    layout = ChatLayout.from_renders(llama([s], False), llama([s, u1], True), llama([s, u1, a1], False),
                                     llama([s, u1, a1, u2], True), specials)
    assert layout.end_of_turn == "<|eot_id|>" and layout.after_turn == ""
    assert layout.user_close.endswith("assistant<|end_header_id|>\n\n")

    def numbered(msgs, gen):   # rewrites the system turn with the turn count: not append-only
        return f"[{len(msgs)}]" + llama(msgs, gen)

    with pytest.raises(ChatTemplateError, match="append-only"):
        ChatLayout.from_renders(numbered([s], False), numbered([s, u1], True),
                                numbered([s, u1, a1], False), numbered([s, u1, a1, u2], True), specials)


def test_system_prompt_names_languages():
    text = system_prompt_for("From {src_lang} to {tgt_lang}; {end_marker}", "de", "zh", "[END]")
    assert text == "From German to Chinese; [END]"


def make_mode_episode(codec, source, chunk_size, mode, **rules):
    from rollout.episode import WriteRules

    layout, encode, decode, eot = codec
    return Episode(layout, encode, decode, source=source, system_prompt=SYSTEM, end_marker="[END]",
                   source_unit="word", target_unit="word", chunk_size=chunk_size, end_of_turn_id=eot,
                   mode=mode, rules=WriteRules(**rules))


# what a continuing reply may write: empty (a wait), or text that does not start with a newline
continuation = st.one_of(st.just(""), st.text(alphabet="ab cdXY.,!?äö1'", max_size=14)
                         .filter(lambda s: not s.startswith("\n")))


@pytest.mark.parametrize("mode", ["continue", "prefix"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(source=source_text, chunk_size=st.integers(1, 4), data=st.data())
def test_continuing_layouts_equal_the_whole_conversation(codec, tiny_tokenizer, mode, source, chunk_size, data):
    """Every reply restates the translation so far (its ids as sampled, never re-encoded) and
    continues it; the user turn is the new chunk (continue) or the source read so far (prefix);
    appended step by step, the ids read as the templated conversation, and every restated
    translation is exactly the ids sampled before."""
    ep = make_mode_episode(codec, source, chunk_size, mode)
    _, encode, decode, eot = codec
    words = source.split()
    messages = [{"role": "system", "content": SYSTEM}]
    written, written_ids = "", []
    while not ep.done:
        k = ep.step
        user = " ".join(words[k * chunk_size:(k + 1) * chunk_size]) if mode == "continue" \
            else " ".join(words[:(k + 1) * chunk_size])
        messages.append({"role": "user", "content": user + (" [END]" if ep.is_last_step else "")})
        text = tiny_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert tiny_tokenizer.decode(ep.prompt_ids, skip_special_tokens=False) == text + written
        assert ep.prompt_ids[len(ep.prompt_ids) - len(written_ids):] == written_ids
        piece = data.draw(continuation)
        ep.add_action(encode(piece) + [eot])
        written, written_ids = written + piece, written_ids + encode(piece)
        messages.append({"role": "assistant", "content": written})
    traj = ep.trajectory()
    assert traj.hypothesis == " ".join(written.split())
    assert len(traj.delays) == count_units(traj.hypothesis, "word")
    assert all(a <= b for a, b in zip(traj.delays, traj.delays[1:]))


def test_a_word_continued_later_counts_when_it_is_complete(codec):
    _, encode, _, eot = codec
    ep = make_mode_episode(codec, "Die Katze sitzt auf der Matte", 2, "prefix")
    ep.add_action(encode("The ca") + [eot])          # an open word ...
    ep.add_action(encode("t sits") + [eot])          # ... finished at step 2
    ep.add_action(encode(" on the mat.") + [eot])
    traj = ep.trajectory()
    assert traj.hypothesis == "The cat sits on the mat."
    assert traj.delays == [2, 4, 4, 6, 6, 6]
    assert traj.pieces == ["The ca", "t sits", " on the mat."]


def test_unit_bound_cuts_a_reply_at_the_first_unit_beyond(codec):
    """ρ = 1: after 2 words read the translation holds at most 2 words. The token that would start
    the third word and everything after it are dropped; the end of turn becomes an observation."""
    _, encode, decode, eot = codec
    ep = make_mode_episode(codec, "Die Katze sitzt auf", 2, "continue", units_per_read=1.0)
    start = len(ep.token_ids)
    reply = encode("The cat sits on")
    ep.add_action(reply + [eot], [-0.1] * (len(reply) + 1))
    kept = encode("The cat")
    assert ep.token_ids[start:start + len(kept) + 1] == kept + [eot]
    assert ep.action_mask[start:start + len(kept) + 1] == [1] * len(kept) + [0]
    assert ep.cut_steps == 1 and ep.truncated_steps == 0 and ep.text == "The cat"
    ep.add_action(encode(" sits on the mat") + [eot])  # the last step: no bound
    assert ep.trajectory().hypothesis == "The cat sits on the mat"


def test_the_end_marker_never_reaches_the_translation(codec):
    _, encode, _, eot = codec
    for mode in ("pieces", "continue", "prefix"):
        ep = make_mode_episode(codec, "Die Katze sitzt", 3, mode)
        ep.add_action(encode("The cat sits. [END] more") + [eot])
        traj = ep.trajectory()
        assert "[END]" not in traj.hypothesis and "END" not in traj.hypothesis
        assert traj.hypothesis == "The cat sits." and traj.cut_steps == 1


def test_writing_rules_by_hand():
    from rollout.writing import completion_delays, longest_allowed_prefix, unit_bound, unit_ends

    assert unit_ends("The  cat\nsat", "word") == [3, 8, 12]
    assert unit_ends("我们 在", "char") == [1, 2, 4]
    assert completion_delays("The cat sat", "word", [5, 11], [3, 6]) == [3, 6, 6]
    assert unit_bound(4, 10, units_per_read=1.5, schedule_k=None) == 6
    assert unit_bound(4, 10, units_per_read=1.5, schedule_k=3) == 2
    assert unit_bound(10, 10, units_per_read=1.5, schedule_k=3) is None
    assert unit_bound(4, 10, units_per_read=None, schedule_k=None) is None
    words = ["a", " b", "c", " d", " e"]
    text = lambda ids: "".join(words[i] for i in ids)   # noqa: E731
    ids = list(range(5))
    assert longest_allowed_prefix(ids, text, text, "word", limit=2, marker=None) == 3     # "a bc" (+ " d" cut)
    assert longest_allowed_prefix(ids, text, text, "word", limit=None, marker="d") == 3
    assert longest_allowed_prefix(ids, text, text, "word", limit=9, marker=None) == 5


def test_a_reply_never_runs_past_the_engine_context(codec):
    from rollout.episode import EpisodeTooLong

    _, encode, _, eot = codec
    opening = len(make_mode_episode(codec, "a b c d e f", 1, "prefix").token_ids)
    ep = make_mode_episode(codec, "a b c d e f", 1, "prefix", max_new_tokens_per_step=32,
                           max_total_tokens=opening + 60)
    assert ep.max_new_tokens() == 32
    while ep.max_new_tokens() == 32:
        ep.add_action(encode(" w") + [eot])
    assert 0 < ep.max_new_tokens() < 32                  # the cap shrinks to what still fits
    with pytest.raises(EpisodeTooLong, match="raise rollout.engine.max_model_len or lower data.max_source_units"):
        while True:
            ep.add_action(encode(" w" * 8)[:ep.max_new_tokens()])
