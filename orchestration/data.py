"""Named parallel data sets: a registry, where the files live, and validated loading.

Every set is a pair of aligned, UTF-8, one-segment-per-line files under one data directory
(``data.dir`` > ``$SIMULRL_DATA`` > ``../shared/data`` next to the repository). A set name
fixes the direction: ``newstest2015_ende`` reads the files of ``newstest2015_deen`` swapped.
A user's own set is a path instead of a name: a folder with ``src.txt``/``ref.txt``, or one
JSONL (``{"source": ..., "reference": ...}``) or TSV (source TAB reference) file; its
languages come from its name (``talks_deen``) or ``data.src_lang``/``data.tgt_lang``.

Loading validates the whole of both files before returning anything, so a bad line fails
the command at start-up with ``path:line: what`` instead of hours into a run. Every such
failure is a :class:`UserInputError` (``launch.py`` prints it and exits with status 2).
Nothing here imports torch or Ray.
"""
from __future__ import annotations

import difflib
import importlib
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from orchestration.config import DataConfig
from orchestration.config_loader import REPO_ROOT, repo_path
from orchestration.data_spec import ROLES, DatasetSpec, Role, read_text_lines  # noqa: F401 - re-exported
from orchestration.errors import UserInputError
from orchestration.user_data import PAIR_FILE_SUFFIXES, read_pair_file, user_spec
from rollout.units import count_units, unit_of

DATA_ENV = "SIMULRL_DATA"
DEFAULT_DATA_DIR = REPO_ROOT / ".." / "shared" / "data"


@dataclass(frozen=True)
class Pair:
    """One segment pair; ``index`` is its 0-based line number in the files (stable under shuffling)."""

    index: int
    source: str
    reference: str


@dataclass(frozen=True)
class Dataset:
    """The loaded pairs of one set, after shuffling and limiting, with where they came from."""

    spec: DatasetSpec
    pairs: list[Pair]
    src_path: Path
    ref_path: Path

    @property
    def src_lang(self) -> str:
        return self.spec.src_lang

    @property
    def tgt_lang(self) -> str:
        return self.spec.tgt_lang

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[Pair]:
        return iter(self.pairs)


# --- registry -------------------------------------------------------------------------------

_LANG_OF = {"deu_Latn": "de", "eng_Latn": "en", "zho_Hans": "zh"}


def _build_registry() -> dict[str, DatasetSpec]:
    specs: list[DatasetSpec] = []

    def add(name: str, folder: str, src: str, tgt: str, role: Role,
            sb: tuple[str, str] | None = None, swap: bool = False) -> None:
        files = (f"{folder}/ref.txt", f"{folder}/src.txt") if swap else (f"{folder}/src.txt", f"{folder}/ref.txt")
        specs.append(DatasetSpec(name, src, tgt, files[0], files[1], role, sb))

    # Test sets. newstest2015 de-en and en-de are the same pairs, so en->de swaps the files.
    add("newstest2015_deen", "newstest2015_deen", "de", "en", "test", ("wmt15", "de-en"))
    add("newstest2015_ende", "newstest2015_deen", "en", "de", "test", ("wmt15", "en-de"), swap=True)
    pairs = ("deen", "ende", "enzh", "zhen")
    for p in pairs:  # sacrebleu's default wmt21 reference is A, the one in ref.txt
        add(f"newstest2021_{p}", f"newstest2021_{p}", p[:2], p[2:], "test", ("wmt21", f"{p[:2]}-{p[2:]}"))
    for p in pairs:  # sacrebleu has no FLORES sets
        add(f"flores200_devtest_{p}", f"flores200_devtest_{p}", p[:2], p[2:], "test")
    # FLORES-200 dev is 3-way parallel: every ordered pair of its languages is a dev set.
    for src_code, src in _LANG_OF.items():
        for tgt_code, tgt in _LANG_OF.items():
            if src != tgt:
                specs.append(DatasetSpec(f"flores200_dev_{src}{tgt}", src, tgt, f"flores200_dev/{src_code}.txt",
                                         f"flores200_dev/{tgt_code}.txt", "dev"))
    # Training data: WMT17-20 news (published de->en and zh->en; the reverse swaps the files).
    add("wmt17-20_news_deen", "wmt17-20_news_deen", "de", "en", "train")
    add("wmt17-20_news_ende", "wmt17-20_news_deen", "en", "de", "train", swap=True)
    add("wmt17-20_news_zhen", "wmt17-20_news_zhen", "zh", "en", "train")
    add("wmt17-20_news_enzh", "wmt17-20_news_zhen", "en", "zh", "train", swap=True)
    add("tatoeba_cmn_enzh", "tatoeba_cmn_enzh", "en", "zh", "train")
    add("multi30k_ende_train", "multi30k_ende/train", "en", "de", "train")
    add("multi30k_ende_val", "multi30k_ende/val", "en", "de", "dev")
    for split, sb_set in (("test_2016_flickr", "multi30k/2016"), ("test_2017_flickr", "multi30k/2017"),
                          ("test_2017_mscoco", None), ("test_2018_flickr", "multi30k/2018")):
        add(f"multi30k_ende_{split}", f"multi30k_ende/{split}", "en", "de", "test",
            (sb_set, "en-de") if sb_set else None)
    return {s.name: s for s in specs}


