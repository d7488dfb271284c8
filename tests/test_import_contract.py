"""The import contract of pyproject.toml ([tool.importlinter]): rollout, reward and learner never
import each other or orchestration; and no import circle inside orchestration/ (function-local
imports included). Each checked on the tree as it is, and shown to catch a breach."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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


# --- no import circles inside orchestration/ ---------------------------------------------------

# Lazy (function-local) imports that may close a circle: none. A new entry needs a reason here.
ALLOWED_LAZY_EDGES: set[tuple[str, str]] = set()


def import_graph(root: Path, package: str) -> dict[str, dict[str, bool]]:
    """module -> {imported module of the same package: True if every such import of it sits inside
    a function (a lazy import)}. Every ``import`` and ``from ... import`` counts, at any depth,
    relative ones resolved, and ``from pkg import sub`` names the submodule ``pkg.sub``."""
    modules: dict[str, Path] = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, dict[str, bool]] = {m: {} for m in modules}
    for name, path in modules.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]

        def visit(node: ast.AST, in_function: bool) -> None:
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    prefix = here[:len(here) - node.level + 1]
                    base = ".".join(prefix + ([node.module] if node.module else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                while target and target not in modules:     # a.b.c (a name in a.b) -> a.b
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name][target] = graph[name].get(target, True) and in_function
            local = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            for child in ast.iter_child_nodes(node):
                visit(child, local)

        visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return graph


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle (a -> b -> ... -> a) of the graph, or None."""
    state: dict[str, int] = {}          # 1 = on the current path, 2 = done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := walk(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (found := walk(start)):
            return found
    return None


def orchestration_cycle(root: Path) -> list[str] | None:
    graph = import_graph(root, "orchestration")
    for src, dst in ALLOWED_LAZY_EDGES:
        assert graph.get(src, {}).get(dst, True), f"{src} -> {dst} is allowed only as a function-local import"
    edges = {m: {d for d in deps if (m, d) not in ALLOWED_LAZY_EDGES} for m, deps in graph.items()}
    return find_cycle(edges)


def test_orchestration_has_no_import_circle():
    cycle = orchestration_cycle(REPO)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_a_lazy_import_closing_a_circle_is_found(tmp_path):
    def fresh(name: str) -> Path:
        root = tmp_path / name
        shutil.copytree(REPO / "orchestration", root / "orchestration", ignore=shutil.ignore_patterns("__pycache__"))
        assert orchestration_cycle(root) is None
        return root

    # the circle this package once had: the rules raising the loader's error from inside a function
    root = fresh("lazy")
    rules = root / "orchestration" / "config_rules.py"
    rules.write_text(rules.read_text(encoding="utf-8") + "\n\ndef _late():\n"
                     "    from orchestration.config_loader import load_config\n    return load_config\n",
                     encoding="utf-8")
    cycle = orchestration_cycle(root)
    assert cycle is not None and cycle[0] == cycle[-1]
    assert set(cycle) == {"orchestration.config_loader", "orchestration.config_rules"}
    # a relative import at the top counts as well
    root = fresh("relative")
    (root / "orchestration" / "errors.py").write_text("from .data import Pair\n", encoding="utf-8")
    assert "orchestration.errors" in (orchestration_cycle(root) or [])
    # score's instance reader imported back by the module that imports it: refused
    root = fresh("eager")
    score = root / "orchestration" / "eval" / "score.py"
    score.write_text("import orchestration.eval.curve_run\n" + score.read_text(encoding="utf-8"), encoding="utf-8")
    assert set(orchestration_cycle(root) or []) >= {"orchestration.eval.score", "orchestration.eval.curve_run"}
