"""A user's own data: a folder with src.txt/ref.txt, a JSONL or a TSV file, with languages from
the name or data.src_lang/data.tgt_lang, validated like the registered sets (file:line)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from orchestration.config import DataConfig
from orchestration.data import load_pairs
from orchestration.errors import UserInputError
from orchestration.user_data import languages_in_name

REPO = Path(__file__).resolve().parents[2]
PAIRS = [("Die Katze sitzt.", "The cat sits."), ("Guten Morgen", "Good morning"), ("Wir gehen", "We go")]


def _folder(root: Path, pairs=PAIRS) -> Path:
    root.mkdir(parents=True)
    (root / "src.txt").write_text("".join(s + "\n" for s, _ in pairs), encoding="utf-8")
    (root / "ref.txt").write_text("".join(r + "\n" for _, r in pairs), encoding="utf-8")
    return root


def _jsonl(path: Path, pairs=PAIRS) -> Path:
    path.write_text("".join(json.dumps({"source": s, "reference": r}) + "\n" for s, r in pairs), encoding="utf-8")
    return path


def _tsv(path: Path, pairs=PAIRS) -> Path:
    path.write_text("".join(f"{s}\t{r}\n" for s, r in pairs), encoding="utf-8")
    return path


@pytest.mark.parametrize("make", [lambda d: _folder(d / "talks_deen"), lambda d: _jsonl(d / "talks.de-en.jsonl"),
                                  lambda d: _tsv(d / "talks_deen.tsv")])
def test_every_layout_loads_the_same_pairs_for_every_role(tmp_path, make):
    path = make(tmp_path)
    for role in ("train", "dev", "test"):
        ds = load_pairs(str(path), DataConfig(), seed=0, purpose=role)
        assert [(p.index, p.source, p.reference) for p in ds] == [(i, s, r) for i, (s, r) in enumerate(PAIRS)]
        assert (ds.src_lang, ds.tgt_lang, ds.spec.role) == ("de", "en", role)
    assert len(load_pairs(str(path), DataConfig(), seed=0, purpose="train", limit=2)) == 2


def test_languages_from_the_config_when_the_name_does_not_say_them(tmp_path):
    path = _tsv(tmp_path / "corpus.tsv")
    with pytest.raises(UserInputError, match=r"data.train=.*corpus.tsv: its name does not say the languages; "
                                             r"set data.src_lang and data.tgt_lang"):
        load_pairs(str(path), DataConfig(), seed=0, purpose="train")
    ds = load_pairs(str(path), DataConfig(src_lang="en", tgt_lang="zh"), seed=0, purpose="dev")
    assert (ds.src_lang, ds.tgt_lang) == ("en", "zh")
    with pytest.raises(UserInputError, match="the name says de-en but data.src_lang/data.tgt_lang say en-zh"):
        load_pairs(str(_tsv(tmp_path / "x_deen.tsv")), DataConfig(src_lang="en", tgt_lang="zh"), seed=0,
                   purpose="dev")
    with pytest.raises(UserInputError, match="set both or neither"):
        load_pairs(str(path), DataConfig(src_lang="en"), seed=0, purpose="dev")
    with pytest.raises(UserInputError, match="data.src_lang=xx: unknown language"):
        load_pairs(str(path), DataConfig(src_lang="xx", tgt_lang="en"), seed=0, purpose="dev")
    assert languages_in_name("news/wmt_zhen/") == ("zh", "en") and languages_in_name("garden") is None


@pytest.mark.parametrize("name, text, message", [
    ("a_deen.jsonl", '{"source": "a", "reference": "b"}\n{"source": "a"}\n', r':2: expected an object with exactly'),
    ("a_deen.jsonl", '{"source": "a", "reference": "b"}\n{oops\n', r":2: invalid JSON"),
    ("a_deen.jsonl", '{"source": "a", "reference": "b"}\n{"source": "a", "reference": 3}\n', r':2: "source" and'),
    ("a_deen.jsonl", '{"source": "a", "reference": "b"}\n{"source": " ", "reference": "c"}\n', r":2: empty source"),
    ("a_deen.tsv", "a\tb\nc d e\n", r":2: 1 tab-separated fields"),
    ("a_deen.tsv", "a\tb\nc\t\n", r":2: empty reference"),
    ("a_deen.tsv", "a\tb\nx y z w\tb\n", r":2: source has 4 units \(words\), more than data.max_source_units=3"),
])
def test_bad_lines_name_file_and_line(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserInputError, match=f"{path}{message}"):
        load_pairs(str(path), DataConfig(max_source_units=3), seed=0, purpose="train")


def test_folder_and_file_problems(tmp_path):
    bad = tmp_path / "bad_deen.tsv"
    bad.write_bytes(b"a\tb\n\xff\tc\n")
    with pytest.raises(UserInputError, match=f"{bad}:2: not valid UTF-8"):
        load_pairs(str(bad), DataConfig(), seed=0, purpose="train")
    folder = _folder(tmp_path / "f_deen", PAIRS)
    (folder / "ref.txt").write_text("one\n", encoding="utf-8")
    with pytest.raises(UserInputError, match="has 3 lines but .*ref.txt has 1"):
        load_pairs(str(folder), DataConfig(), seed=0, purpose="train")
    (folder / "ref.txt").unlink()
    with pytest.raises(UserInputError, match=r"data.dev=.*: .*ref.txt not found; a data folder holds src.txt"):
        load_pairs(str(folder), DataConfig(), seed=0, purpose="dev")
    with pytest.raises(UserInputError, match=r"data.test=.*nowhere_deen: .* does not exist"):
        load_pairs(str(tmp_path / "nowhere_deen"), DataConfig(), seed=0, purpose="test")
    other = tmp_path / "notes_deen.txt"
    other.write_text("x\n")
    with pytest.raises(UserInputError, match="neither a folder nor a .jsonl/.tsv file"):
        load_pairs(str(other), DataConfig(), seed=0, purpose="test")


def test_launch_show_config_and_bad_user_data_exit_2(tmp_path):
    path = _tsv(tmp_path / "corpus.tsv")
    run = subprocess.run([sys.executable, "launch.py", "train", f"data.train={path}", f"run.dir={tmp_path / 'r'}"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "set data.src_lang and data.tgt_lang" in run.stderr
    assert not (tmp_path / "r").exists()   # nothing written
