"""Data sets: registry, data directory resolution, validation messages, shuffling, listing."""
from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from orchestration.config import DataConfig
from orchestration.config_loader import REPO_ROOT
from orchestration.data import (DATASETS, Dataset, Pair, count_lines, describe_datasets, get_spec,
                                load_pairs, resolve_data_dir, source_units)
from orchestration.errors import UserInputError

REAL_DATA = (REPO_ROOT / ".." / "shared" / "data").resolve()


def write_set(root: Path, folder: str, src: list[str] | bytes, ref: list[str] | bytes,
              names: tuple[str, str] = ("src.txt", "ref.txt")) -> tuple[Path, Path]:
    """Write a set folder; lists are joined with LF and end with one; bytes are written as is."""
    paths = []
    for name, content in zip(names, (src, ref)):
        path = root / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else ("\n".join(content) + "\n").encode())
        paths.append(path)
    return paths[0], paths[1]


def cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(dir=str(root), **kw)


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv("SIMULRL_DATA", raising=False)


# --- registry ---------------------------------------------------------------------------------


def test_registry_names_roles_and_languages():
    expected = {
        "newstest2015_deen": "test", "newstest2015_ende": "test",
        **{f"newstest2021_{p}": "test" for p in ("deen", "ende", "enzh", "zhen")},
        **{f"flores200_devtest_{p}": "test" for p in ("deen", "ende", "enzh", "zhen")},
        **{f"flores200_dev_{p}": "dev" for p in ("deen", "ende", "enzh", "zhen", "dezh", "zhde")},
        **{f"wmt17-20_news_{p}": "train" for p in ("deen", "ende", "zhen", "enzh")},
        "tatoeba_cmn_enzh": "train", "multi30k_ende_train": "train", "multi30k_ende_val": "dev",
        **{f"multi30k_ende_test_{y}": "test"
           for y in ("2016_flickr", "2017_flickr", "2017_mscoco", "2018_flickr")},
    }
    assert {n: s.role for n, s in DATASETS.items()} == expected
    for name, spec in DATASETS.items():
        assert {spec.src_lang, spec.tgt_lang} <= {"de", "en", "zh"} and spec.src_lang != spec.tgt_lang
        assert name.endswith(spec.src_lang + spec.tgt_lang) or name.startswith("multi30k_ende")
    defaults = DataConfig()
    assert DATASETS[defaults.train].role == "train"
    assert DATASETS[defaults.dev].role == "dev" and DATASETS[defaults.test].role == "test"


def test_swapped_specs_read_the_published_files_reversed():
    assert (get_spec("newstest2015_ende").src_file, get_spec("newstest2015_ende").ref_file) == (
        "newstest2015_deen/ref.txt", "newstest2015_deen/src.txt")
    assert get_spec("wmt17-20_news_enzh").src_file == "wmt17-20_news_zhen/ref.txt"
    assert get_spec("flores200_dev_zhde").src_file == "flores200_dev/zho_Hans.txt"
    assert get_spec("flores200_dev_zhde").ref_file == "flores200_dev/deu_Latn.txt"


def test_unknown_name_suggests_close_names():
    with pytest.raises(UserInputError, match=r"unknown data set 'newstest2015_dene' \(did you mean .*newstest2015_deen"):
        get_spec("newstest2015_dene")


# --- data directory ---------------------------------------------------------------------------


def test_config_dir_beats_env_and_relative_is_against_repo_root(tmp_path, monkeypatch):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "env").mkdir()
    monkeypatch.setenv("SIMULRL_DATA", str(tmp_path / "env"))
    assert resolve_data_dir(str(tmp_path / "cfg")) == (tmp_path / "cfg").resolve()
    assert resolve_data_dir(None) == (tmp_path / "env").resolve()
    monkeypatch.chdir(tmp_path / "env")  # the working directory must not matter for data.dir
    relative = os.path.relpath(tmp_path / "cfg", REPO_ROOT)
    assert resolve_data_dir(relative) == (tmp_path / "cfg").resolve()


