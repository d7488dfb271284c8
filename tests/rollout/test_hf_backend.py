"""The transformers reference runner: greedy equals ``model.generate``, log-probs equal a
teacher-forced forward pass, and streaming episodes run through it keep their invariants."""
from __future__ import annotations

import math

from collections import Counter

import pytest
import torch

from rollout.config import EpisodeConfig
from rollout.hf_backend import HFBackend
from rollout.runner import EpisodeFactory, run_episodes
from rollout.types import Sampling, Source

GREEDY = Sampling(temperature=0)
TEXTS = ["Die Katze sitzt", "The train to Berlin is twenty minutes late today and",
         "我们", "Wir übersetzen den Satz, während der Sprecher noch redet."]
SOURCES = [
    Source(0, "Die Katze sitzt auf der Matte und schaut aus dem Fenster.", "de", "en"),
    Source(1, "Der Zug nach Berlin hat heute Verspätung.", "de", "en"),
    Source(2, "Wir übersetzen.", "de", "en"),
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model gains nothing from intra-op threads, and on a busy 2-core machine their
    spinning makes these tests several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    return HFBackend(str(tiny_model_dir), dtype="float32", seed=0)


@pytest.fixture(scope="module")
def prompts(backend):
    tok = backend.tokenizer
    return [tok.apply_chat_template([{"role": "user", "content": t}], tokenize=True,
                                    add_generation_prompt=True, return_dict=True)["input_ids"]
            for t in TEXTS]


def reference_greedy(model, prompt, n):
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                         do_sample=False)
    return out[0, len(prompt):].tolist()


def teacher_forced_logprobs(model, context, targets):
    """log p(target_i | context + targets[:i]) from one forward pass over the whole sequence."""
    ids = torch.tensor([list(context) + list(targets)])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
    pos = torch.arange(len(context) - 1, ids.shape[1] - 1)
    return logp[pos, torch.tensor(targets)]


def test_greedy_equals_model_generate(backend, prompts):
    caps = [24, 5, 17, 30]
    results = backend.generate(prompts, caps, GREEDY)
    for prompt, cap, res in zip(prompts, caps, results):
        assert res.token_ids == reference_greedy(backend.model, prompt, cap)
        assert res.prompt_tokens == len(prompt) and res.cached_prompt_tokens == 0
        assert len(res.logprobs) == len(res.token_ids) == cap   # random weights: no eos here


@pytest.mark.parametrize("sampling", [GREEDY, Sampling(temperature=1.0, top_p=0.9),
                                      Sampling(temperature=0.7)])
def test_logprobs_equal_teacher_forcing(backend, prompts, sampling):
    """Raw log-probs (temperature 1, before top-p) of the sampled tokens, whatever the sampling."""
    for prompt, res in zip(prompts, backend.generate(prompts, [12] * len(prompts), sampling)):
        expected = teacher_forced_logprobs(backend.model, prompt, res.token_ids)
        assert torch.allclose(torch.tensor(res.logprobs), expected, atol=1e-5, rtol=0)


def test_stops_at_eos_and_keeps_it(backend, prompts):
    # a prompt whose greedy continuation has a token first appearing after position 0
    prompt, ref, k = next((p, ref, k) for p in prompts
                          for ref in [reference_greedy(backend.model, p, 30)]
                          for k in range(1, len(ref)) if ref[k] not in ref[:k])
    saved = backend.eos_ids
    backend.eos_ids = [ref[k]]
    try:
        res = backend.generate([prompt], [30], GREEDY)[0]
    finally:
        backend.eos_ids = saved
    assert res.token_ids == ref[:k + 1]


def test_eos_ids_come_from_tokenizer_and_generation_config(backend):
    assert backend.eos_ids == [backend.tokenizer.convert_tokens_to_ids("<|im_end|>")]


def test_seeded_sampling_is_reproducible_and_tiny_top_p_is_greedy(tiny_model_dir, backend, prompts):
    hot = Sampling(temperature=1.5)
    a, b = (HFBackend(str(tiny_model_dir), seed=7) for _ in range(2))
    first = [r.token_ids for r in a.generate(prompts, [10] * 4, hot)]
    assert first == [r.token_ids for r in b.generate(prompts, [10] * 4, hot)]
    assert first != [r.token_ids for r in a.generate(prompts, [10] * 4, hot)]  # seeded once
    nucleus = a.generate(prompts, [10] * 4, Sampling(temperature=1.0, top_p=1e-6))
    greedy = backend.generate(prompts, [10] * 4, GREEDY)
    assert [r.token_ids for r in nucleus] == [r.token_ids for r in greedy]


def test_left_padded_batches_equal_one_by_one(tiny_model_dir, backend, prompts):
    batched = HFBackend(str(tiny_model_dir), batch_size=3)
    caps = [20, 9, 14, 20]
    for one, many in zip(backend.generate(prompts, caps, GREEDY),
                         batched.generate(prompts, caps, GREEDY)):
        assert one.token_ids == many.token_ids
        assert torch.allclose(torch.tensor(one.logprobs), torch.tensor(many.logprobs), atol=1e-5)


