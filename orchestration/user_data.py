"""A user's own parallel data: a folder with ``src.txt``/``ref.txt``, or one JSONL or TSV file.

Such a set is named by its path (relative paths: from the repository root) wherever a set name
goes (``data.train``, ``data.dev``, ``data.test``) and is validated exactly like a registered
set, every problem naming ``file:line``. Its languages come from its name when that ends in
them (``talks_deen``, ``talks.de-en.tsv``), else from ``data.src_lang``/``data.tgt_lang``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from orchestration.config import DataConfig
from orchestration.config_loader import repo_path
from orchestration.data_spec import DatasetSpec, Role, read_text_lines
from orchestration.errors import UserInputError
from rollout.episode import LANGUAGE_NAMES

PAIR_FILE_SUFFIXES = (".jsonl", ".tsv")


def read_pair_file(path: Path) -> tuple[list[str], list[str]]:
    """Sources and references of a JSONL file ({"source": ..., "reference": ...} a line) or a
    TSV file (source TAB reference); every problem names ``path:line``."""
    sources, references = [], []
    for number, line in enumerate(read_text_lines(path), 1):
        where = f"{path}:{number}"
        if path.suffix == ".jsonl":
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserInputError(f"{where}: invalid JSON: {exc.msg} (column {exc.colno}); each line must be "
                                     '{"source": "...", "reference": "..."}') from None
            if not isinstance(row, dict) or set(row) != {"source", "reference"}:
                got = sorted(row) if isinstance(row, dict) else type(row).__name__
                raise UserInputError(f'{where}: expected an object with exactly "source" and "reference", got {got}')
            src, ref = row["source"], row["reference"]
            if not isinstance(src, str) or not isinstance(ref, str):
                raise UserInputError(f'{where}: "source" and "reference" must be strings')
        else:
            fields = line.rstrip("\r").split("\t")
            if len(fields) != 2:
                raise UserInputError(f"{where}: {len(fields)} tab-separated fields; each line must be "
                                     "source TAB reference")
            src, ref = fields
        for side, text in (("source", src), ("reference", ref)):
            if not text.strip():
                raise UserInputError(f"{where}: empty {side}; every line must hold one segment pair")
        sources.append(src.strip())
        references.append(ref.strip())
    return sources, references


_NAME_LANGS = re.compile(r"(?:^|[_.\-])([a-z]{2})-?([a-z]{2})$")


def languages_in_name(name: str) -> tuple[str, str] | None:
    """(src, tgt) when a set's name ends in them: ``talks_deen``, ``talks.de-en.tsv``."""
    stem = Path(name.rstrip("/")).name
    for suffix in PAIR_FILE_SUFFIXES:
        stem = stem.removesuffix(suffix)
    m = _NAME_LANGS.search(stem)
    if m and m.group(1) in LANGUAGE_NAMES and m.group(2) in LANGUAGE_NAMES and m.group(1) != m.group(2):
        return m.group(1), m.group(2)
    return None


def user_spec(name: str, data_cfg: DataConfig, purpose: Role) -> DatasetSpec:
    """The spec of a user's folder or JSONL/TSV file (relative paths: from the repository root)."""
    key = f"data.{purpose}"
    path = repo_path(name).resolve()
    what = "pass a registered name (`launch.py datasets`), a folder with src.txt and ref.txt, or a .jsonl/.tsv file"
    if path.is_dir():
        src, ref = path / "src.txt", path / "ref.txt"
        for f in (src, ref):
            if not f.is_file():
                raise UserInputError(f"{key}={name}: {f} not found; a data folder holds src.txt and ref.txt, "
                                     "aligned line by line")
    elif path.is_file() and path.suffix in PAIR_FILE_SUFFIXES:
        src = ref = path
    elif path.exists():
        raise UserInputError(f"{key}={name}: {path} is neither a folder nor a .jsonl/.tsv file; {what}")
    else:
        raise UserInputError(f"{key}={name}: {path} does not exist; {what}")
    named = languages_in_name(name)
    given = (data_cfg.src_lang, data_cfg.tgt_lang)
    if (given[0] is None) != (given[1] is None):
        raise UserInputError("data.src_lang and data.tgt_lang: set both or neither")
    if given[0] is not None and named is not None and named != given:
        raise UserInputError(f"{key}={name}: the name says {named[0]}-{named[1]} but data.src_lang/data.tgt_lang "
                             f"say {given[0]}-{given[1]}; make them agree")
    langs = named or (given if given[0] is not None else None)
    if langs is None:
        raise UserInputError(f"{key}={name}: its name does not say the languages; set data.src_lang and "
                             f"data.tgt_lang (e.g. data.src_lang=de data.tgt_lang=en), or end the name in "
                             f"_<src><tgt> such as _deen")
    for k, lang in zip(("data.src_lang", "data.tgt_lang"), langs):
        if lang not in LANGUAGE_NAMES:
            raise UserInputError(f"{k}={lang}: unknown language; known: {', '.join(sorted(LANGUAGE_NAMES))}")
    return DatasetSpec(name, langs[0], langs[1], str(src), str(ref), purpose)