def test_default_dir_is_shared_data_next_to_repo(no_env):
    if REAL_DATA.is_dir():
        assert resolve_data_dir(None) == REAL_DATA
    else:
        with pytest.raises(UserInputError, match="SIMULRL_DATA"):
            resolve_data_dir(None)


def test_missing_dir_names_path_and_how_to_set_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMULRL_DATA", str(tmp_path / "gone"))
    with pytest.raises(UserInputError) as err:
        resolve_data_dir(None)
    msg = str(err.value)
    assert str(tmp_path / "gone") in msg and "data.dir=" in msg and "SIMULRL_DATA" in msg and "\n" not in msg


# --- loading and validation -------------------------------------------------------------------


def test_load_strips_segments_and_handles_crlf_and_no_final_newline(tmp_path):
    write_set(tmp_path, "newstest2015_deen", b"  Hallo Welt \r\nZweiter Satz\r\nDritter", ["Hello world", " Second ", "Third"])
    ds = load_pairs("newstest2015_deen", cfg(tmp_path), seed=0, purpose="test")
    assert isinstance(ds, Dataset) and (ds.src_lang, ds.tgt_lang) == ("de", "en") and len(ds) == 3
    assert ds.pairs == [Pair(0, "Hallo Welt", "Hello world"), Pair(1, "Zweiter Satz", "Second"),
                        Pair(2, "Dritter", "Third")]


def test_swapped_direction_swaps_the_files(tmp_path):
    write_set(tmp_path, "newstest2015_deen", ["ein Haus", "zwei"], ["a house", "two"])
    ds = load_pairs("newstest2015_ende", cfg(tmp_path), seed=0, purpose="test")
    assert (ds.src_lang, ds.tgt_lang) == ("en", "de")
    assert [(p.source, p.reference) for p in ds] == [("a house", "ein Haus"), ("two", "zwei")]
    write_set(tmp_path, "flores200_dev", ["Haus"], ["房子"], names=("deu_Latn.txt", "zho_Hans.txt"))
    zhde = load_pairs("flores200_dev_zhde", cfg(tmp_path), seed=0, purpose="dev")
    assert zhde.pairs == [Pair(0, "房子", "Haus")] and zhde.src_lang == "zh"


def test_invalid_utf8_names_file_and_line(tmp_path):
    src, _ = write_set(tmp_path, "newstest2015_deen", b"eins\nzwei\ndr\xffei\n", ["one", "two", "three"])
    with pytest.raises(UserInputError, match=rf"^{src}:3: not valid UTF-8"):
        load_pairs("newstest2015_deen", cfg(tmp_path), seed=0, purpose="test")


@pytest.mark.parametrize("bad", ["", "   \t"])
def test_empty_or_blank_line_names_file_and_line(tmp_path, bad):
    _, ref = write_set(tmp_path, "newstest2015_deen", ["eins", "zwei", "drei"], ["one", bad, "three"])
    with pytest.raises(UserInputError, match=rf"^{ref}:2: empty line"):
        load_pairs("newstest2015_deen", cfg(tmp_path), seed=0, purpose="test")


def test_unequal_line_counts_name_both_files(tmp_path):
    src, ref = write_set(tmp_path, "newstest2015_deen", ["eins", "zwei", "drei"], ["one", "two"])
    with pytest.raises(UserInputError) as err:
        load_pairs("newstest2015_deen", cfg(tmp_path), seed=0, purpose="test")
    assert f"{src} has 3 lines but {ref} has 2" in str(err.value)


