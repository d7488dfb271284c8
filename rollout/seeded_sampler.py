"""Per-request seeded sampling inside vLLM, as a v1 logits processor.

vLLM's own per-request ``SamplingParams(seed=...)`` kills the CPU worker: a request whose
prefill is split over steps has its sampled token discarded and vLLM rewinds its generator
with ``set_offset``, which only CUDA generators have ("CPU Generator does not use offset").
Here a seeded request is sent with ``temperature=0`` (vLLM takes the argmax) and its real
temperature, top-p and seed in ``extra_args``; this processor draws the token itself, by
inverting the CDF of vLLM's own distribution softmax(top_p(logits / T)) at one uniform number
that is a hash of (seed, output position), and leaves only that token finite. Nothing is
consumed, so a discarded draw is simply drawn again, and the tokens depend on the request alone,
never on the batch it shares.

vLLM's own log-probs of such a request would be those of the logits this processor leaves (or,
in raw mode, of the untempered model), so it records, per request and output position, the
log-prob of the drawn token under the distribution it was drawn from (softmax(top_p(logits /
T)), renormalised): what the learner scores. :func:`take_logprobs` hands them out, once, to the
worker extension (``rollout.vllm_ext``); a position drawn again overwrites its entry.
"""
from __future__ import annotations

import hashlib

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

SEED_KEY = "simulrl_seed"
TEMPERATURE_KEY = "simulrl_temperature"
TOP_P_KEY = "simulrl_top_p"
KEY_KEY = "simulrl_key"
# request key -> {output position: log-prob of the drawn token}, in the worker process
_DRAWN: dict[str, dict[int, float]] = {}
_NUCLEUS_PROBE = 1024   # the nucleus is looked for among this many most likely tokens first


def uniform(seed: int, position: int) -> float:
    """A number in (0, 1) that is a function of (seed, position) only (53 bits of a hash)."""
    digest = hashlib.blake2b(f"{seed}:{position}".encode(), digest_size=8).digest()
    return ((int.from_bytes(digest, "big") >> 11) + 0.5) / 2.0**53


def top_p_mask(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """``logits`` (1-D, already divided by the temperature) with everything outside the
    nucleus of mass ``top_p`` set to -inf; the most likely token is always kept (as vLLM)."""
    if top_p >= 1.0:
        return logits
    probs = torch.softmax(logits, dim=-1)
    k = min(_NUCLEUS_PROBE, probs.numel())
    vals, ids = torch.topk(probs, k)
    if float(vals.sum()) < top_p and k < probs.numel():   # a flat distribution: sort all of it
        vals, ids = torch.sort(probs, descending=True)
    before = torch.cumsum(vals, dim=-1) - vals            # mass strictly above each token
    out = torch.full_like(logits, float("-inf"))
    keep = ids[before < top_p]
    out[keep] = logits[keep]
    return out


def sample_indices(logits: torch.Tensor, seeds: list[int], positions: list[int], temperatures: list[float],
                   top_ps: list[float]) -> list[int]:
    """Row i's token that ``seeds[i]`` draws at output ``positions[i]`` (see
    :func:`sample_with_logprobs`)."""
    return sample_with_logprobs(logits, seeds, positions, temperatures, top_ps)[0]


def sample_with_logprobs(logits: torch.Tensor, seeds: list[int], positions: list[int], temperatures: list[float],
                         top_ps: list[float]) -> tuple[list[int], list[float]]:
    """Row i's token that ``seeds[i]`` draws at output ``positions[i]`` from
    softmax(top_p(logits[i] / T_i)): the inverse CDF at one uniform number. Rows are computed
    together (one softmax and cumsum over the batch), each row from its own values only."""
    # float32 logits and softmax as vLLM's own sampler uses; the CDF summed in float64
    scaled = logits.float() / torch.tensor(temperatures, dtype=torch.float32, device=logits.device)[:, None]
    for i, top_p in enumerate(top_ps):
        if top_p < 1.0:
            scaled[i] = top_p_mask(scaled[i], top_p)
    probs = torch.softmax(scaled, dim=-1)
    cdf = torch.cumsum(probs, dim=-1, dtype=torch.float64)
    u = torch.tensor([[uniform(s, p)] for s, p in zip(seeds, positions)], dtype=torch.float64, device=logits.device)
    picked = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)[:, 0].clamp_(max=logits.shape[-1] - 1)
    logprobs = torch.log_softmax(scaled, dim=-1).gather(1, picked[:, None])[:, 0]
    return picked.tolist(), logprobs.tolist()


def sample_index(logits: torch.Tensor, seed: int, position: int, temperature: float, top_p: float) -> int:
    """:func:`sample_indices` of one row."""
    return sample_indices(logits[None], [seed], [position], [temperature], [top_p])[0]


class SeededSampler(LogitsProcessor):
    """Draws the token of every request that carries ``extra_args[SEED_KEY]`` (:func:`sample_index`)."""

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        # batch row -> (seed, temperature, top_p, running output token ids, request key)
        self.rows: dict[int, tuple[int, float, float, list[int], str | None]] = {}

    def is_argmax_invariant(self) -> bool:
        return False   # it decides the argmax

    @staticmethod
    def _new(params, _prompt, output_ids):
        extra = params.extra_args or {}
        if SEED_KEY not in extra:
            return None
        return (int(extra[SEED_KEY]), float(extra[TEMPERATURE_KEY]), float(extra.get(TOP_P_KEY, 1.0)), output_ids,
                extra.get(KEY_KEY))

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(self.rows, batch_update, self._new)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        rows = sorted(r for r in self.rows if r < logits.shape[0])
        if not rows:
            return logits
        state = [self.rows[r] for r in rows]
        positions = [len(s[3]) for s in state]
        tokens, logprobs = sample_with_logprobs(logits[rows], [s[0] for s in state], positions,
                                                [s[1] for s in state], [s[2] for s in state])
        for st, position, logprob in zip(state, positions, logprobs):
            if st[4] is not None:
                _DRAWN.setdefault(st[4], {})[position] = logprob
        logits[rows] = float("-inf")
        logits[rows, tokens] = 0.0
        return logits


def take_logprobs(keys: list[str]) -> dict[str, dict[int, float]]:
    """The recorded log-probs of these requests (removed from the record)."""
    return {k: _DRAWN.pop(k, {}) for k in keys}
