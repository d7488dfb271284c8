"""SimulMask + ExPosST (DESIGN §2.5): the mask by hand, and masked one-pass training equal to
incremental wait-k inference with a reused KV cache, on the tiny model in fp32."""
from __future__ import annotations

import pytest
import torch

from learner.simulmask import (PrefixSegments, collate_prefix, expost_positions, masked_logprobs, simulmask,
                               wait_k_reads)
from rollout.episode import hf_codec
from rollout.prefix_layout import PrefixPrompter
from rollout.types import Source

SOURCE = "Der Zug nach Berlin hat heute zwanzig Minuten Verspätung."
TARGET = "The train to Berlin is twenty minutes late today."


def test_mask_equals_hand_built_one():
    seg = PrefixSegments(prompt=2, source=3, middle=1, target=3)
    reads = wait_k_reads(1, 3, 3)
    assert reads == [1, 2, 3]
    expected = torch.tensor([
        # p p s s s m t t t
        [1, 0, 0, 0, 0, 0, 0, 0, 0],   # prompt
        [1, 1, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0, 0],   # source: prompt + earlier source
        [1, 1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 1, 0, 0, 0],   # middle: first read only
        [1, 1, 1, 1, 0, 1, 1, 0, 0],   # t0 predicts t1: 2 source tokens read
        [1, 1, 1, 1, 1, 1, 1, 1, 0],   # t1 predicts t2: 3 read
        [1, 1, 1, 1, 1, 1, 1, 1, 1],
    ], dtype=torch.bool)
    assert torch.equal(simulmask(seg, reads), expected)
    assert expost_positions(PrefixSegments(2, 3, 1, 3, source_slots=5)).tolist() == [0, 1, 2, 3, 4, 7, 8, 9, 10]


def test_bad_reads_are_refused():
    seg = PrefixSegments(1, 3, 1, 2)
    with pytest.raises(ValueError):
        simulmask(seg, [2, 1])
    with pytest.raises(ValueError):
        simulmask(seg, [1, 4])


@pytest.fixture(scope="module")
def model(sharp_tiny_model):
    return sharp_tiny_model


@pytest.fixture(scope="module")
def sentence(tiny_tokenizer):
    """The segments of the prefix layout as inference prompts it (rollout.prefix_layout)."""
    prompter = PrefixPrompter(tiny_tokenizer)
    target = prompter.encode(TARGET) + [hf_codec(tiny_tokenizer)[2]]   # the end-of-turn id closes it
    parts = prompter.segments(Source(0, SOURCE, "de", "en"), target)
    return parts["prompt"], parts["source"], parts["middle"], parts["target"]


def incremental(model, prompt, source, middle, target, reads, slots) -> torch.Tensor:
    """Wait-k inference with one KV cache: read, feed the last written token, score the next.

    Source tokens go into reserved position slots and, as the mask says, attend only to the
    prompt and earlier source; middle and target tokens attend to everything cached.
    """
    from transformers import DynamicCache

    P, M = len(prompt), len(middle)
    cache, kinds = DynamicCache(), []

    def feed(ids, positions, kind):
        past, q = len(kinds), len(ids)
        allowed = torch.ones(q, past + q, dtype=torch.bool)
        if kind == "source":   # a newly read token never sees middle or target tokens
            allowed[:, :past] = torch.tensor([k in ("prompt", "source") for k in kinds])
        allowed[:, past:] = torch.tril(torch.ones(q, q, dtype=torch.bool))
        mask = torch.zeros(1, 1, q, past + q).masked_fill(~allowed, torch.finfo(torch.float32).min)
        out = model(input_ids=torch.tensor([ids]), position_ids=torch.tensor([positions]), attention_mask=mask,
                    past_key_values=cache, use_cache=True, cache_position=torch.arange(past, past + q))
        kinds.extend([kind] * q)
        return torch.log_softmax(out.logits[0, -1].float(), dim=-1)

    with torch.no_grad():
        feed(prompt + source[:reads[0]], list(range(P + reads[0])), "source")
        logp = feed(middle, list(range(P + slots, P + slots + M)), "middle")
        read, out = reads[0], [float(logp[target[0]])]
        for i in range(1, len(target)):
            if reads[i] > read:
                feed(source[read:reads[i]], list(range(P + read, P + reads[i])), "source")
                read = reads[i]
            logp = feed([target[i - 1]], [P + slots + M + i - 1], "target")
            out.append(float(logp[target[i]]))
    return torch.tensor(out)


def one_pass(model, sentence, reads, expost: bool, slots: int) -> torch.Tensor:
    prompt, source, middle, target = sentence
    seg = PrefixSegments(len(prompt), len(source), len(middle), len(target), source_slots=slots)
    inputs = collate_prefix([(prompt + source + middle + target, seg, reads)], expost=expost)
    with torch.no_grad():
        lp = masked_logprobs(model, inputs["input_ids"], inputs["attention_mask"], inputs["position_ids"],
                             inputs["target_mask"])
    return lp[0, -len(target):]


@pytest.mark.parametrize("k", [1, 3])
def test_masked_pass_with_explicit_positions_equals_incremental_inference(model, sentence, k):
    _, source, _, target = sentence
    reads = wait_k_reads(k, len(target), len(source))
    slots = len(source) + 4          # more slots than tokens: ExPosST reserves ahead
    want = incremental(model, *sentence, reads, slots)
    got = one_pass(model, sentence, reads, expost=True, slots=slots)
    assert torch.allclose(got, want, atol=1e-4, rtol=0), (got - want).abs().max()


