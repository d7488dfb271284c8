"""Weights out of the learner, named as in the HF checkpoint (``model.layers.N.self_attn.q_proj.weight``).

- merged: W + scale * B @ A for LoRA-targeted linears (the rollout engine reloads only those,
  plus packed siblings it asks for by name, DESIGN §4);
- adapter: the peft adapter files (``adapter_config.json``, ``adapter_model.safetensors``);
- full: every weight (LoRA deltas merged in).

Under ZeRO-3 parameters are partitioned: each tensor is gathered just while it is read.
"""
from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import torch

from learner.policy import is_peft


@contextmanager
def gathered(params: Sequence[torch.nn.Parameter]) -> Iterator[None]:
    """Full values of ZeRO-3-partitioned parameters inside the block (a no-op otherwise)."""
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(params), modifier_rank=None):
            yield
    else:
        yield


def _base(model):
    return model.get_base_model() if is_peft(model) else model


def lora_layers(model) -> dict[str, torch.nn.Module]:
    """HF weight name -> peft LoRA layer wrapping that weight (empty for full fine-tuning)."""
    if not is_peft(model):
        return {}
    from peft.tuners.lora import LoraLayer

    return {f"{name}.weight": module for name, module in _base(model).named_modules()
            if isinstance(module, LoraLayer) and hasattr(module.get_base_layer(), "weight")}


def base_parameters(model) -> dict[str, torch.nn.Parameter]:
    """HF checkpoint name -> parameter holding the base value (LoRA factors left out)."""
    out = {}
    for name, param in _base(model).named_parameters():
        if ".lora_" in name:
            continue
        out[name.replace(".base_layer.", ".")] = param
    return out


def trainable_names(model) -> list[str]:
    """HF names of the weights training changes: LoRA-targeted weights, or every weight."""
    layers = lora_layers(model)
    return sorted(layers) if layers else sorted(base_parameters(model))


def export_tensors(model, names: Sequence[str] | None = None, device: str | torch.device = "cpu"
                   ) -> dict[str, torch.Tensor]:
    """Current values (LoRA merged in) of ``names`` (default: every weight), as tensors on ``device``.

    Under ZeRO-3 each tensor is gathered while it is copied (a collective: every rank calls this
    with the same names), so no rank holds more than one full tensor beyond the result."""
    params = base_parameters(model)
    layers = lora_layers(model)
    wanted = sorted(params) if names is None else list(names)
    unknown = [n for n in wanted if n not in params]
    if unknown:
        raise KeyError(f"not a weight of this model: {unknown[:5]}")
    out: dict[str, torch.Tensor] = {}
    for name in wanted:
        param = params[name]
        layer = layers.get(name)
        if layer is None:
            with gathered([param]):
                out[name] = param.detach().to(device, copy=True).contiguous()
            continue
        adapter = layer.active_adapters[0]
        factors = [layer.lora_A[adapter].weight, layer.lora_B[adapter].weight]
        with gathered([param, *factors]):
            delta = layer.get_delta_weight(adapter).float()
            merged = param.detach().float() + delta.to(param.device)
            out[name] = merged.to(param.dtype).to(device).contiguous()
    return out


def export_safetensors(model, names: Sequence[str] | None = None) -> bytes:
    """``export_tensors`` serialised with ``safetensors.torch.save``."""
    from safetensors.torch import save

    return save(export_tensors(model, names))


def weight_layout(model, names: Sequence[str] | None = None) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    """(name, dtype, full shape) of ``names`` (default: every weight), without gathering anything."""
    params = base_parameters(model)
    wanted = sorted(params) if names is None else list(names)
    unknown = [n for n in wanted if n not in params]
    if unknown:
        raise KeyError(f"not a weight of this model: {unknown[:5]}")
    return [(n, params[n].dtype, tuple(getattr(params[n], "ds_shape", params[n].shape))) for n in wanted]


def adapter_parameters(model) -> dict[str, torch.nn.Parameter]:
    """peft's saved adapter names (``...q_proj.lora_A.weight``) -> the LoRA parameters."""
    if not is_peft(model):
        raise ValueError("adapter export needs a LoRA policy (learner.lora.enabled: true)")
    adapter = model.active_adapter if isinstance(model.active_adapter, str) else model.active_adapter[0]
    return {n.replace(f".{adapter}.", "."): p for n, p in model.named_parameters() if ".lora_" in n}


def adapter_layout(model) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    return [(n, p.dtype, tuple(getattr(p, "ds_shape", p.shape))) for n, p in sorted(adapter_parameters(model).items())]


def adapter_tensors(model, names: Sequence[str], device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Values of the adapter tensors ``names`` (gathered under ZeRO-3: every rank calls this)."""
    params = adapter_parameters(model)
    chosen = [params[n] for n in names]
    with gathered(chosen):
        return {n: p.detach().to(device, copy=True).contiguous() for n, p in zip(names, chosen)}


def adapter_config_json(model) -> str:
    """The adapter's ``adapter_config.json`` text, as ``save_pretrained`` writes it."""
    adapter = model.active_adapter if isinstance(model.active_adapter, str) else model.active_adapter[0]
    with tempfile.TemporaryDirectory(prefix="simulrl-adapter-cfg-") as tmp:
        model.peft_config[adapter].save_pretrained(tmp)
        return (Path(tmp) / "adapter_config.json").read_text(encoding="utf-8")


def adapter_files(model) -> dict[str, bytes]:
    """The peft adapter directory as {file name: bytes}."""
    if not is_peft(model):
        raise ValueError("adapter export needs a LoRA policy (learner.lora.enabled: true)")
    lora_params = [p for n, p in model.named_parameters() if ".lora_" in n]
    with gathered(lora_params), tempfile.TemporaryDirectory(prefix="simulrl-adapter-") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        return {f.name: f.read_bytes() for f in Path(tmp).iterdir() if f.is_file()}
