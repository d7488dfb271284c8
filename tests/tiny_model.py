"""A tiny random Qwen2 model and byte-level BPE tokenizer with a ChatML chat template.

Built locally and deterministically in about a second, so tests never need a model hub.
The tokenizer mirrors Qwen2's (same pre-tokenizer regex, byte-level BPE, ChatML turn
markers, ``<|im_end|>`` as end of turn), so the episode layout and vLLM see the same
conventions as with a real Qwen2.5 instruct model.
"""
from __future__ import annotations

import json
from pathlib import Path

# Qwen2's pre-tokenizer split pattern.
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# A small bilingual corpus so BPE learns some real merges (German, English, Chinese).
_CORPUS = """\
Die Katze sitzt auf der Matte und schaut aus dem Fenster.
The cat sits on the mat and looks out of the window.
Der Zug nach Berlin hat heute zwanzig Minuten Verspätung.
The train to Berlin is twenty minutes late today.
Wir übersetzen den Satz, während der Sprecher noch redet.
We translate the sentence while the speaker is still talking.
Die Regierung hat am Montag neue Regeln für den Verkehr angekündigt.
The government announced new traffic rules on Monday.
我们在说话人还在讲话的时候翻译这个句子。
政府星期一宣布了新的交通规则。
You are a simultaneous interpreter translating German into English. [END]
"""


def build_tokenizer(vocab_size: int = 512):
    """Train the byte-level BPE tokenizer on the embedded corpus (deterministic)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    lines = _CORPUS.splitlines()
    tok.train_from_iterator(lines * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        chat_template=CHATML_TEMPLATE, model_max_length=4096)


def build_tiny_model(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny fp32 Qwen2ForCausalLM + tokenizer to ``out_dir`` and return the path.

    Two layers, hidden 128, two query heads of dim 64 sharing one KV head, untied lm_head:
    small enough for tests, shaped like the real thing (GQA, RoPE, SwiGLU).
    """
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(out)
    eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256,
        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=64,
        max_position_embeddings=4096, rope_theta=10000.0, tie_word_embeddings=False,
        bos_token_id=pad_id, eos_token_id=eos_id, pad_token_id=pad_id, torch_dtype="float32")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=pad_id, eos_token_id=eos_id, pad_token_id=pad_id, do_sample=False)
    model.save_pretrained(out, safe_serialization=True)
    (out / "SIMULRL_TINY_MODEL.json").write_text(json.dumps({"seed": seed}) + "\n")
    return out


def bias_towards_end_of_turn(model_dir: str | Path, logit: float) -> Path:
    """Make the tiny model open most assistant turns with ``<|im_end|>`` (an empty turn: a wait).

    Residual dimension 0 is made a constant: every embedding has ``1.0`` there and no attention
    or MLP output writes to it, so after the final RMSNorm it is positive at every position.
    The ``<|im_end|>`` row of the untied lm_head then reads ``logit`` from it, which adds a
    roughly position-independent bonus to that token. A policy starting here has to learn to
    emit earlier: a known optimum for training tests.
    """
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    out = Path(model_dir)
    eos_id = AutoTokenizer.from_pretrained(out).convert_tokens_to_ids("<|im_end|>")
    weights = load_file(out / "model.safetensors")
    weights["model.embed_tokens.weight"][:, 0] = 1.0
    for name, w in weights.items():
        if name.endswith(("self_attn.o_proj.weight", "mlp.down_proj.weight")):
            w[0, :] = 0.0
    head = weights["lm_head.weight"]
    head[eos_id, :] = 0.0
    head[eos_id, 0] = logit
    save_file({k: v.contiguous() for k, v in weights.items()}, out / "model.safetensors",
              metadata={"format": "pt"})
    return out