def naive_inference(model, prompt, source, middle, target, reads) -> torch.Tensor:
    """What a prefix-layout policy computes with plain positions: at each write the sequence
    holds only the source read so far, so positions run 0..n-1 over what is there and every
    target position shifts when a source token arrives (no KV reuse possible). Visibility is
    the mask's, so only the positions differ from the masked one-pass."""
    out = []
    for i in range(len(target)):
        g = reads[i]
        seg = PrefixSegments(len(prompt), g, len(middle), i + 1)
        inputs = collate_prefix([(prompt + source[:g] + middle + target[:i + 1], seg,
                                  [min(r, g) for r in reads[:i + 1]])], expost=False)
        with torch.no_grad():
            lp = masked_logprobs(model, inputs["input_ids"], inputs["attention_mask"], inputs["position_ids"],
                                 inputs["target_mask"])
        out.append(float(lp[0, -1]))
    return torch.tensor(out)


@pytest.mark.slow
def test_contiguous_positions_differ_from_inference(model, sentence):
    """Naive masked training (positions 0..L-1) puts every target token after the whole source;
    inference with plain positions puts it after the source read so far. The log-probs differ
    (the positional confusion); with reserved slots training and inference agree."""
    _, source, _, target = sentence
    reads = wait_k_reads(2, len(target), len(source))
    naive_train = one_pass(model, sentence, reads, expost=False, slots=len(source))
    naive_infer = naive_inference(model, *sentence, reads)
    partial = torch.tensor([r < len(source) for r in reads])
    gap = (naive_train - naive_infer).abs()
    assert gap[partial].max() > 1e-2                    # positions shifted: different scores
    assert torch.allclose(gap[~partial], torch.zeros(int((~partial).sum())), atol=1e-4)  # whole source read
    exact = one_pass(model, sentence, reads, expost=True, slots=len(source) + 4)
    assert torch.allclose(exact, incremental(model, *sentence, reads, len(source) + 4), atol=1e-4, rtol=0)


def test_batched_padding_keeps_rows_finite(model, sentence):
    prompt, source, middle, target = sentence
    seg_long = PrefixSegments(len(prompt), len(source), len(middle), len(target))
    short = target[:3]
    seg_short = PrefixSegments(len(prompt), len(source), len(middle), len(short))
    inputs = collate_prefix([(prompt + source + middle + target, seg_long, wait_k_reads(2, len(target), len(source))),
                             (prompt + source + middle + short, seg_short, wait_k_reads(2, 3, len(source)))])
    with torch.no_grad():
        lp = masked_logprobs(model, inputs["input_ids"], inputs["attention_mask"], inputs["position_ids"],
                             inputs["target_mask"])
    assert torch.isfinite(lp).all()
    alone = one_pass(model, sentence, wait_k_reads(2, len(target), len(source)), True, len(source))
    assert torch.allclose(lp[0, -len(target):], alone, atol=1e-5)


def test_the_learner_scores_a_prefix_trajectory_as_incremental_inference(model, sentence, tiny_model_dir):
    """The training path: a TrainTrajectory with segments and reads, collated by the learner and
    scored by ``sequence_logprobs`` on the learner's own model build (its attention kernel), gives
    the log-probs of incremental ExPosST wait-k inference on every target token."""
    from learner.batch import TrainBatch, TrainTrajectory
    from learner.policy import collate, load_causal_lm, sequence_logprobs

    prompt, source, middle, target = sentence
    learner_model = load_causal_lm(tiny_model_dir, "float32").eval()
    learner_model.load_state_dict(model.state_dict())          # the sharpened weights
    slots = len(source) + 4
    reads = wait_k_reads(2, len(target), len(source))
    ids = prompt + source + middle + target
    traj = TrainTrajectory(ids, [0] * (len(ids) - len(target)) + [1] * len(target), 0.0, [0.0] * len(ids),
                           segments=PrefixSegments(len(prompt), len(source), len(middle), len(target), slots),
                           reads=tuple(reads))
    short = TrainTrajectory(ids[:-2], [0] * (len(ids) - len(target)) + [1] * (len(target) - 2), 0.0,
                            [0.0] * (len(ids) - 2), reads=tuple(reads[:-2]),
                            segments=PrefixSegments(len(prompt), len(source), len(middle), len(target) - 2, slots))
    inputs = collate(TrainBatch([traj, short]))
    assert inputs["attention_mask"].shape == (2, len(ids), len(ids)) and "position_ids" in inputs
    with torch.no_grad():
        lp = sequence_logprobs(learner_model, inputs["input_ids"], inputs["attention_mask"], inputs["action_mask"],
                               position_ids=inputs["position_ids"])
    want = incremental(model, *sentence, reads, slots)
    assert torch.allclose(lp[0, -len(target):], want, atol=1e-4, rtol=0), (lp[0, -len(target):] - want).abs().max()
    assert torch.allclose(lp[1, len(ids) - len(target):len(ids) - 2], want[:-2], atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="mixes"):
        collate([traj, TrainTrajectory(ids, traj.action_mask, 0.0, [0.0] * len(ids))])
    with pytest.raises(ValueError, match="target segment"):
        TrainTrajectory(ids, [0] * len(ids), 0.0, [0.0] * len(ids), segments=traj.segments, reads=traj.reads)
