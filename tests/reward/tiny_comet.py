"""Build a tiny, deterministic COMET checkpoint with comet's own classes (no model hub).

Run it with the COMET environment's interpreter::

    .venv-comet/bin/python tests/reward/tiny_comet.py OUTDIR

``OUTDIR`` then holds what ``comet.load_from_checkpoint`` expects of a released model::

    OUTDIR/hparams.yaml             class_identifier + the model's hyper-parameters
    OUTDIR/checkpoints/model.ckpt   Lightning checkpoint (state_dict + hyper_parameters)
    OUTDIR/encoder/                 tiny XLM-R config + tokenizer (the "pretrained_model")

The encoder is a 2-layer XLM-R with random weights and a sentencepiece vocabulary trained
here on a fixed synthetic corpus. Scores mean nothing; they are a deterministic function of
(src, mt, ref), which is what the reward-service tests need. A fixed corpus, one
sentencepiece thread and a seeded torch make two builds equal: same weights, same tokenizer
files. ``hparams.yaml`` names the encoder directory by its absolute path, as comet needs:
build the checkpoint where it will be used.
"""
from __future__ import annotations

import random
import sys
from pathlib import Path

# English, German and Chinese words, so every test language has in-vocabulary pieces.
_WORDS = (
    "the a house cat dog runs quickly over bridge river city morning evening people said "
    "government new year report market price water school children music world today "
    "der die das haus katze hund läuft schnell über brücke fluss stadt morgen abend leute "
    "sagte regierung neues jahr bericht markt preis wasser schule kinder musik welt heute "
).split()
_HANZI = "我们他她你是的了在有一个不人这中大上来到说国年时和地出会也就对生能而子那得于着下自之"


def _corpus(n_lines: int = 2000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for i in range(n_lines):
        if i % 3 == 2:
            lines.append("".join(rng.choice(_HANZI) for _ in range(rng.randint(4, 20))))
        else:
            lines.append(" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 15))))
    return lines


def _build_tokenizer(encoder_dir: Path) -> int:
    """Train a sentencepiece model and save it as an XLM-R tokenizer; returns the vocab size."""
    import io

    import sentencepiece as spm
    from transformers import XLMRobertaTokenizer, XLMRobertaTokenizerFast

    # Sentences from memory and the model into memory: no file paths end up in the model proto.
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()), model_writer=model, vocab_size=300, model_type="unigram",
        character_coverage=1.0, num_threads=1, minloglevel=2)
    spm_file = encoder_dir / "spm.model"
    spm_file.write_bytes(model.getvalue())
    slow = XLMRobertaTokenizer(vocab_file=str(spm_file), model_max_length=126)
    slow.save_pretrained(str(encoder_dir))
    spm_file.unlink()  # save_pretrained wrote it again as sentencepiece.bpe.model
    # COMET's XLM-R encoder loads the fast tokenizer: write tokenizer.json next to the model.
    fast = XLMRobertaTokenizerFast.from_pretrained(str(encoder_dir))
    fast.save_pretrained(str(encoder_dir))
    return len(fast)


def build(out: Path) -> Path:
    """Write the tiny checkpoint into ``out``; returns the path of ``checkpoints/model.ckpt``."""
    import pytorch_lightning as ptl
    import torch
    import yaml
    from transformers import XLMRobertaConfig
    from comet.models import RegressionMetric

    out.mkdir(parents=True, exist_ok=True)
    encoder_dir = out / "encoder"
    encoder_dir.mkdir(exist_ok=True)
    vocab = _build_tokenizer(encoder_dir)
    XLMRobertaConfig(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=130, pad_token_id=1, bos_token_id=0,
        eos_token_id=2, type_vocab_size=1).save_pretrained(str(encoder_dir))

    torch.manual_seed(0)
    model = RegressionMetric(
        pretrained_model=str(encoder_dir.resolve()), load_pretrained_weights=False,
        local_files_only=True, hidden_sizes=[32, 16], dropout=0.0, layer_norm=True)
    with torch.no_grad():
        # Random encoder weights give near-constant sentence embeddings; a wider init spreads
        # the scores so that tests can tell different inputs apart.
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.5)
    hparams = dict(model.hparams)
    hparams["class_identifier"] = "regression_metric"
    (out / "hparams.yaml").write_text(yaml.safe_dump(hparams, sort_keys=True), encoding="utf-8")
    ckpt = out / "checkpoints" / "model.ckpt"
    ckpt.parent.mkdir(exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": hparams,
                "pytorch-lightning_version": ptl.__version__}, ckpt)
    return ckpt


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: tiny_comet.py OUTDIR")
    print(build(Path(sys.argv[1])))
