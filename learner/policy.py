"""The policy model: building it (peft LoRA or full weights), padding trajectories into
tensors, and per-token log-probs of a whole trajectory in one forward (DESIGN §2.1 c, §2.3).

Plain torch / transformers / peft; no Ray, no DeepSpeed. The reference policy is the same
network with the adapter disabled (LoRA), or, for full fine-tuning with ``kl_beta > 0``, a
frozen copy of the initial weights: one more model in memory on every rank (2 bytes per
parameter in bf16, never sharded by ZeRO); set ``kl_beta: 0`` to train without it.
"""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Iterable, Sequence

import torch

from learner.batch import TrainBatch, TrainTrajectory
from learner.config import LearnerConfig
from learner.simulmask import additive_mask, collate_prefix

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def resolve_model_path(model_path: str | Path) -> str:
    """A local directory as an absolute path; anything else is passed on as a hub id."""
    path = Path(model_path).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if path.is_absolute() or str(model_path).startswith("."):
        raise FileNotFoundError(f"model directory {model_path} does not exist")
    return str(model_path)


def load_causal_lm(model_path: str | Path, dtype: str, gradient_checkpointing: bool = False):
    """``AutoModelForCausalLM`` from a local directory or hub id, without a KV cache."""
    from transformers import AutoModelForCausalLM

    if dtype not in DTYPES:  # "auto" is resolved by the driver's config loader, per machine
        raise ValueError(f"learner dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(model_path), dtype=DTYPES[dtype])
    model.config.use_cache = False
    if gradient_checkpointing:
        # non-reentrant: works with a frozen base (inputs of checkpointed blocks need no grad)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def load_policy(model_path: str | Path, cfg: LearnerConfig, seed: int = 0):
    """The trainable policy and its reference: ``(policy, reference)``.

    LoRA: ``policy`` is a ``PeftModel`` (adapter weights in fp32, base in ``cfg.dtype``, frozen)
    and ``reference`` is None (adapter disabled at scoring time). Full fine-tuning: ``policy``
    is the plain model and ``reference`` a frozen copy if ``cfg.kl_beta > 0``, else None.
    """
    torch.manual_seed(seed)   # LoRA A is randomly initialised: same seed, same adapter on every rank
    model = load_causal_lm(model_path, cfg.dtype, cfg.gradient_checkpointing)
    if cfg.lora.enabled:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                          target_modules=list(cfg.lora.target_modules), bias="none", task_type="CAUSAL_LM")
        return get_peft_model(model, lora), None
    reference = None
    if cfg.kl_beta > 0:
        reference = load_causal_lm(model_path, cfg.dtype).eval().requires_grad_(False)
    return model, reference


def is_peft(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "get_base_model")


def _decoder_and_head(model):
    base = model.get_base_model() if is_peft(model) else model
    return base.get_decoder(), base.get_output_embeddings()


def truncate_logits(logits: torch.Tensor, top_p: torch.Tensor | None = None,
                    top_k: torch.Tensor | None = None) -> torch.Tensor:
    """Logits with everything outside each row's top-k and nucleus set to -inf.

    ``logits`` is [N, vocab] (already divided by the temperature), ``top_p`` [N] in (0, 1] and
    ``top_k`` [N] (0 = off). The rule is the sampler's: keep the ``top_k`` largest logits, then drop
    the least likely tokens whose cumulative probability stays within ``1 - top_p``; the most
    likely token always survives. ``log_softmax`` of the result is the distribution sampled from.
    """
    vocab = logits.shape[-1]
    ordered, order = logits.sort(dim=-1, descending=False)
    if top_k is not None and bool((top_k > 0).any()):
        k = torch.where(top_k > 0, top_k.clamp(max=vocab), torch.full_like(top_k, vocab)).long()
        kth = ordered.gather(1, (vocab - k).unsqueeze(1))
        ordered = ordered.masked_fill(ordered < kth, float("-inf"))
    if top_p is not None and bool((top_p < 1).any()):
        cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative <= (1.0 - top_p.to(cumulative.dtype)).unsqueeze(1)
        drop[:, -1] = False
        ordered = ordered.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, ordered)


