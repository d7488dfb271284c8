"""SFT episodes: the segmentation rule, and episodes identical to what a rollout that wrote
the reference pieces would have built (tiny tokenizer)."""
from __future__ import annotations

import pytest

from rollout.config import EpisodeConfig
from rollout.runner import EpisodeFactory, run_episodes
from rollout.types import GenerationResult, Source, Sampling
from rollout.sft_episodes import emitted_lengths, prefix_samples, reference_pieces, sft_trajectory

SRC = "Der Zug nach Berlin hat heute zwanzig Minuten Verspätung ."
REF = "The train to Berlin is twenty minutes late today ."


def test_rule_by_hand():
    # S=10, |ref|=8, m=3, k=3: floor(8*max(0, 3t-3)/10) for t=1..3, then the rest
    assert emitted_lengths(10, 8, 3, 3) == [0, 2, 4, 8]
    assert emitted_lengths(10, 8, 3, 0) == [2, 4, 7, 8]
    assert emitted_lengths(2, 5, 3, 3) == [5]                       # one step: everything at the end
    assert emitted_lengths(9, 3, 3, 100) == [0, 0, 3]               # lag beyond the source: wait, then all
    with pytest.raises(ValueError):
        emitted_lengths(0, 3, 3, 1)


def test_pieces_rejoin_to_the_reference():
    pieces = reference_pieces(SRC, REF, "word", "word", 3, 2)
    assert len(pieces) == 4 and " ".join(p for p in pieces if p) == REF
    zh = reference_pieces(SRC, "火车今天晚点二十分钟。", "word", "char", 3, 3)
    assert "".join(zh) == "火车今天晚点二十分钟。" and zh[0] == ""


@pytest.fixture(scope="module")
def factory(tiny_tokenizer):
    return EpisodeFactory(tiny_tokenizer, EpisodeConfig(layout="pieces", chunk_size=3,
                                                        system_prompt="Translate {src_lang}."))


class Scripted:
    """A backend that writes the given pieces, one per step, as the policy would sample them."""

    def __init__(self, factory, pieces):
        self.factory, self.pieces, self.step = factory, pieces, 0

    def generate(self, prompts, max_new_tokens, sampling):
        piece = self.pieces[self.step]
        self.step += 1
        ids = self.factory.encode(piece) + [self.factory.end_of_turn_id]
        return [GenerationResult(ids, [0.0] * len(ids), len(p)) for p in prompts]


def test_sft_episode_is_the_rollout_episode(factory, tiny_tokenizer):
    source = Source(0, SRC, "de", "en", REF)
    traj = sft_trajectory(factory, source, lag_k=3)
    pieces = reference_pieces(SRC, REF, "word", "word", 3, 3)
    rolled, _ = run_episodes(Scripted(factory, pieces), factory, [source], 1, Sampling(temperature=0.0))
    assert traj.token_ids == rolled[0].token_ids and traj.action_mask == rolled[0].action_mask
    assert traj.delays == rolled[0].delays and traj.hypothesis == REF
    # the ids are the templated conversation with the pieces as assistant turns
    messages = [{"role": "system", "content": "Translate German."}]
    for k, (chunk, piece) in enumerate(zip(factory.make(source).chunks, pieces)):
        messages += [{"role": "user", "content": chunk + (" [END]" if k == len(pieces) - 1 else "")},
                     {"role": "assistant", "content": piece}]
    text = tiny_tokenizer.apply_chat_template(messages, tokenize=False)
    assert traj.token_ids == factory.encode(text.removesuffix("\n"))
    # actions: each piece and its end of turn, nothing else
    acted = [i for i, m in zip(traj.token_ids, traj.action_mask) if m]
    want = [i for p in pieces for i in factory.encode(p) + [factory.end_of_turn_id]]
    assert acted == want and traj.pieces == pieces


@pytest.mark.parametrize("layout", ["continue", "prefix"])
def test_sft_episode_continues_one_translation(tiny_tokenizer, layout):
    """In the layouts whose replies continue the translation, the SFT episode is the templated
    conversation whose every reply is the reference prefix written so far, and whose user turns
    are the new chunk (continue) or the source read so far (prefix)."""
    cfg = EpisodeConfig(layout=layout, chunk_size=3, system_prompt="Translate {src_lang}.")
    fac = EpisodeFactory(tiny_tokenizer, cfg)
    source = Source(0, SRC, "de", "en", REF)
    traj = sft_trajectory(fac, source, lag_k=3)
    pieces = reference_pieces(SRC, REF, "word", "word", 3, 3, cfg.units_per_read)
    words, messages, written = SRC.split(), [{"role": "system", "content": "Translate German."}], []
    for k, piece in enumerate(pieces):
        last = k == len(pieces) - 1
        user = " ".join(words[3 * k:3 * k + 3]) if layout == "continue" else " ".join(words[:3 * k + 3])
        written += piece.split()
        messages += [{"role": "user", "content": user + (" [END]" if last else "")},
                     {"role": "assistant", "content": " ".join(written)}]
    text = tiny_tokenizer.apply_chat_template(messages, tokenize=False)
    assert traj.token_ids == fac.encode(text.removesuffix("\n"))
    assert traj.hypothesis == REF and traj.cut_steps == 0
    # the actions are each step's new words (with their leading space) and the end of turn
    acted = fac.decode([i for i, m in zip(traj.token_ids, traj.action_mask) if m and i != fac.end_of_turn_id])
    assert acted == REF
    assert traj.delays == [min(3 * (k + 1), len(words)) for k, p in enumerate(pieces) for _ in p.split()]