DATASETS: dict[str, DatasetSpec] = _build_registry()


def get_spec(name: str) -> DatasetSpec:
    """The registered set ``name``; an unknown name lists the closest registered ones."""
    spec = DATASETS.get(name)
    if spec is not None:
        return spec
    close = difflib.get_close_matches(name, list(DATASETS), n=3, cutoff=0.5)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise UserInputError(f"unknown data set {name!r}{hint}; `launch.py datasets` lists the known names "
                         f"(your own data: a folder with src.txt/ref.txt or a .jsonl/.tsv file path)")


def is_user_set(name: str) -> bool:
    """A folder or file path (a user's own set) rather than a registered name."""
    if name in DATASETS:
        return False
    return "/" in name or os.sep in name or name.endswith(PAIR_FILE_SUFFIXES) or repo_path(name).is_dir()


# --- data directory -------------------------------------------------------------------------


def resolve_data_dir(cfg_dir: str | None, *, must_exist: bool = True) -> Path:
    """``data.dir`` (relative to the repository root) > ``$SIMULRL_DATA`` > ``../shared/data``."""
    if cfg_dir:
        path, origin = repo_path(cfg_dir), "data.dir"
    elif os.environ.get(DATA_ENV):
        path, origin = Path(os.environ[DATA_ENV]).expanduser(), f"${DATA_ENV}"
    else:
        path, origin = DEFAULT_DATA_DIR, "the default"
    path = path.resolve()
    if must_exist and not path.is_dir():
        raise UserInputError(f"data directory {path} (from {origin}) does not exist; point data.dir=PATH "
                             f"or {DATA_ENV}=PATH at the folder holding the data sets")
    return path


# --- reading and validation -----------------------------------------------------------------


def source_units(text: str, lang: str) -> int:
    """Latency units of a segment: characters for Chinese (no spaces between words), else words."""
    return count_units(text, unit_of(lang))


def _read_segments(path: Path) -> list[str]:
    """All segments of ``path``: UTF-8, split on LF only, each stripped; errors name the line."""
    lines = read_text_lines(path)
    # Surrounding whitespace (a few published lines have it, and "\r" of CRLF files) would
    # become a spurious first/last chunk of a streamed source and part of the prompt.
    segments = [line.strip() for line in lines]
    for number, segment in enumerate(segments, 1):
        if not segment:
            raise UserInputError(f"{path}:{number}: empty line; every line must hold one segment "
                                 f"aligned with the same line of the other file")
    return segments


def _validated_pairs(spec: DatasetSpec, src_path: Path, ref_path: Path, max_units: int) -> list[Pair]:
    if src_path == ref_path:   # one JSONL/TSV file holds both sides
        sources, references = read_pair_file(src_path)
        fix = "remove that line"
    else:
        sources = _read_segments(src_path)
        references = _read_segments(ref_path)
        fix = "remove that line from both files"
        if len(sources) != len(references):
            raise UserInputError(f"{src_path} has {len(sources)} lines but {ref_path} has {len(references)}; "
                                 f"source and reference files must be aligned line by line")
    if not sources:
        raise UserInputError(f"{src_path}: no segments; data set {spec.name} is empty")
    unit = "characters" if unit_of(spec.src_lang) == "char" else "words"
    for i, source in enumerate(sources):
        n = source_units(source, spec.src_lang)
        if n > max_units:
            raise UserInputError(f"{src_path}:{i + 1}: source has {n} units ({unit}), more than "
                                 f"data.max_source_units={max_units}; raise the limit or {fix}")
    return [Pair(i, s, r) for i, (s, r) in enumerate(zip(sources, references))]