def test_bad_arguments(tiny_model_dir, backend, prompts):
    with pytest.raises(ValueError, match="dtype"):
        HFBackend(str(tiny_model_dir), dtype="float16")
    with pytest.raises(ValueError, match="caps"):
        backend.generate(prompts, [4], GREEDY)


@pytest.fixture(scope="module")
def ending_backend(tiny_model_dir, prompts):
    """The tiny model with end of turn made likely: its lm_head row for ``<|im_end|>`` becomes
    a scaled copy of the row of the token greedy decoding repeats most, so steps end with it
    sometimes and hit their cap other times (random weights alone never end a turn)."""
    b = HFBackend(str(tiny_model_dir), seed=0)
    outs = b.generate(prompts, [30] * len(prompts), GREEDY)
    common = Counter(t for r in outs for t in r.token_ids).most_common(1)[0][0]
    eot = b.tokenizer.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        b.model.lm_head.weight[eot] = b.model.lm_head.weight[common] * 1.05
    return b


def check_trajectory(traj, cfg, eot):
    assert len(traj.token_ids) == len(traj.action_mask) == len(traj.logprobs)
    assert traj.num_steps == len(traj.pieces) and traj.token_ids[-1] == eot
    if traj.action_mask[-1] == 1:          # the policy ended its last turn itself
        return 0
    run = 0                                # else the final cap was hit: count its tokens
    for m in reversed(traj.action_mask[:-1]):
        if not m:
            break
        run += 1
    # the last step's cap follows the source length (EpisodeConfig.final_tokens_per_source_unit)
    per_unit = cfg.final_tokens_per_source_unit
    cap = cfg.max_new_tokens_final if per_unit is None else math.ceil(per_unit * traj.source_length) + 8
    assert run == min(cfg.max_new_tokens_final, cap)
    assert all(lp == 0.0 for lp, m in zip(traj.logprobs, traj.action_mask) if not m)
    return 1


def check_delays(traj):
    assert all(a <= b for a, b in zip(traj.delays, traj.delays[1:]))
    assert all(1 <= d <= traj.source_length for d in traj.delays)


@pytest.mark.parametrize("use_ending", [False, True])
def test_greedy_episodes_keep_their_invariants(backend, ending_backend, use_ending):
    b = ending_backend if use_ending else backend
    # the one-piece-per-turn layout without a unit bound and a fixed last cap: every step ends by
    # the model or by its cap
    cfg = EpisodeConfig(layout="pieces", units_per_read=None, final_tokens_per_source_unit=None,
                        max_new_tokens_final=128)
    factory = EpisodeFactory(b.tokenizer, cfg)
    trajs, stats = run_episodes(b, factory, SOURCES, group_size=2, sampling=GREEDY)
    assert len(trajs) == 2 * len(SOURCES) and stats.cached_prompt_tokens == 0
    for k, traj in enumerate(trajs):
        assert traj.meta["source_index"] == SOURCES[k // 2].index and traj.meta["sample"] == k % 2
        check_trajectory(traj, cfg, factory.end_of_turn_id)
        check_delays(traj)
    for a, b_ in zip(trajs[::2], trajs[1::2]):      # greedy group members are identical
        assert a.token_ids == b_.token_ids and a.logprobs == b_.logprobs
    if use_ending:   # both ways of ending a step occur
        eot_actions = sum(1 for t in trajs for i, m in zip(t.token_ids, t.action_mask)
                          if m and i == factory.end_of_turn_id)
        assert 0 < eot_actions and sum(t.truncated_steps for t in trajs) > 0


def test_default_config_episodes_and_learner_view(ending_backend):
    """EpisodeConfig() defaults, sampled: one forward pass over a finished trajectory gives
    the rollout's log-probs on every action token (what the learner relies on)."""
    factory = EpisodeFactory(ending_backend.tokenizer, EpisodeConfig())
    trajs, _ = run_episodes(ending_backend, factory, SOURCES[1:], group_size=2,
                            sampling=Sampling(temperature=1.0, top_p=0.95))
    for traj in trajs:
        check_trajectory(traj, EpisodeConfig(), factory.end_of_turn_id)
        check_delays(traj)
        ids = torch.tensor([traj.token_ids])
        with torch.no_grad():
            logp = torch.log_softmax(ending_backend.model(ids).logits[0, :-1].float(), dim=-1)
        full = logp.gather(-1, ids[0, 1:, None]).squeeze(-1)
        mask = torch.tensor(traj.action_mask[1:], dtype=torch.bool)
        assert torch.allclose(full[mask], torch.tensor(traj.logprobs[1:])[mask], atol=1e-4)