def test_segmentation_keeps_the_unit_bound():
    # a reference twice the source's length: lag 0 would write 4 units after 2 words read; ρ=1.5 allows 3
    pieces = reference_pieces("a b c d", "w1 w2 w3 w4 w5 w6 w7 w8", "word", "word", 2, 0, units_per_read=1.5)
    assert [len(p.split()) for p in pieces] == [3, 5]


def test_prefix_samples_one_per_write(factory):
    source = Source(0, SRC, "de", "en", REF)
    pieces = reference_pieces(SRC, REF, "word", "word", 3, 3)
    samples = prefix_samples(factory, source, lag_k=3)
    assert len(samples) == sum(1 for p in pieces if p)
    written = [factory.decode([i for i, m in zip(ids, mask) if m]).strip() for ids, mask in samples]
    assert written == [p for p in pieces if p]
    assert samples[-1][0][-1] == factory.end_of_turn_id and samples[0][0][-1] != factory.end_of_turn_id
    assert all(len(a[0]) < len(b[0]) for a, b in zip(samples, samples[1:]))


def test_prefix_samples_are_the_prompts_of_prefix_layout_inference(factory, tiny_tokenizer):
    """Prefix fine-tuning trains on exactly what prefix-layout inference prompts."""
    from rollout.prefix_layout import PrefixPrompter

    prompter, source = PrefixPrompter(tiny_tokenizer), Source(0, SRC, "de", "en", REF)
    pieces = [p for p in reference_pieces(SRC, REF, "word", "word", 3, 3)]
    samples = prefix_samples(factory, source, lag_k=3, prompter=prompter)
    written, t_samples = "", [t for t, p in enumerate(pieces, start=1) if p]
    for (ids, mask), t in zip(samples, t_samples):
        context = ids[:mask.index(1)]
        assert context == prompter.prompt(source, min(3 * t, len(SRC.split())),
                                          factory.encode(written) if written else [])
        written = (written + " " if written else "") + pieces[t - 1]


def test_prefix_segments_rebuild_the_whole_prompt(tiny_tokenizer):
    from rollout.prefix_layout import PrefixPrompter

    prompter, source = PrefixPrompter(tiny_tokenizer), Source(0, SRC, "de", "en", REF)
    target = prompter.encode(REF)
    parts = prompter.segments(source, target)
    assert parts["prompt"] + parts["source"] + parts["middle"] + parts["target"] == \
        prompter.prompt(source, len(SRC.split()), target)
    assert prompter.decode(parts["source"]) == SRC and parts["target"] == target


def test_prefix_sequence_is_the_whole_prompt_with_the_reads_of_each_write(factory, tiny_tokenizer):
    """One prefix-layout sequence per pair: the last expanded sample's tokens, and every target
    token carries the source tokens its write had read (those of its prefix sample's prompt)."""
    from rollout.prefix_layout import PrefixPrompter
    from rollout.sft_episodes import prefix_sequence

    prompter, source = PrefixPrompter(tiny_tokenizer), Source(0, SRC, "de", "en", REF)
    seq = prefix_sequence(factory, source, lag_k=3, prompter=prompter)
    samples = prefix_samples(factory, source, lag_k=3, prompter=prompter)
    n = seq.lengths
    assert len(seq.token_ids) == sum(n.values()) and len(seq.reads) == n["target"]
    target = seq.token_ids[-n["target"]:]
    assert target == [i for ids, mask in samples for i, m in zip(ids, mask) if m]   # the pieces, then the end
    assert seq.token_ids == prompter.prompt(source, len(SRC.split()), target)
    source_ids = seq.token_ids[n["prompt"]:n["prompt"] + n["source"]]
    pieces = reference_pieces(SRC, REF, "word", "word", 3, 3)
    steps = [t for t, p in enumerate(pieces, start=1) if p]
    reads = []
    for (ids, mask), t in zip(samples, steps):
        read = len(factory.encode(" ".join(SRC.split()[:min(3 * t, len(SRC.split()))])))
        assert ids[n["prompt"]:n["prompt"] + read] == source_ids[:read]   # that write's prompt held them
        reads += [read] * sum(mask)
    reads[-1] = n["source"]                # the end of turn is written with the whole source read
    assert seq.reads == reads and seq.reads[0] < n["source"]
