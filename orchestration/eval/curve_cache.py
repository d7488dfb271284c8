"""A model's wait-k curve on a test set, computed once and reused by every eval run scored against it.

Layout under ``eval.curve_cache`` (default ``runs/curves``)::

    <key>/key.json                                 the readable key
    <key>/waitk-k<k>/{instances.jsonl,scores.json}  one finished wait-k setting

``<key>`` is a hash of everything a wait-k result depends on (:func:`curve_key`): the model (the
path it loads from and, for a local directory, the size and mtime of its config, tokenizer and
weight files), the engine dtype, device and backend, the data set, its exact line indices and a
digest of their texts, the eval fields the decoder reads, and :data:`CURVE_FORMAT`. An entry is
stored by writing a temp directory and renaming it, so a reader never sees half of one.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

from orchestration.model_path import model_to_load
from orchestration.runtime import write_json_atomic

# Bump when the wait-k decoder (rollout/prefix_layout.py, rollout/simul_policies.py) or the
# instances/scores it writes change: every cached curve is then computed again.
CURVE_FORMAT = 2

# eval fields a wait-k setting's instances.jsonl or scores.json depend on
KEY_FIELDS = ("system_prompt", "max_tokens_per_unit", "max_new_tokens_final", "source_unit_ms", "comet_model")
MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def model_identity(path: str) -> dict[str, Any]:
    """The model as the engines load it; for a local directory, size and mtime of the files that
    decide its outputs (rewritten weights under the same path make a new key)."""
    load = model_to_load(path)
    files: dict[str, list[int]] = {}
    local = Path(load)
    if local.is_dir():
        for f in sorted(local.iterdir()):
            if f.is_file() and (f.name in MODEL_FILES or f.suffix in WEIGHT_SUFFIXES):
                st = f.stat()
                files[f.name] = [st.st_size, st.st_mtime_ns]
    return {"path": path, "load": load, "files": files}


def _texts_digest(sources: Sequence[dict[str, Any]]) -> str:
    """A digest of the sentences themselves: the same name and lines with other text differ."""
    h = hashlib.sha256()
    for s in sources:
        h.update(json.dumps([s["index"], s["text"], s.get("reference"), s.get("src_lang"), s.get("tgt_lang")],
                            ensure_ascii=False).encode("utf-8"))
    return h.hexdigest()


def curve_key(cfg: Any, backend: str, dataset: str, sources: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Everything a wait-k result depends on, readable (``key.json``); its hash names the entry."""
    return {"format": CURVE_FORMAT, "model": model_identity(cfg.model.path), "dtype": cfg.model.dtype,
            "device": "gpu" if cfg.rollout.num_gpus_per_worker > 0 else "cpu", "backend": backend,
            "data": {"set": dataset, "indices": [s["index"] for s in sources], "texts": _texts_digest(sources)},
            "eval": {f: getattr(cfg.eval, f) for f in KEY_FIELDS}}


def key_digest(key: dict[str, Any]) -> str:
    """The directory name of a key: a stable hash of its canonical JSON."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()[:24]


def _finished(setting_dir: Path, k: int) -> dict[str, Any] | None:
    """The scores.json of a finished wait-k setting with this k in ``setting_dir``, else None."""
    if not (setting_dir / "instances.jsonl").is_file():
        return None
    try:
        scores = json.loads((setting_dir / "scores.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    params = scores.get("params") if isinstance(scores, dict) else None
    ok = isinstance(params, dict) and params.get("type") == "waitk" and params.get("k") == k
    return scores if ok else None


class CurveCache:
    """The finished wait-k settings of one key."""

    def __init__(self, root: Path, key: dict[str, Any]):
        self.key = key
        self.dir = Path(root) / key_digest(key)

    def entry(self, k: int) -> Path:
        """Where the wait-k setting with this k is kept."""
        return self.dir / f"waitk-k{k}"

    def lookup(self, k: int) -> dict[str, Any] | None:
        """The cached scores.json of wait-k k, or None when absent or unreadable."""
        return _finished(self.entry(k), k)

    def restore(self, k: int, dest: Path, updates: dict[str, Any]) -> dict[str, Any] | None:
        """Copy wait-k k into a run's setting directory; ``updates`` (this run's setting name,
        line, fingerprint) replace the cached run's in scores.json, written last as the marker
        of a finished setting. Returns the scores, or None when nothing is cached."""
        scores = self.lookup(k)
        if scores is None:
            return None
        dest.mkdir(parents=True, exist_ok=True)
        tmp = dest / f".instances.jsonl.tmp-{os.getpid()}"
        shutil.copyfile(self.entry(k) / "instances.jsonl", tmp)
        os.replace(tmp, dest / "instances.jsonl")
        scores = dict(scores, **updates, curve_cache=str(self.entry(k)))
        write_json_atomic(dest / "scores.json", scores)
        return scores

    def store(self, k: int, src: Path) -> bool:
        """Keep a finished setting directory as wait-k k (no-op when present or unfinished)."""
        if self.lookup(k) is not None or _finished(src, k) is None:
            return False
        self.dir.mkdir(parents=True, exist_ok=True)
        if not (self.dir / "key.json").is_file():
            write_json_atomic(self.dir / "key.json", self.key)
        tmp = self.dir / f".waitk-k{k}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for name in ("instances.jsonl", "scores.json"):
            shutil.copyfile(src / name, tmp / name)
        try:
            os.rename(tmp, self.entry(k))
        except OSError:            # another run stored it first: theirs is as good
            shutil.rmtree(tmp, ignore_errors=True)
            return False
        return True
