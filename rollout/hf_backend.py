"""A :class:`~rollout.types.GenerationBackend` on plain ``transformers``: the reference runner.

Every call encodes each whole prompt from scratch (a KV cache lives only within one call),
which is what a streaming rollout costs without a prefix cache: the benchmark baseline of
DESIGN §5, and an oracle for the vLLM runner (greedy, fp32, tiny model: token-identical).

Semantics, chosen to match vLLM's:
- greedy (``temperature == 0``) is the argmax of the raw logits, as ``model.generate(...,
  do_sample=False)`` with no logits processors;
- sampling scales the logits by ``1/temperature``, keeps the smallest set of tokens whose
  probability reaches ``top_p`` (at least one), and draws with a ``torch.Generator`` seeded
  once in the constructor, so a backend's sequence of calls is reproducible;
- a sequence stops at any eos id of the tokenizer or the generation config, and that token
  is included in ``token_ids`` (vLLM returns it too), or at its ``max_new_tokens``;
- ``logprobs`` are ``log_softmax`` of the raw logits (temperature 1, before top-p) at the
  sampled token: vLLM's default ``raw_logprobs`` mode, and what the learner recomputes.

``batch_size=1`` (default) runs prompts one by one: the computation is then exactly that of
``model.generate`` on a single prompt, with no padding, so greedy outputs are bit-for-bit
reproducible and comparable with vLLM. ``batch_size > 1`` packs prompts of similar length
into left-padded batches with an attention mask and explicit position ids: faster, and equal
up to floating-point reassociation (in bf16 that can flip a near-tie in greedy decoding).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from rollout.types import GenerationResult, Sampling

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _as_list(ids: Any) -> list[int]:
    if ids is None:
        return []
    return [int(ids)] if isinstance(ids, int) else [int(i) for i in ids]


class HFBackend:
    """Generation with a ``transformers`` causal LM, re-encoding every prompt each call."""

    def __init__(self, model_path: str, dtype: str = "float32", seed: int = 0,
                 batch_size: int = 1):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_path, self.dtype, self.batch_size = str(model_path), DTYPES[dtype], batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=self.dtype)
        self.model.eval()
        gen_cfg = self.model.generation_config
        self.eos_ids = sorted(set(_as_list(self.tokenizer.eos_token_id))
                              | set(_as_list(getattr(gen_cfg, "eos_token_id", None))))
        if not self.eos_ids:
            raise ValueError(f"{model_path}: neither the tokenizer nor the generation config "
                             "names an eos token")
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else self.eos_ids[0]
        self.generator = torch.Generator(device="cpu").manual_seed(seed)

    def generate(self, prompts: Sequence[list[int]], max_new_tokens: Sequence[int],
                 sampling: Sampling) -> list[GenerationResult]:
        """One result per prompt, in order (see the module docstring for the semantics)."""
        if len(prompts) != len(max_new_tokens):
            raise ValueError(f"{len(prompts)} prompts but {len(max_new_tokens)} token caps")
        if any(len(p) == 0 for p in prompts):
            raise ValueError("empty prompt")
        results: list[GenerationResult | None] = [None] * len(prompts)
        # Similar lengths share a batch: less padding (and no effect with batch_size 1).
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            outs = self._generate_batch([list(prompts[i]) for i in idx],
                                        [int(max_new_tokens[i]) for i in idx], sampling)
            for i, (ids, lps) in zip(idx, outs):
                results[i] = GenerationResult(token_ids=ids, logprobs=lps,
                                              prompt_tokens=len(prompts[i]),
                                              cached_prompt_tokens=0)
        return [r for r in results if r is not None]

    def _left_pad(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Left-padded ids, attention mask and explicit position ids of a batch."""
        batch, width = len(prompts), max(len(p) for p in prompts)
        input_ids = torch.full((batch, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for row, p in enumerate(prompts):
            input_ids[row, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[row, width - len(p):] = 1
        return input_ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)

    @torch.inference_mode()
    def next_token_logprobs(self, prompts: Sequence[list[int]]) -> list[torch.Tensor]:
        """Full-vocabulary next-token log-probs (fp32 ``log_softmax`` of the raw logits) of
        each prompt: the exact distributions LSG compares. Batched as :meth:`generate`."""
        out: list[torch.Tensor | None] = [None] * len(prompts)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            input_ids, mask, positions = self._left_pad([list(prompts[i]) for i in idx])
            width = input_ids.shape[1]
            logits = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                                logits_to_keep=torch.tensor([width - 1])).logits[:, -1, :].float()
            for row, i in enumerate(idx):
                out[i] = torch.log_softmax(logits[row], dim=-1)
        return [t for t in out if t is not None]

    def _next_tokens(self, logits: torch.Tensor, sampling: Sampling,
                     allow_eos: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Choose one token per row from fp32 ``logits`` [B, V]; return (ids, raw log-probs)."""
        logprobs = torch.log_softmax(logits, dim=-1)
        if not allow_eos:  # min_tokens: stop tokens are not chosen yet (log-probs stay raw)
            logits = logits.clone()
            logits[:, self.eos_ids] = float("-inf")
        if sampling.temperature == 0:
            ids = torch.argmax(logits, dim=-1)
        else:
            probs = torch.softmax(logits / sampling.temperature, dim=-1)
            if sampling.top_p < 1.0:
                sorted_p, sorted_i = torch.sort(probs, dim=-1, descending=True)
                # drop a token when the tokens above it already reach top_p (the first stays)
                drop = (torch.cumsum(sorted_p, dim=-1) - sorted_p) >= sampling.top_p
                sorted_p = sorted_p.masked_fill(drop, 0.0)
                probs = torch.zeros_like(probs).scatter_(-1, sorted_i, sorted_p)
            ids = torch.multinomial(probs, 1, generator=self.generator).squeeze(-1)
        return ids, logprobs.gather(-1, ids[:, None]).squeeze(-1)

    @torch.inference_mode()
    def _generate_batch(self, prompts: list[list[int]], caps: list[int],
                        sampling: Sampling) -> list[tuple[list[int], list[float]]]:
        """Prefill left-padded prompts, then decode with the call-local KV cache."""
        input_ids, mask, positions = self._left_pad(prompts)
        batch, width = input_ids.shape
        # Index (not slice) the last position: the lm_head then gets a contiguous input
        # (bf16 F.linear on a strided one is ~10x slower on CPU; DESIGN §4).
        last = torch.tensor([width - 1])
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                         use_cache=True, logits_to_keep=last)
        tokens: list[list[int]] = [[] for _ in range(batch)]
        lps: list[list[float]] = [[] for _ in range(batch)]
        active = [cap > 0 for cap in caps]
        eos = set(self.eos_ids)
        step = 0
        while True:
            ids, lp = self._next_tokens(out.logits[:, -1, :].float(), sampling,
                                        allow_eos=step >= sampling.min_tokens)
            step += 1
            for row in range(batch):
                if active[row]:
                    tok = int(ids[row])
                    tokens[row].append(tok)
                    lps[row].append(float(lp[row]))
                    active[row] = tok not in eos and len(tokens[row]) < caps[row]
            if not any(active):
                break
            # Finished rows keep decoding their last token; their outputs are ignored.
            mask = torch.cat([mask, torch.ones((batch, 1), dtype=torch.long)], dim=1)
            positions = positions[:, -1:] + 1
            out = self.model(input_ids=ids[:, None], attention_mask=mask, position_ids=positions,
                             past_key_values=out.past_key_values, use_cache=True)
        return list(zip(tokens, lps))
