"""Chunking, units, delays and joining (DESIGN §2.1)."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollout.units import (chunk_source, count_units, num_steps,
                           split_units, unit_of)

words = st.text(alphabet="abcdeäöüßxyz", min_size=1, max_size=8)
zh_chars = st.sampled_from(list("我们在说话人还的时候翻译这个句子。"))


@pytest.mark.parametrize("lang,unit", [("zh", "char"), ("ja", "char"), ("zh-Hans", "char"), ("de", "word"),
                                       ("en", "word"), ("EN-us", "word")])
def test_the_unit_of_each_language(lang, unit):
    assert unit_of(lang) == unit


def test_units_of_languages():
    assert split_units("  Die  Katze\tsitzt ", "word") == ["Die", "Katze", "sitzt"]
    assert split_units("我们 在A", "char") == ["我", "们", "在", "A"]


def test_chunk_source_words_and_chars():
    assert chunk_source("a b c d e f g", "word", 3) == ["a b c", "d e f", "g"]
    assert chunk_source("我们在说话人还", "char", 4) == ["我们在说", "话人还"]
    # a chunk is a slice of the source: spaces inside a Chinese chunk are kept
    assert chunk_source("我 iPhone 好", "char", 3) == ["我 iP", "hon", "e 好"]


@settings(max_examples=200, deadline=None)
@given(st.lists(words, min_size=1, max_size=30), st.integers(1, 8))
def test_chunks_partition_the_words(ws, m):
    text = " ".join(ws)
    chunks = chunk_source(text, "word", m)
    assert len(chunks) == num_steps(len(ws), m) == math.ceil(len(ws) / m)
    assert " ".join(chunks).split() == ws
    assert all(count_units(c, "word") == m for c in chunks[:-1])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=12), st.integers(1, 6), st.integers(1, 40))
def test_completion_delays_of_whole_words_per_step(units, m, source_length):
    """Steps that write whole words: every word gets the read of the step that wrote it."""
    from rollout.units import step_delay
    from rollout.writing import completion_delays

    text, ends, reads = "", [], []
    for t, n in enumerate(units, start=1):
        text += "".join(" w" if text or i else "w" for i in range(n))
        ends.append(len(text))
        reads.append(step_delay(t, m, source_length))
    delays = completion_delays(text, "word", ends, reads)
    assert delays == [step_delay(t, m, source_length) for t, n in enumerate(units, start=1) for _ in range(n)]
    assert all(a <= b for a, b in zip(delays, delays[1:]))
    assert all(1 <= d <= source_length for d in delays)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab 我们\t\n\u3000.", max_size=20), st.sampled_from(["word", "char"]))
def test_units_agree_with_the_reward_side_and_simuleval(text, unit):
    """The rollout's delays and the reward's latency must count the same units."""
    from reward.text_metrics import count_units as reward_count

    assert count_units(text, unit) == reward_count(text, unit)
    simuleval_count = len(text.split()) if unit == "word" else len(text.replace(" ", ""))
    assert count_units(text, unit) == simuleval_count
