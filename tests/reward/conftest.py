"""Fixture of the reward tests: a tiny COMET checkpoint (built once per session)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
COMET_PYTHON = REPO / ".venv-comet" / "bin" / "python"


@pytest.fixture(scope="session")
def tiny_comet_dir(tmp_path_factory) -> Path:
    """A tiny COMET checkpoint directory built by comet's own classes in ``.venv-comet``."""
    if not COMET_PYTHON.is_file():
        pytest.fail(f"{COMET_PYTHON} missing: `make setup` builds the COMET environment")
    out = tmp_path_factory.mktemp("tiny-comet")
    proc = subprocess.run([str(COMET_PYTHON), str(REPO / "tests" / "reward" / "tiny_comet.py"), str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "checkpoints" / "model.ckpt").is_file() and (out / "hparams.yaml").is_file()
    return out
