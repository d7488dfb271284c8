"""A tiny data directory in the layout of ``../shared/data`` for runs of the tiny model."""
from __future__ import annotations

from pathlib import Path

WORDS = "Die Katze sitzt auf der Matte und schaut aus dem Fenster heute".split()


def build_tiny_data(root: str | Path, n: int = 10) -> Path:
    """``wmt17-20_news_deen`` with ``n`` pairs of 4-11 words and a 4-line ``flores200_dev``."""
    root = Path(root)
    for name in ("wmt17-20_news_deen", "flores200_dev"):
        (root / name).mkdir(parents=True)
    (root / "wmt17-20_news_deen" / "src.txt").write_text(
        "".join(" ".join(WORDS[:4 + i % 8]) + "\n" for i in range(n)), encoding="utf-8")
    (root / "wmt17-20_news_deen" / "ref.txt").write_text(
        "".join(f"The cat sits on the mat and looks out {i}\n" for i in range(n)), encoding="utf-8")
    (root / "flores200_dev" / "deu_Latn.txt").write_text("Der Zug nach Berlin hat heute Verspätung\n" * 4,
                                                         encoding="utf-8")
    (root / "flores200_dev" / "eng_Latn.txt").write_text("The train to Berlin is late today\n" * 4,
                                                         encoding="utf-8")
    return root