def sequence_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      token_mask: torch.Tensor | None = None, temperature: torch.Tensor | None = None,
                      top_p: torch.Tensor | None = None, top_k: torch.Tensor | None = None,
                      position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """``out[b, k] = log p(input_ids[b, k] | input_ids[b, :k])`` in fp32, one forward for the batch.

    Right-padded [batch, seq] inputs. Only positions where ``token_mask`` (default:
    ``attention_mask``) is 1 are scored; position 0 and all others are 0. The decoder runs
    once; the lm_head sees only the gathered (contiguous) hidden states of the positions that
    predict a scored token: a bf16 GEMM on a non-contiguous input is ~10x slower on CPU
    (DESIGN §4), and the [tokens, vocab] logits are the largest activation.

    ``temperature``/``top_p``/``top_k`` ([batch], optional) score the distribution the sampler
    drew from (vLLM's processed log-probs): logits / temperature, then :func:`truncate_logits`.

    A boolean ``attention_mask`` [B, T, T] (with ``position_ids``, ``token_mask``) scores a
    prefix-layout batch under its SimulMask mask: row k-1 sees only the keys it allows.
    """
    decoder, head = _decoder_and_head(model)
    if attention_mask.dim() == 3:
        # a prefix-layout batch: a boolean [B, T, T] SimulMask mask with its ExPosST positions
        if token_mask is None or position_ids is None:
            raise ValueError("a [B, T, T] attention mask needs token_mask and position_ids")
        additive = additive_mask(attention_mask, next(model.parameters()).dtype).to(input_ids.device)
        hidden = decoder(input_ids=input_ids, attention_mask=additive, position_ids=position_ids,
                         use_cache=False).last_hidden_state
        wanted = token_mask.bool()
    else:
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=False).last_hidden_state
        wanted = (attention_mask if token_mask is None else token_mask).bool() & attention_mask.bool()
    rows, cols = wanted[:, 1:].nonzero(as_tuple=True)      # cols = k - 1: the predicting position
    logits = head(hidden[rows, cols]).float()               # advanced indexing copies: contiguous
    targets = input_ids[rows, cols + 1]
    if temperature is not None:
        logits = logits / temperature.to(logits.device, logits.dtype)[rows].unsqueeze(-1)
    narrow_p = top_p is not None and bool((top_p < 1).any())
    narrow_k = top_k is not None and bool((top_k > 0).any())
    if narrow_p or narrow_k:
        logits = truncate_logits(logits, top_p.to(logits.device)[rows] if narrow_p else None,
                                 top_k.to(logits.device)[rows] if narrow_k else None)
    picked = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    out = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    return out.index_put((rows, cols + 1), picked)


class PolicyLogprobs(torch.nn.Module):
    """The module a DeepSpeed engine wraps: its forward returns per-token log-probs.

    Going through the engine's forward keeps ZeRO-3's parameter gathering hooks in order.
    ``reference=True`` scores with the adapter disabled (LoRA only).
    """

    def __init__(self, policy: torch.nn.Module):
        super().__init__()
        self.policy = policy

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_mask: torch.Tensor | None = None, reference: bool = False,
                temperature: torch.Tensor | None = None, top_p: torch.Tensor | None = None,
                top_k: torch.Tensor | None = None, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        if reference and not is_peft(self.policy):
            raise ValueError("reference scoring through the policy needs a LoRA adapter to disable")
        ctx = self.policy.disable_adapter() if reference else nullcontext()
        with ctx:
            return sequence_logprobs(self.policy, input_ids, attention_mask, token_mask,
                                     temperature, top_p, top_k, position_ids)


def collate(batch: TrainBatch | Sequence[TrainTrajectory], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-pad trajectories into tensors.

    A batch of prefix-layout trajectories gets its boolean SimulMask ``attention_mask``
    [B, T, T] and ``position_ids`` [B, T] (``learner.simulmask.collate_prefix``) instead.

    Returns ``input_ids`` [B, T] long, ``attention_mask`` [B, T] long, ``action_mask`` [B, T]
    float32, ``advantages`` [B] float32, ``rollout_logprobs`` [B, T] float32 (0 off actions), and
    the sampling distribution per row: ``temperature`` [B], ``top_p`` [B], ``top_k`` [B] long.
    """
    trajs = batch.trajectories if isinstance(batch, TrainBatch) else list(batch)
    if not trajs:
        raise ValueError("cannot collate an empty batch")
    prefix = [t.segments is not None for t in trajs]
    if any(prefix) and not all(prefix):
        raise ValueError("a batch mixes prefix-layout and plain trajectories")
    size = (len(trajs), max(len(t.token_ids) for t in trajs))
    ids = torch.full(size, pad_id, dtype=torch.long)
    attn = torch.zeros(size, dtype=torch.long)
    act = torch.zeros(size, dtype=torch.float32)
    lps = torch.zeros(size, dtype=torch.float32)
    for i, t in enumerate(trajs):
        n = len(t.token_ids)
        ids[i, :n] = torch.tensor(t.token_ids, dtype=torch.long)
        attn[i, :n] = 1
        act[i, :n] = torch.tensor(t.action_mask, dtype=torch.float32)
        lps[i, :n] = torch.tensor(t.rollout_logprobs, dtype=torch.float32) * act[i, :n]
    adv = torch.tensor([float(t.advantage) for t in trajs], dtype=torch.float32)
    extra = {}
    if all(prefix):   # SimulMask mask [B, T, T] and ExPosST positions in place of the padding mask
        layout = collate_prefix([(t.token_ids, t.segments, t.reads) for t in trajs], pad_id)
        attn, extra = layout["attention_mask"], {"position_ids": layout["position_ids"]}
    return extra | {"input_ids": ids, "attention_mask": attn, "action_mask": act,
            "advantages": adv, "rollout_logprobs": lps,
            "temperature": torch.tensor([t.scoring_temperature for t in trajs], dtype=torch.float32),
            "top_p": torch.tensor([float(t.top_p) for t in trajs], dtype=torch.float32),
            "top_k": torch.tensor([int(t.top_k) for t in trajs], dtype=torch.long)}


def pad_rows(rows: Iterable[torch.Tensor], length: int) -> torch.Tensor:
    """Stack 1-D per-trajectory tensors, right-padded with 0 to ``length``."""
    rows = list(rows)
    out = torch.zeros(len(rows), length, dtype=torch.float32)
    for i, r in enumerate(rows):
        out[i, :r.numel()] = r
    return out
