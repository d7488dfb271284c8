"""Config loading: typed sections, key-naming errors, overrides, run directories."""
from __future__ import annotations

import subprocess
import sys
import types
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from orchestration.config import RootConfig
from orchestration.config_loader import (
    ConfigError, load_config, parse_override, resolve_run_dir, write_resolved_config)

REPO = Path(__file__).resolve().parents[2]


def _sections(model: type[BaseModel], prefix: str = ""):
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _sections(ann, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", field


def _base_types(ann) -> set:
    if isinstance(ann, (types.UnionType,)) or typing.get_origin(ann) is typing.Union:
        return {t for a in typing.get_args(ann) for t in _base_types(a)}
    origin = typing.get_origin(ann)
    return {origin or ann}


def test_every_field_is_documented_and_bounded():
    for key, field in _sections(RootConfig):
        assert field.description, f"{key} has no description"
        kinds = _base_types(field.annotation)
        meta = {type(m).__name__ for m in field.metadata}
        if kinds & {int, float} and bool not in kinds:
            assert {"Ge", "Gt"} & meta and {"Le", "Lt"} & meta, f"{key} is not bounded"
        if str in kinds:
            assert "MaxLen" in meta or any(hasattr(m, "max_length") for m in field.metadata), \
                f"{key} has no length bound"


def test_defaults_validate_and_file_overrides_apply(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("run:\n  seed: 5\nrollout:\n  episode:\n    chunk_size: 4\n")
    cfg = load_config(cfg_file, ["run.seed=7", "reward.latency_metric=laal"])
    assert cfg.run.seed == 7
    assert cfg.rollout.episode.chunk_size == 4
    assert cfg.reward.latency_metric == "laal"


def test_shipped_default_config_loads():
    cfg = load_config(REPO / "configs" / "default.yaml")
    assert cfg.run.name == "default"


@pytest.mark.parametrize("override, needle", [
    ("rollout.episode.chunk_sise=3", "rollout.episode.chunk_sise: unknown key (did you mean rollout.episode.chunk_size?)"),
    ("rollout.episode.chunk_size=0", "rollout.episode.chunk_size: Input should be greater than or equal to 1"),
    ("rollout.episode.chunk_size=three", "rollout.episode.chunk_size: Input should be a valid integer"),
    ("reward.latency_metric=xx", "reward.latency_metric: Input should be 'al' or 'laal'"),
    ("nosuch.key=1", "nosuch: unknown key"),
])
def test_bad_values_name_the_dotted_key(override, needle):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert needle in str(err.value)


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    cfg_file = tmp_path / "bad.yaml"
    cfg_file.write_text("data:\n  trian: x\n")
    with pytest.raises(ConfigError) as err:
        load_config(cfg_file)
    assert str(cfg_file) in str(err.value) and "data.trian: unknown key" in str(err.value)


def test_invalid_yaml_names_the_line(tmp_path):
    cfg_file = tmp_path / "broken.yaml"
    cfg_file.write_text("run:\n  seed: 1\n  name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken.yaml line \d+: invalid YAML"):
        load_config(cfg_file)


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(tmp_path / "list.yaml")


def test_base_file_is_merged_and_cycles_are_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("run:\n  seed: 3\n  name: a\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nrun:\n  name: b\n")
    cfg = load_config(tmp_path / "b.yaml")
    assert (cfg.run.seed, cfg.run.name) == (3, "b")
    (tmp_path / "c.yaml").write_text("base: c.yaml\n")
    with pytest.raises(ConfigError, match="nested 'base:'"):
        load_config(tmp_path / "c.yaml")


def test_override_parsing():
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("a=true") == (["a"], True)
    assert parse_override("a=[1, 2]") == (["a"], [1, 2])
    assert parse_override("a=null") == (["a"], None)
    assert parse_override("a=runs/x y") == (["a"], "runs/x y")
    assert parse_override("a=3e-3") == (["a"], 0.003)          # YAML 1.2 floats, not strings
    assert parse_override("a=[1E5, e5]") == (["a"], [100000.0, "e5"])
    assert load_config(None, ["learner.lr=2e-4"]).learner.lr == 2e-4
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        parse_override("novalue")
    with pytest.raises(ConfigError, match="run.seed"):
        load_config(None, ["run.seed.x=1"])


def test_run_dir_default_and_explicit(tmp_path):
    cfg = load_config(None, ["run.name=exp1"])
    run_dir = resolve_run_dir(cfg)
    assert run_dir.parent == REPO / "runs" and run_dir.name.startswith("exp1-")
    cfg = load_config(None, [f"run.dir={tmp_path / 'out'}"])
    assert resolve_run_dir(cfg) == tmp_path / "out"
    written = write_resolved_config(cfg, tmp_path / "out")
    assert load_config(written).run.dir == str(tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["config.yaml"]


def _launch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "launch.py", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_cli_misspelt_key_exits_2_naming_it():
    proc = _launch("show-config", "--config", "configs/default.yaml", "data.tset=x")
    assert proc.returncode == 2
    assert "data.tset: unknown key (did you mean data.test?)" in proc.stderr
    assert proc.stdout == ""


def test_cli_show_config_validates_without_heavy_imports():
    code = ("import sys, launch; rc = launch.main(['show-config', 'run.seed=9']);"
            "heavy = [m for m in ('torch', 'vllm', 'ray', 'deepspeed', 'transformers') if m in sys.modules];"
            "print('HEAVY', heavy); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "seed: 9" in proc.stdout
    assert "HEAVY []" in proc.stdout


def test_dtype_auto_follows_the_machine(tmp_path, monkeypatch):
    from orchestration import runtime

    avx2 = tmp_path / "avx2"
    avx2.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    bf16 = tmp_path / "bf16"
    bf16.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert not runtime.cpu_has_native_bf16(str(avx2))
    assert runtime.cpu_has_native_bf16(str(bf16))
    assert not runtime.cpu_has_native_bf16(str(tmp_path / "missing"))

    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    cfg = load_config(None, ["model.dtype=auto", "learner.dtype=auto"])
    assert (cfg.model.dtype, cfg.learner.dtype) == ("float32", "float32")
    cfg = load_config(None, ["learner.num_gpus_per_rank=1", "rollout.num_gpus_per_worker=1"])
    assert (cfg.model.dtype, cfg.learner.dtype) == ("bfloat16", "bfloat16")
    cfg = load_config(None, ["model.dtype=float16", "learner.dtype=bfloat16"])   # explicit wins
    assert (cfg.model.dtype, cfg.learner.dtype) == ("float16", "bfloat16")
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    assert load_config(None).model.dtype == "bfloat16"


def test_address_option_sets_ray_address(capsys):
    import launch

    assert launch.main(["show-config", "--address", "127.0.0.1:6379", "run.seed=3"]) == 0
    out = capsys.readouterr().out
    assert "address: 127.0.0.1:6379" in out and "seed: 3" in out
