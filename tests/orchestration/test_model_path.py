"""model.path: a local path must be a model directory, and a missing demo directory names the
command that prepares it; train, sft and eval refuse it before any actor starts (exit 2)."""
from __future__ import annotations

from pathlib import Path

import pytest

import launch
from orchestration.errors import UserInputError
from orchestration.model_path import DEMO_MODEL_DIRS, check_model_path

REPO = Path(__file__).resolve().parents[2]


def test_a_missing_demo_directory_names_its_make_target(monkeypatch, tmp_path):
    import orchestration.config_loader as cl
    import orchestration.model_path as mp

    for module in (cl, mp):                              # a checkout where no model is prepared yet
        monkeypatch.setattr(module, "REPO_ROOT", tmp_path)
    with pytest.raises(UserInputError, match=r"model.path=models/qwen2.5-coder-1.5b-instruct: .* `make demo-1.5b`"):
        check_model_path("models/qwen2.5-coder-1.5b-instruct")
    with pytest.raises(UserInputError, match=r"`make setup` prepares it"):
        check_model_path("models/qwen2.5-coder-0.5b-instruct")
    with pytest.raises(UserInputError, match=r"models/other: .*`make setup` prepares the CPU demo model"):
        check_model_path("models/other")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match="has no config.json"):
        check_model_path(str(tmp_path / "empty"))
    check_model_path("Qwen/Qwen2.5-7B-Instruct")          # a hub id passes
    # the directories the Makefile builds are the ones named here
    make = (REPO / "Makefile").read_text().splitlines()
    built = sorted(line.split(":=")[1].strip() for line in make if line.startswith("DEMO_MODEL"))
    assert built == sorted(DEMO_MODEL_DIRS) and len(built) == 2


@pytest.mark.parametrize("command", ["train", "sft", "eval"])
def test_every_command_refuses_a_missing_model_directory(command, tmp_path, capsys):
    assert launch.main([command, f"model.path={tmp_path}/nope", f"run.dir={tmp_path}/run"]) == 2
    err = capsys.readouterr().err
    assert f"model.path={tmp_path}/nope" in err and "does not exist" in err
    assert not (tmp_path / "run").exists()                # nothing half-written
