"""Load a root config from YAML plus ``key=value`` overrides, with errors that name the key.

Every failure raises :class:`ConfigError` whose message names the file and the dotted key;
``launch.py`` turns it into exit status 2. Nothing here imports torch, vLLM or Ray.
"""
from __future__ import annotations

import difflib
import os
import re
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from orchestration.config import RootConfig
from orchestration.config_rules import check_config
from orchestration.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
MAX_BASE_DEPTH = 8


def repo_path(value: str | Path) -> Path:
    """A path from a config or the command line: ``~`` expanded, relative ones from the repository
    root, so a config means the same from any working directory."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


def read_yaml(path: Path, depth: int = 0) -> dict[str, Any]:
    """Read one YAML mapping; a ``base:`` key names a file it is merged over."""
    if depth > MAX_BASE_DEPTH:
        raise ConfigError(f"{path}: too many nested 'base:' files (a cycle?)")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found; pass an existing YAML file to --config")
    try:
        data = _load_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, not {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: 'base' must be a path to another YAML file")
    return deep_merge(read_yaml((path.parent / base).resolve(), depth + 1), data)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; any other value in ``over`` replaces the one in ``base``."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


class _Loader(yaml.SafeLoader):
    """YAML 1.1 safe loading, but ``3e-3`` and ``1e5`` are floats (YAML 1.2), not strings."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=VALUE`` -> (["a","b","c"], VALUE parsed as a YAML scalar or list)."""
    key, sep, raw = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(p.strip() for p in parts):
        raise ConfigError(f"override {text!r}: expected dotted.key=value, e.g. run.seed=1")
    try:
        value = _load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return [p.strip() for p in parts], value


def apply_override(data: dict[str, Any], parts: list[str], value: Any) -> None:
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {'.'.join(parts)}: {'.'.join(parts[:i + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the section that ``loc`` (minus its last part) points into."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None) if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return list(model.model_fields)


def format_validation_error(err: ValidationError, source: str,
                            schema: type[BaseModel] = RootConfig) -> str:
    lines = []
    for item in err.errors():
        loc = tuple(str(p) for p in item["loc"])
        key = ".".join(loc) or "<root>"
        if item["type"] == "extra_forbidden":
            allowed = _allowed_keys(schema, loc)
            hint = difflib.get_close_matches(loc[-1], allowed, n=1)
            did = f" (did you mean {'.'.join(loc[:-1] + (hint[0],))}?)" if hint else ""
            lines.append(f"{source}: {key}: unknown key{did}; allowed here: {', '.join(allowed)}")
        else:
            got = item.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"{source}: {key}: {item['msg']}{shown}")
    return "\n".join(lines)


def load_config(path: str | os.PathLike | None, overrides: list[str] = (),
                schema: type[BaseModel] = RootConfig, format_error=None):
    """YAML file (optional) + overrides -> validated ``schema`` (:class:`RootConfig` by default;
    another root such as the eval command's may bring its own ``format_error(err, source)``)."""
    data: dict[str, Any] = read_yaml(Path(path)) if path is not None else {}
    parsed = [parse_override(text) for text in overrides]
    for parts, value in parsed:
        apply_override(data, parts, value)
    source = str(path) if path is not None else "defaults"
    if overrides:
        source += " + command-line overrides"
    _refuse_unused_sections(schema, path, [parts for parts, _ in parsed], source)
    _drop_other_stages(schema, data, [parts for parts, _ in parsed], source)
    try:
        cfg = schema.model_validate(data)
    except ValidationError as err:
        message = format_error(err, source) if format_error else format_validation_error(err, source, schema)
        raise ConfigError(message) from None
    check_config(cfg, source)   # all cross-field problems at once
    return resolve_dtypes(cfg)


def _refuse_unused_sections(schema: type[BaseModel], path, overrides: list[list[str]], source: str) -> None:
    """A schema's ``UNUSED_SECTIONS`` (section -> why the command ignores it) may come from a
    ``base:`` file shared with another command, but a key the user sets in the given file or on
    the command line is refused: it would change nothing."""
    unused: dict[str, str] = getattr(schema, "UNUSED_SECTIONS", {})
    if not unused:
        return
    own: dict[str, Any] = {}
    if path is not None:
        top = _load_yaml(Path(path).read_text(encoding="utf-8")) or {}
        own = top if isinstance(top, dict) else {}
    keys = [f"{name}.{key}" for name in unused if isinstance(own.get(name), dict) for key in own[name]]
    keys += [f"{name}" for name in unused if name in own and not isinstance(own.get(name), dict)]
    keys += [".".join(parts) for parts in overrides if parts[0] in unused]
    if keys:
        raise ConfigError("\n".join(f"{source}: {key}: not used by this command ({unused[key.split('.')[0]]}); "
                                     "remove it" for key in keys))


def _drop_other_stages(schema: type[BaseModel], data: dict[str, Any], overrides: list[list[str]],
                       source: str) -> None:
    """A schema's ``OTHER_STAGES`` are sections of a pipeline config (``launch.py pipeline``) that
    belong to its other stages: this command runs one stage of such a file and drops them, but
    an override of one is refused (it would change nothing here)."""
    other: tuple[str, ...] = getattr(schema, "OTHER_STAGES", ())
    keys = [".".join(parts) for parts in overrides if parts[0] in other]
    if keys:
        raise ConfigError("\n".join(f"{source}: {key}: not used by this command (it belongs to another stage "
                                     "of `launch.py pipeline`); remove it" for key in keys))
    for name in other:
        data.pop(name, None)


def resolve_dtypes(cfg):
    """Replace ``model.dtype`` / ``learner.dtype`` ``auto`` by this machine's choice: components
    never see ``auto``. A GPU counts when the section's Ray actors reserve one."""
    from orchestration.runtime import resolve_dtype

    rollout_gpu = getattr(getattr(cfg, "rollout", None), "num_gpus_per_worker", 0) > 0
    cfg.model.dtype = resolve_dtype(cfg.model.dtype, rollout_gpu)
    learner = getattr(cfg, "learner", None)
    if learner is not None:
        learner.dtype = resolve_dtype(learner.dtype, learner.num_gpus_per_rank > 0)
    return cfg


def resolve_run_dir(cfg: RootConfig) -> Path:
    """``run.dir`` or ``runs/<name>-<timestamp>``, made absolute; fills ``cfg.run.dir``."""
    if cfg.run.dir is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        cfg.run.dir = str(REPO_ROOT / "runs" / f"{cfg.run.name}-{stamp}")
    return Path(cfg.run.dir).resolve()


def dump_config(cfg: RootConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def write_resolved_config(cfg: RootConfig, run_dir: Path) -> Path:
    """Write ``config.yaml`` into the run directory atomically (temp file, then rename)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    target = run_dir / "config.yaml"
    tmp = target.with_suffix(".yaml.tmp")
    tmp.write_text(dump_config(cfg), encoding="utf-8")
    os.replace(tmp, target)
    return target