def test_overlong_source_words_and_chinese_characters(tmp_path):
    src, _ = write_set(tmp_path, "newstest2015_deen", ["a b", "a b c d e"], ["x", "y"])
    with pytest.raises(UserInputError, match=rf"^{src}:2: source has 5 units \(words\), more than data.max_source_units=4"):
        load_pairs("newstest2015_deen", cfg(tmp_path, max_source_units=4), seed=0, purpose="test")
    zsrc, _ = write_set(tmp_path, "newstest2021_zhen", ["你好", "我 爱 北京天"], ["hi", "x"])
    assert source_units("我 爱 北京天", "zh") == 5 and source_units("a  b", "en") == 2
    with pytest.raises(UserInputError, match=rf"^{zsrc}:2: source has 5 units \(characters\)"):
        load_pairs("newstest2021_zhen", cfg(tmp_path, max_source_units=4), seed=0, purpose="test")
    assert len(load_pairs("newstest2021_zhen", cfg(tmp_path, max_source_units=5), seed=0, purpose="test")) == 2


def test_missing_file_names_path_and_suggests_fetch(tmp_path):
    write_set(tmp_path, "newstest2015_deen", ["eins"], ["one"])
    (tmp_path / "newstest2015_deen" / "ref.txt").unlink()
    with pytest.raises(UserInputError, match=rf"^{tmp_path / 'newstest2015_deen' / 'ref.txt'}: file not found.*data.fetch=true"):
        load_pairs("newstest2015_deen", cfg(tmp_path), seed=0, purpose="test")


def test_test_and_dev_sets_are_refused_for_training(tmp_path):
    write_set(tmp_path, "newstest2015_deen", ["eins"], ["one"])
    for name in ("newstest2015_deen", "flores200_dev_deen"):
        with pytest.raises(UserInputError, match="evaluation sets are never used for training"):
            load_pairs(name, cfg(tmp_path), seed=0, purpose="train")
    with pytest.raises(UserInputError, match="unknown data set"):
        load_pairs("no_such_set", cfg(tmp_path), seed=0, purpose="test")


def test_seeded_shuffle_and_limit(tmp_path):
    n = 50
    write_set(tmp_path, "wmt17-20_news_deen", [f"q{i}" for i in range(n)], [f"r{i}" for i in range(n)])
    c = cfg(tmp_path)

    def order(seed, **kw):
        return [p.index for p in load_pairs("wmt17-20_news_deen", c, seed=seed, purpose="train", **kw)]

    assert order(0) == list(range(n))
    assert order(1, shuffle=True) == order(1, shuffle=True) != list(range(n))
    assert order(1, shuffle=True) != order(2, shuffle=True)
    assert sorted(order(3, shuffle=True)) == list(range(n))
    assert order(1, shuffle=True, limit=7) == order(1, shuffle=True)[:7]
    assert order(0, limit=3) == [0, 1, 2]
    pairs = load_pairs("wmt17-20_news_deen", c, seed=5, purpose="train", shuffle=True).pairs
    assert all(p.source == f"q{p.index}" and p.reference == f"r{p.index}" for p in pairs)


# --- fetching ---------------------------------------------------------------------------------


def fake_sacrebleu(monkeypatch, get_source_file, get_reference_files):
    ds = types.SimpleNamespace(get_source_file=get_source_file, get_reference_files=get_reference_files)
    pkg, mod = types.ModuleType("sacrebleu"), types.ModuleType("sacrebleu.dataset")
    mod.DATASETS = {"wmt15": ds}
    monkeypatch.setitem(sys.modules, "sacrebleu", pkg)
    monkeypatch.setitem(sys.modules, "sacrebleu.dataset", mod)


def test_fetch_failure_is_a_clear_error(tmp_path, monkeypatch):
    def fail(langpair):
        raise SystemExit(1)  # what sacrebleu does when a download fails

    fake_sacrebleu(monkeypatch, fail, fail)
    with pytest.raises(UserInputError, match=r"fetching newstest2015_deen with sacrebleu \(wmt15 de-en\) failed"):
        load_pairs("newstest2015_deen", cfg(tmp_path / "new", fetch=True), seed=0, purpose="test")
    with pytest.raises(UserInputError, match="cannot be fetched"):
        load_pairs("flores200_devtest_deen", cfg(tmp_path, fetch=True), seed=0, purpose="test")


