"""The one rule for ``model.path``: a local directory must be a Hugging Face model directory;
anything that does not look like a path is taken as a hub id (resolved by transformers/vLLM)."""
from __future__ import annotations

from pathlib import Path

from orchestration.config_loader import REPO_ROOT, repo_path
from orchestration.errors import UserInputError

# the demo model directories and the command that prepares each (the Makefile's targets)
DEMO_MODEL_DIRS = {"models/qwen2.5-coder-0.5b-instruct": "`make setup`",
                   "models/qwen2.5-coder-1.5b-instruct": "`make demo-1.5b`"}


def model_to_load(value: str) -> str:
    """What the engines and learners load: the local directory as an absolute path, else the hub id."""
    local = repo_path(value)
    return str(local) if local.exists() else value


def check_model_path(value: str, key: str = "model.path") -> None:
    """UserInputError naming ``key`` when ``value`` is a local path that is not a model directory."""
    local = repo_path(value)
    if local.exists():
        if not (local / "config.json").is_file():
            raise UserInputError(f"{key}={value}: {local} has no config.json; "
                                 "point it at a Hugging Face model directory")
        return
    if Path(value).expanduser().is_absolute() or value.startswith((".", "models/")):
        try:
            rel = local.resolve().relative_to(REPO_ROOT).as_posix()
        except ValueError:
            rel = None
        how = (f"{DEMO_MODEL_DIRS[rel]} prepares it" if rel in DEMO_MODEL_DIRS
               else "`make setup` prepares the CPU demo model in models/")
        raise UserInputError(f"{key}={value}: {local} does not exist; {how}, or pass a Hugging Face id "
                             "or another directory")
