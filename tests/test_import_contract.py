"""The import contract of pyproject.toml ([tool.importlinter]): rollout, reward and learner never
import each other or orchestration. Checked on the tree as it is, and shown to catch a breach."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT = str(Path(sys.executable).with_name("lint-imports"))
PACKAGES = ("rollout", "reward", "learner", "orchestration")


def lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([LINT, "--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=120)


def test_the_components_keep_the_contract():
    out = lint(REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 kept, 0 broken" in out.stdout


def test_a_component_importing_another_breaks_it(tmp_path):
    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    # a lazy import inside a function counts too
    (tmp_path / "rollout" / "breach.py").write_text("def f():\n    from reward.types import Unit\n    return Unit\n")
    out = lint(tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "rollout, reward and learner never import each other BROKEN" in out.stdout
    assert "rollout.breach -> reward.types" in out.stdout