def _fetch(spec: DatasetSpec, data_dir: Path) -> None:
    """Download ``spec`` with sacrebleu and write its two files into the data directory."""
    src_path, ref_path = spec.paths(data_dir)
    if spec.sacrebleu is None:
        raise UserInputError(f"{src_path}: not found, and data set {spec.name} cannot be fetched "
                             f"(sacrebleu does not provide it); copy its files into {data_dir}")
    test_set, langpair = spec.sacrebleu
    try:
        datasets = importlib.import_module("sacrebleu.dataset").DATASETS
        sb = datasets[test_set]
        fetched_src = Path(sb.get_source_file(langpair))
        fetched_ref = Path(sb.get_reference_files(langpair)[0])
        contents = fetched_src.read_bytes(), fetched_ref.read_bytes()
    except (Exception, SystemExit) as exc:  # sacrebleu exits the process on a failed download
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserInputError(f"{src_path}: not found, and fetching {spec.name} with sacrebleu "
                             f"({test_set} {langpair}) failed: {reason}; check the network or copy "
                             f"the files into {data_dir}") from None
    for target, content in zip((src_path, ref_path), contents):
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".fetch.tmp")
        tmp.write_bytes(content)
        os.replace(tmp, target)  # atomic: a reader never sees a half-written file


def load_pairs(name: str, data_cfg: DataConfig, *, seed: int, purpose: Role,
               limit: int | None = None, shuffle: bool = False) -> Dataset:
    """Read and validate the set ``name`` for ``purpose``; then shuffle with ``seed`` and keep ``limit``."""
    if purpose not in ROLES:
        raise ValueError(f"purpose must be one of {ROLES}, not {purpose!r}")
    if is_user_set(name):
        spec = user_spec(name, data_cfg, purpose)
        src_path, ref_path = Path(spec.src_file), Path(spec.ref_file)
        pairs = _validated_pairs(spec, src_path, ref_path, data_cfg.max_source_units)
        return _finish(spec, pairs, src_path, ref_path, seed, limit, shuffle)
    spec = get_spec(name)
    if purpose == "train" and spec.role != "train":
        raise UserInputError(f"data set {name!r} is a {spec.role} set and evaluation sets are never used for "
                             f"training; pick a training set (`launch.py datasets` shows the roles)")
    data_dir = resolve_data_dir(data_cfg.dir, must_exist=not data_cfg.fetch)
    src_path, ref_path = spec.paths(data_dir)
    missing = [p for p in (src_path, ref_path) if not p.is_file()]
    if missing and data_cfg.fetch and len(missing) == 2:
        _fetch(spec, data_dir)
        missing = []
    if missing:
        how = "set data.fetch=true to download it" if spec.sacrebleu and not data_cfg.fetch else \
            f"copy its files into {data_dir}"
        raise UserInputError(f"{missing[0]}: file not found (data set {name}); {how}, or point data.dir=PATH "
                             f"or {DATA_ENV}=PATH at another data directory")
    pairs = _validated_pairs(spec, src_path, ref_path, data_cfg.max_source_units)
    return _finish(spec, pairs, src_path, ref_path, seed, limit, shuffle)


def _finish(spec: DatasetSpec, pairs: list[Pair], src_path: Path, ref_path: Path, seed: int,
            limit: int | None, shuffle: bool) -> Dataset:
    if shuffle:
        random.Random(seed).shuffle(pairs)
    if limit is not None:
        pairs = pairs[:limit]
    return Dataset(spec, pairs, src_path, ref_path)


# --- listing --------------------------------------------------------------------------------


def count_lines(path: Path) -> int:
    """Lines in ``path`` without decoding it; a last line without a final newline counts."""
    count, last = 0, b""
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (1 if last not in (b"", b"\n") else 0)


def _lines_cell(src_path: Path, ref_path: Path) -> str:
    try:
        if not (src_path.is_file() and ref_path.is_file()):
            return "missing"
        n_src, n_ref = count_lines(src_path), count_lines(ref_path)
    except OSError:
        return "unreadable"
    return str(n_src) if n_src == n_ref else f"unequal {n_src}/{n_ref}"


def describe_datasets(data_cfg: DataConfig) -> str:
    """A table of every registered set: name, direction, role, lines (or missing), files."""
    data_dir = resolve_data_dir(data_cfg.dir)
    rows = [("name", "direction", "role", "lines", "files (source, reference)")]
    for spec in DATASETS.values():
        src_path, ref_path = spec.paths(data_dir)
        rows.append((spec.name, spec.direction, spec.role, _lines_cell(src_path, ref_path),
                     f"{spec.src_file}, {spec.ref_file}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = [f"data directory: {data_dir}"]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1] for row in rows]
    lines.append(f"configured: data.train={data_cfg.train} data.dev={data_cfg.dev} data.test={data_cfg.test}")
    return "\n".join(line.rstrip() for line in lines)