def test_fetch_writes_the_set_into_the_data_dir(tmp_path, monkeypatch):
    write_set(tmp_path / "cache", "x", ["de eins", "de zwei"], ["en one", "en two"])
    calls = []

    def src(langpair):
        calls.append(langpair)
        return str(tmp_path / "cache" / "x" / "src.txt")

    fake_sacrebleu(monkeypatch, src, lambda lp: [str(tmp_path / "cache" / "x" / "ref.txt")])
    ds = load_pairs("newstest2015_deen", cfg(tmp_path / "data", fetch=True), seed=0, purpose="test")
    assert calls == ["de-en"] and ds.pairs[1] == Pair(1, "de zwei", "en two")
    assert (tmp_path / "data" / "newstest2015_deen" / "src.txt").read_text() == "de eins\nde zwei\n"


# --- listing ----------------------------------------------------------------------------------


def test_count_lines(tmp_path):
    for content, n in [(b"", 0), (b"a\n", 1), (b"a\nb", 2), (b"a\n\nb\n", 3)]:
        (tmp_path / "f").write_bytes(content)
        assert count_lines(tmp_path / "f") == n


def test_describe_shows_counts_missing_and_unequal(tmp_path):
    write_set(tmp_path, "newstest2015_deen", ["eins", "zwei"], ["one", "two"])
    write_set(tmp_path, "tatoeba_cmn_enzh", ["a", "b"], ["甲"])
    rows = {line.split()[0]: line.split() for line in describe_datasets(cfg(tmp_path)).splitlines()[2:-1]}
    assert set(rows) == set(DATASETS)
    assert rows["newstest2015_deen"][:4] == ["newstest2015_deen", "de-en", "test", "2"]
    assert rows["newstest2015_ende"][3] == "2"
    assert rows["tatoeba_cmn_enzh"][3:5] == ["unequal", "2/1"]
    assert rows["flores200_dev_deen"][3] == "missing"


# --- real data and the command line -----------------------------------------------------------


def test_real_data_default_resolution(no_env):
    """The data the embedded default reads (``../shared/data`` beside the checkout)."""
    assert (REAL_DATA / "newstest2015_deen").is_dir(), f"{REAL_DATA} is missing: the embedded default reads it"
    c = DataConfig()
    deen = load_pairs("newstest2015_deen", c, seed=0, purpose="test")
    assert len(deen) == 2169
    ende = load_pairs("newstest2015_ende", c, seed=0, purpose="test", limit=5)
    assert [(p.source, p.reference) for p in ende] == [(p.reference, p.source) for p in deen.pairs[:5]]
    assert len(load_pairs("flores200_dev_deen", c, seed=0, purpose="dev")) == 997
    train = load_pairs("wmt17-20_news_deen", c, seed=1, purpose="train", shuffle=True, limit=10)
    assert len(train) == 10 and train.pairs[0].index != 0


def run_launch(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / "launch.py"), *args], capture_output=True,
                          text=True, env=env, cwd=REPO_ROOT, timeout=60)


def test_launch_datasets_lists_names(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "SIMULRL_DATA"}
    if not REAL_DATA.is_dir():
        env["SIMULRL_DATA"] = str(tmp_path)
    proc = run_launch("datasets", env=env)
    assert proc.returncode == 0, proc.stderr
    for name in ("newstest2015_deen", "flores200_dev_deen", "wmt17-20_news_ende", "multi30k_ende_train"):
        assert name in proc.stdout
    if REAL_DATA.is_dir():
        assert "2169" in proc.stdout


def test_launch_datasets_missing_dir_exits_2():
    proc = run_launch("datasets", "data.dir=/nonexistent", env=dict(os.environ))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "/nonexistent" in proc.stderr
