"""The documentation points at things that exist: every relative link and every repository path
named in README.md and docs/*.md, and docs/layout.md lists every Python file and config.

What counts as a repository path, in an inline code span or as a word of a fenced code block:

- a token with a "/" whose first segment is a top-level entry of the repository (``configs/``,
  ``orchestration/``, ``.ci/``, ``README.md`` ...), or whose last segment ends in a known
  extension (.py .yaml .yml .md .toml .txt .png .cfg .sh); ``key=value`` and ``--opt=value``
  tokens are judged by their value. It must exist, relative to the repository root; one with
  ``*`` is a glob that must match at least one file.
- not a path, and not checked: what runs create or machines hold (a first segment ``runs``,
  ``models``, ``.venv``, ``.venv-comet`` or ``build``; a token starting with ``/``, ``~``,
  ``../``, ``$`` or a URL scheme) and patterns (any segment that is an upper-case placeholder
  such as ``RUN_DIR``, ``FILE``, ``NAME`` or ``OUT``, or holds one of ``< > { } [ ] …``).

A relative link ``[text](target)`` must name an existing file or folder relative to the file it
is in, and a ``#fragment`` of a Markdown target must be one of its headings (GitHub's anchors).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
EXTENSIONS = (".py", ".yaml", ".yml", ".md", ".toml", ".txt", ".png", ".cfg", ".sh")
RUNTIME_ROOTS = {"runs", "models", ".venv", ".venv-comet", "build"}
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]+$")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?$(.*?)^```\s*$", re.M | re.S)
CODE_SPAN = re.compile(r"`([^`\n]+)`")


def _top_level(root: Path) -> set[str]:
    return {p.name for p in root.iterdir() if p.name not in {".git"}}


def path_candidate(token: str, top: set[str]) -> str | None:
    """The repository path a token names, or None (see the module docstring)."""
    token = token.strip().strip("\"'(),;:.")
    if "=" in token:
        token = token.rsplit("=", 1)[1].strip("\"'")
    if "/" not in token or token.startswith(("/", "~", "../", "$")) or "://" in token:
        return None
    parts = [p for p in token.split("/") if p]
    if not parts or parts[0] in RUNTIME_ROOTS:
        return None
    if any(PLACEHOLDER.match(p.split(".")[0]) or any(c in p for c in "<>{}[]…") for p in parts):
        return None
    if parts[0] in top or parts[-1].endswith(EXTENSIONS):
        return token
    return None


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(md: Path) -> set[str]:
    text = FENCE.sub("", md.read_text(encoding="utf-8"))
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} +(.+?)\s*$", text, re.M)}


def problems(md: Path, root: Path = REPO) -> list[str]:
    """Every broken link and every named path of ``md`` that does not exist."""
    text = md.read_text(encoding="utf-8")
    top, out = _top_level(root), []
    for target in LINK.findall(FENCE.sub("", text)):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        path, _, fragment = target.partition("#")
        dest = (md.parent / path).resolve()
        if not dest.exists():
            out.append(f"{md.name}: link {target}: {path} does not exist")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            out.append(f"{md.name}: link {target}: no heading #{fragment} in {path}")
    tokens = [t for block in FENCE.findall(text) for t in block.split()]
    tokens += CODE_SPAN.findall(FENCE.sub("", text))
    for token in tokens:
        for word in token.split():
            path = path_candidate(word, top)
            if path is None:
                continue
            found = list(root.glob(path)) if "*" in path else [root / path] if (root / path).exists() else []
            if not found:
                out.append(f"{md.name}: {path} does not exist")
    return out


@pytest.mark.parametrize("md", DOCS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_link_and_named_path_exists(md):
    assert problems(md) == []


def test_the_rules_catch_what_is_broken_and_spare_what_runs_create(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "a.yaml").write_text("x: 1\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "b.md").write_text("# B title\n\n## A `key` section\n")
    md = tmp_path / "README.md"
    md.write_text("\n".join([
        "[ok](docs/b.md) [ok](docs/b.md#a-key-section) [ok](#local) [ok](https://x.org/y.md)",
        "[gone](docs/c.md) [bad anchor](docs/b.md#nothing)",
        "`configs/a.yaml` `configs/*.yaml` `configs/missing.yaml` `configs/*.json` `other/x.py`",
        "`runs/x/y.yaml` `RUN_DIR/model` `configs/eval/FILE.yaml` `dev/<tag>/instances.jsonl` `../shared/data`",
        "```bash", "launch.py eval --config configs/gone.yaml run.dir=runs/x data.train=configs/a.yaml", "```"]))
    found = problems(md, tmp_path)
    assert sorted(found) == sorted([
        "README.md: link docs/c.md: docs/c.md does not exist",
        "README.md: link docs/b.md#nothing: no heading #nothing in docs/b.md",
        "README.md: configs/missing.yaml does not exist",
        "README.md: configs/*.json does not exist",
        "README.md: other/x.py does not exist",
        "README.md: configs/gone.yaml does not exist"])


def _listed() -> set[str]:
    text = (REPO / "docs" / "layout.md").read_text(encoding="utf-8")
    return {line.split()[0] for block in FENCE.findall(text) for line in block.splitlines() if line.strip()}


def test_the_layout_lists_every_python_file_and_config():
    listed = _listed()
    wanted = {p.relative_to(REPO).as_posix() for pkg in ("rollout", "reward", "learner", "orchestration", "tests")
              for p in (REPO / pkg).rglob("*.py") if "__pycache__" not in p.parts}
    wanted |= {p.relative_to(REPO).as_posix() for p in (REPO / "configs").rglob("*.yaml")}
    wanted |= {"launch.py", "Makefile", "pyproject.toml", "README.md", ".ci/run"}
    wanted |= {p.relative_to(REPO).as_posix() for p in (REPO / "requirements").glob("*.txt")}
    wanted |= {p.relative_to(REPO).as_posix() for p in (REPO / "docs").glob("*.md")}
    assert sorted(wanted - listed) == []
    assert sorted(p for p in listed if not (REPO / p).exists()) == []


def test_the_front_page_stays_short():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move detail into docs/"
    assert any(line.startswith("## Results") for line in lines)
