"""Per-request seeded sampling inside vLLM: Gumbel-max as a v1 logits processor.

vLLM's own per-request ``SamplingParams(seed=...)`` kills the CPU worker: a request whose
prefill is split over steps has its sampled token discarded and vLLM rewinds its generator
with ``set_offset``, which only CUDA generators have ("CPU Generator does not use offset").
Here a seeded request is sent with ``temperature=0`` (vLLM takes the argmax) and its real
temperature, top-p and seed in ``extra_args``; this processor turns the logits into
``top_p(logits / T) + Gumbel noise``, whose argmax is an exact sample of vLLM's own
temperature/top-p distribution. The noise of output token j is drawn from a generator seeded
with (seed, j): nothing is consumed, so a discarded draw is simply drawn again, and the
tokens depend on the request alone, never on the batch it shares.

vLLM's own log-probs of such a request would be those of the perturbed logits (or, in raw mode,
of the untempered model), so the sampler records, per request and output position, the
log-prob of the token it chose under the distribution it drew from (``top_p(logits / T)``,
renormalised): what the learner scores. ``take_logprobs`` hands them out, once, to the worker
extension (``rollout.vllm_ext``); a redrawn position overwrites its earlier entry.
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
FQCN = "rollout.seeded_sampler:SeededGumbelSampler"


def token_seed(seed: int, position: int) -> int:
    """The noise seed of output token ``position`` of a request seeded with ``seed``."""
    digest = hashlib.blake2b(f"{seed}:{position}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def top_p_mask(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """``logits`` (1-D, already divided by the temperature) with everything outside the
    nucleus of mass ``top_p`` set to -inf; the most likely token is always kept (as vLLM)."""
    if top_p >= 1.0:
        return logits
    probs = torch.softmax(logits, dim=-1)
    order = torch.argsort(probs, descending=True)
    before = torch.cumsum(probs[order], dim=-1) - probs[order]   # mass strictly above each token
    drop = order[before >= top_p]
    out = logits.clone()
    out[drop] = float("-inf")
    return out


def gumbel_perturb(logits: torch.Tensor, seed: int, position: int, temperature: float,
                   top_p: float) -> torch.Tensor:
    """Logits whose argmax is a sample of softmax(top_p(logits / temperature))."""
    return perturb_and_logprob(logits, seed, position, temperature, top_p)[0]


def perturb_and_logprob(logits: torch.Tensor, seed: int, position: int, temperature: float,
                        top_p: float) -> tuple[torch.Tensor, float]:
    """:func:`gumbel_perturb`'s logits and the log-prob of their argmax under
    softmax(top_p(logits / temperature))."""
    scaled = top_p_mask(logits.float() / temperature, top_p)
    gen = torch.Generator(device="cpu").manual_seed(token_seed(seed, position))
    u = torch.rand(scaled.shape, generator=gen, dtype=torch.float64).clamp_(min=1e-300)
    gumbel = -torch.log(-torch.log(u))
    perturbed = scaled + gumbel.to(device=scaled.device, dtype=scaled.dtype)
    drawn = int(perturbed.argmax())
    return perturbed, float(torch.log_softmax(scaled, dim=-1)[drawn])


def take_logprobs(keys: list[str]) -> dict[str, dict[int, float]]:
    """The recorded log-probs of these requests (removed from the record)."""
    return {k: _DRAWN.pop(k, {}) for k in keys}


class SeededGumbelSampler(LogitsProcessor):
    """Applies :func:`gumbel_perturb` to the rows of requests that carry ``extra_args[SEED_KEY]``."""

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
        for row, (seed, temperature, top_p, output_ids, key) in self.rows.items():
            if row < logits.shape[0]:
                position = len(output_ids)
                logits[row], logprob = perturb_and_logprob(logits[row], seed, position, temperature, top_p)
                if key is not None:
                    _DRAWN.setdefault(key, {})[position] = logprob
        return logits
