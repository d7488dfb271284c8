"""Per-request seeded sampling inside vLLM, as a v1 logits processor.

vLLM's own per-request ``SamplingParams(seed=...)`` kills the CPU worker: a request whose
prefill is split over steps has its sampled token discarded and vLLM rewinds its generator
with ``set_offset``, which only CUDA generators have ("CPU Generator does not use offset").
Here a seeded request is sent with ``temperature=0`` (vLLM takes the argmax) and its real
temperature, top-p and seed in ``extra_args``; this processor draws the token itself, by
inverting the CDF of vLLM's own distribution softmax(top_p(logits / T)) at one uniform number
that is a hash of (seed, output position), and leaves only that token finite. Nothing is
consumed, so a discarded draw is simply drawn again, and the tokens depend on the request alone,
never on the batch it shares. Rollout log-probs stay the model's raw log-probs (vLLM computes
them before any logits processor).
"""
from __future__ import annotations

import hashlib

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

SEED_KEY = "simulrl_seed"
TEMPERATURE_KEY = "simulrl_temperature"
TOP_P_KEY = "simulrl_top_p"
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
    """Row i's token that ``seeds[i]`` draws at output ``positions[i]`` from
    softmax(top_p(logits[i] / T_i)): the inverse CDF at one uniform number. Rows are computed
    together (one softmax and cumsum over the batch), each row from its own values only."""
    # float32 logits and softmax as vLLM's own sampler uses; the CDF summed in float64
    scaled = logits.float() / torch.tensor(temperatures, dtype=torch.float32, device=logits.device)[:, None]
    for i, top_p in enumerate(top_ps):
        if top_p < 1.0:
            scaled[i] = top_p_mask(scaled[i], top_p)
    cdf = torch.cumsum(torch.softmax(scaled, dim=-1), dim=-1, dtype=torch.float64)
    u = torch.tensor([[uniform(s, p)] for s, p in zip(seeds, positions)], dtype=torch.float64, device=logits.device)
    picked = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)[:, 0]
    return picked.clamp_(max=logits.shape[-1] - 1).tolist()


def sample_index(logits: torch.Tensor, seed: int, position: int, temperature: float, top_p: float) -> int:
    """:func:`sample_indices` of one row."""
    return sample_indices(logits[None], [seed], [position], [temperature], [top_p])[0]


class SeededSampler(LogitsProcessor):
    """Draws the token of every request that carries ``extra_args[SEED_KEY]`` (:func:`sample_index`)."""

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        # batch row -> (seed, temperature, top_p, the request's running output token ids)
        self.rows: dict[int, tuple[int, float, float, list[int]]] = {}

    def is_argmax_invariant(self) -> bool:
        return False   # it decides the argmax

    @staticmethod
    def _new(params, _prompt, output_ids):
        extra = params.extra_args or {}
        if SEED_KEY not in extra:
            return None
        return (int(extra[SEED_KEY]), float(extra[TEMPERATURE_KEY]), float(extra.get(TOP_P_KEY, 1.0)), output_ids)

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(self.rows, batch_update, self._new)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        rows = sorted(r for r in self.rows if r < logits.shape[0])
        if not rows:
            return logits
        state = [self.rows[r] for r in rows]
        tokens = sample_indices(logits[rows], [s[0] for s in state], [len(s[3]) for s in state],
                                [s[1] for s in state], [s[2] for s in state])
        logits[rows] = float("-inf")
        logits[rows, tokens] = 0.0
        return logits
