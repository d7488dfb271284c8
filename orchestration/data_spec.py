"""What the data loaders share: a data set's spec, its roles, and reading one text file's lines.

Both :mod:`orchestration.data` (the registry of named sets) and :mod:`orchestration.user_data`
(a user's own folder or JSONL/TSV file) build :class:`DatasetSpec` objects and read files with
:func:`read_text_lines`; these names live here so that the two never import each other in a
circle (``data`` imports ``user_data``, never the reverse). Nothing here imports torch or Ray.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from orchestration.errors import UserInputError

Role = Literal["train", "dev", "test"]
ROLES: tuple[str, ...] = ("train", "dev", "test")


@dataclass(frozen=True)
class DatasetSpec:
    """One named set in one direction; file paths are relative to the data directory."""

    name: str
    src_lang: str  # "de", "en" or "zh"
    tgt_lang: str
    src_file: str
    ref_file: str
    role: Role  # "test" and "dev" sets are refused for training
    # (sacrebleu test set, langpair) that yields these files, for ``data.fetch``; None = not fetchable
    sacrebleu: tuple[str, str] | None = None

    @property
    def direction(self) -> str:
        return f"{self.src_lang}-{self.tgt_lang}"

    def paths(self, data_dir: Path) -> tuple[Path, Path]:
        return data_dir / self.src_file, data_dir / self.ref_file


def read_text_lines(path: Path) -> list[str]:
    """The lines of ``path``: UTF-8 (errors name the line), split on LF only, no BOM."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserInputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise UserInputError(f"{path}:{line}: not valid UTF-8 (byte 0x{data[exc.start]:02x} at byte column {col})"
                             ) from None
    # Split on "\n" only, not str.splitlines(): U+2028 or a form feed inside a segment must not
    # shift the alignment or disagree with the line counts that `wc -l` and `datasets` report.
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the final newline ends the last line; it does not start a new one
    if lines and lines[0].startswith("\ufeff"):
        lines[0] = lines[0][1:]  # a byte-order mark some editors add is not part of the text
    return lines
