"""The configuration reference (docs/configuration.md), generated from the typed configs.

``launch.py show-config --markdown`` prints it. Every key of every command's root config is read
from its pydantic model: dotted name, type, bounds (the field's constraints), default and the
field's one-line description, one table per section. The rules between keys are read from the
code that enforces them: the messages of each model validator (``raise ValueError(...)``) and of
each rule in :mod:`orchestration.config_rules` (``out.append(...)``), with ``…`` where a message
shows the value it found. Nothing here imports torch, vLLM or Ray.
"""
from __future__ import annotations

import ast
import inspect
import json
import textwrap
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from orchestration import config_rules

REGENERATE = ".venv/bin/python launch.py show-config --markdown > docs/configuration.md"
LONG_DEFAULT = 60        # characters of a default shown before it is cut with "…"


@dataclass
class Root:
    """One command's root config."""

    name: str                   # the heading: launch.py train, ...
    commands: str               # every command that reads it
    schema: type[BaseModel]


def roots() -> list[Root]:
    from orchestration.config import RootConfig
    from orchestration.eval.config import EvalRootConfig
    from orchestration.training.pipeline_config import PipelineRootConfig
    from orchestration.training.sft_config import SftRootConfig

    return [
        Root("train", "`launch.py train`, every run of `launch.py sweep`, `launch.py bench rollout|reward|metrics|"
                      "sync|train|scaling`, `launch.py show-config`, `launch.py datasets`", RootConfig),
        Root("pipeline", "`launch.py pipeline` (what `make run` runs)", PipelineRootConfig),
        Root("sft", "`launch.py sft`, `launch.py bench sft`", SftRootConfig),
        Root("eval", "`launch.py eval`", EvalRootConfig),
    ]


# --- types and bounds -------------------------------------------------------------------------

_PRIMITIVE = {bool: "boolean", int: "integer", float: "number", str: "string"}


def _num(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


def _constraints(metadata: list[Any], what: str) -> list[str]:
    """Bounds of one value: ``what`` is "length" (strings), "items" (lists) or "" (numbers)."""
    def bound(name: str) -> Any:     # annotated_types' Ge(ge=...), MinLen(min_length=...), ...
        return next((getattr(m, name) for m in metadata if getattr(m, name, None) is not None), None)

    out = []
    lo = f"≥ {_num(bound('ge'))}" if bound("ge") is not None else (
        f"> {_num(bound('gt'))}" if bound("gt") is not None else None)
    hi = f"≤ {_num(bound('le'))}" if bound("le") is not None else (
        f"< {_num(bound('lt'))}" if bound("lt") is not None else None)
    if lo or hi:
        out.append(", ".join(x for x in (lo, hi) if x))
    n_min, n_max = bound("min_length"), bound("max_length")
    if n_min is not None or n_max is not None:
        unit = "item" if what == "items" else "character"
        if n_min is not None and n_max is not None:
            out.append(f"{n_min} {unit}{'s' * (n_max != 1)}" if n_min == n_max else f"{n_min}–{n_max} {unit}s")
        elif n_min is not None:
            out.append(f"at least {n_min} {unit}{'s' * (n_min != 1)}")
        else:
            out.append(f"at most {n_max} {unit}s")
    pattern = bound("pattern")
    if pattern:
        out.append(f"matches `{pattern}`")
    return out


def _unwrap(tp: Any, metadata: list[Any]) -> tuple[Any, list[Any]]:
    """``Annotated[T, Field(...)]`` -> (T, its constraints added to ``metadata``)."""
    meta = list(metadata)
    while typing.get_origin(tp) is typing.Annotated:
        tp, *extra = typing.get_args(tp)
        for e in extra:
            meta += e.metadata if isinstance(e, FieldInfo) else [e]
    return tp, meta


def entry_models(tp: Any) -> list[type[BaseModel]]:
    """The models of a list of entries chosen by ``type:`` (``eval.settings``), else []."""
    tp, _ = _unwrap(tp, [])
    if typing.get_origin(tp) is list:
        inner, _ = _unwrap(typing.get_args(tp)[0], [])
        if typing.get_origin(inner) in (Union, types.UnionType):
            members = [_unwrap(a, [])[0] for a in typing.get_args(inner)]
            if all(isinstance(m, type) and issubclass(m, BaseModel) for m in members):
                return members
    return []


def render_type(tp: Any, metadata: list[Any] = ()) -> tuple[str, list[str]]:
    """(type in words, its bounds) of an annotation and the field's own constraints."""
    tp, meta = _unwrap(tp, list(metadata))
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        parts = [render_type(a) for a in args if a is not type(None)]
        names = [p[0] for p in parts] + (["null"] if type(None) in args else [])
        bounds: list[str] = _constraints(meta, "")
        for name, b in parts:
            bounds += [x if len(parts) == 1 else f"{name}: {x}" for x in b if x not in bounds]
        return " or ".join(names), bounds
    if origin is Literal:
        return "one of " + ", ".join(f"`{v}`" for v in typing.get_args(tp)), []
    if origin is list:
        models = entry_models(tp)
        if models:
            tags = [m.model_fields["type"].annotation for m in models]
            return ("list of entries chosen by `type`: " + ", ".join(f"`{typing.get_args(t)[0]}`" for t in tags),
                    _constraints(meta, "items"))
        inner, inner_bounds = render_type(typing.get_args(tp)[0])
        return f"list of {inner}", _constraints(meta, "items") + [
            f"their items {b[5:]}" if b.startswith("each ") else f"each {b}" for b in inner_bounds]
    if origin is dict:
        (k, kb), (v, vb) = (render_type(a) for a in typing.get_args(tp))
        return f"mapping of {k} to {v}", [f"keys: {b}" for b in kb] + [f"values: {b}" for b in vb]
    if tp in _PRIMITIVE:
        return _PRIMITIVE[tp], _constraints(meta, "length" if tp is str else "")
    if tp is Any:
        return "any value", []
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return "entry (below)", _constraints(meta, "")
    return getattr(tp, "__name__", str(tp)), _constraints(meta, "")


# --- defaults ---------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_defaults=True) | (
            {"type": value.type} if "type" in type(value).model_fields else {})
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def render_value(value: Any) -> str:
    value = _plain(value)
    if isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, ensure_ascii=False)
    if len(text) > LONG_DEFAULT:
        text = text[:LONG_DEFAULT - 1].rstrip() + "…"
    return f"`{text}`" if text else '`""`'


def field_default(info: FieldInfo) -> str:
    return "required" if info.is_required() else render_value(info.get_default(call_default_factory=True))


# --- sections ---------------------------------------------------------------------------------


def section_type(info: FieldInfo) -> type[BaseModel] | None:
    tp, _ = _unwrap(info.annotation, [])
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


@dataclass
class Section:
    path: str                         # dotted prefix of its keys ("" for a root's own keys)
    model: type[BaseModel]
    roots: list[str] = field(default_factory=list)


def walk(model: type[BaseModel], path: str, out: dict[tuple[str, type], Section], root: str) -> None:
    """Every section below ``model`` (itself first), keyed by (path, model)."""
    sec = out.setdefault((path, model), Section(path, model))
    if root not in sec.roots:
        sec.roots.append(root)
    for name, info in model.model_fields.items():
        sub = section_type(info)
        if sub is not None:
            walk(sub, f"{path}.{name}" if path else name, out, root)
        for entry in entry_models(info.annotation):
            tag = typing.get_args(entry.model_fields["type"].annotation)[0]
            walk(entry, f"{path}.{name}[type={tag}]", out, root)


def _md(text: str) -> str:
    """Markdown text: ``*`` and ``<`` outside code spans are shown as themselves."""
    parts = str(text).split("`")
    return "`".join(p if i % 2 else p.replace("*", "\\*").replace("<", "\\<") for i, p in enumerate(parts))


def _cell(text: str) -> str:
    """One table cell: one line, ``|`` escaped (inside code spans too, as tables need)."""
    return " ".join(str(text).split()).replace("|", "\\|")


def first_paragraph(doc: str | None) -> str:
    text = inspect.cleandoc(doc or "")
    return " ".join(text.split("\n\n")[0].split())


def section_table(sec: Section) -> list[str]:
    rows = ["| key | type | bounds | default | description |", "|---|---|---|---|---|"]
    for name, info in sec.model.model_fields.items():
        if section_type(info) is not None:
            continue
        key = f"{sec.path}.{name}" if sec.path else name
        if "[type=" in key:
            head, _, rest = key.rpartition("]")
            key = f"{head.split('[')[0]}[].{rest.lstrip('.')}"
        tp, bounds = render_type(info.annotation, info.metadata)
        rows.append("| " + " | ".join(_cell(c) for c in (
            f"`{key}`", tp, "; ".join(bounds) or "–", field_default(info), _md(info.description or ""))) + " |")
    return rows


def _leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value of every leaf of a config instance (sections recursed)."""
    out: dict[str, Any] = {}
    for name in type(value).model_fields:
        v = getattr(value, name)
        key = f"{prefix}{name}"
        if isinstance(v, BaseModel) and not entry_models(type(value).model_fields[name].annotation):
            out |= _leaves(v, key + ".")
        else:
            out[key] = v
    return out


def section_defaults(model: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    """Leaf defaults of a root as its section tables give them (each section's own defaults)."""
    out: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        sub = section_type(info)
        if sub is not None:
            out |= section_defaults(sub, key + ".")
        elif not info.is_required():
            out[key] = info.get_default(call_default_factory=True)
    return out


def root_differences(schema: type[BaseModel]) -> list[tuple[str, Any, Any]]:
    """(key, section table's default, this command's value) where a command starts elsewhere:
    a root's own default for a section (``run.name`` of eval) or a validator's choice."""
    table = section_defaults(schema)
    actual = _leaves(schema.model_validate({}))
    return [(k, table[k], v) for k, v in actual.items() if k in table and _plain(v) != _plain(table[k])]


# --- rules ------------------------------------------------------------------------------------


def _text(node: ast.AST) -> str:
    """A message expression as text, with ``…`` for every value it interpolates."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(_text(v) if isinstance(v, ast.Constant) else "…" for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _text(node.left) + _text(node.right)
    return "…"


def messages(func: Any) -> list[str]:
    """The messages ``func`` can raise (``raise X("...")``) or return (``out.append("...")``)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    found = []
    for node in ast.walk(tree):
        call = None
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            call = node.exc
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "append"
              and isinstance(node.func.value, ast.Name) and node.func.value.id == "out"):
            call = node
        if call is not None and call.args:
            found.append((node.lineno, _text(call.args[0])))
    return [text for _, text in sorted(found)]


def validators(model: type[BaseModel]) -> list[Any]:
    decorators = model.__pydantic_decorators__
    return [d.func for d in (*decorators.model_validators.values(), *decorators.field_validators.values())]


def rules_section(sections: dict[tuple[str, type], Section], all_roots: list[Root]) -> list[str]:
    out = ["## Rules between keys", "",
           "Checked when a config loads, before anything starts; every problem is reported together, each "
           "naming its keys, and the command ends with exit status 2. `…` stands for the value the message "
           "shows.", "",
           "### Checked with their section", ""]
    for sec in sections.values():
        funcs = validators(sec.model)
        if not funcs:
            continue
        if not sec.path:
            where = f"the {', '.join(sec.roots)} root"
        elif "[type=" in sec.path:
            head, _, tag = sec.path.partition("[type=")
            where = f"`{head}[]` entries with type: {tag.rstrip(']')}"
        else:
            where = f"`{sec.path}`"
        out.append(f"- {where} ({sec.model.__name__})")
        out += [f"  - {_md(m)}" for func in funcs for m in messages(func)]
    out += ["", "### Between sections (`orchestration/config_rules.py`)", ""]
    for rule in config_rules.RULE_SECTIONS:
        applies = [r.name for r in all_roots if rule in config_rules.rules_for(r.schema.model_fields)]
        out.append(f"- **{rule.__name__}** ({', '.join(applies)}): {_md(first_paragraph(rule.__doc__))}")
        out += [f"  - {_md(m)}" for m in messages(rule)]
    out += ["", "The GRPO rules of `shape_rules` and `weight_sync_rules` (group size, batch against ranks, a "
            "merged sync without LoRA) apply to the roots that train GRPO (train and pipeline), not to sft. "
            "The placement plan is checked against the cluster's resources when the command starts "
            "(`orchestration/placement.py`), one message per resource.", ""]
    return out


# --- the page ---------------------------------------------------------------------------------


def reference() -> str:
    from orchestration.training.sweep import SweepConfig

    all_roots = roots()
    sections: dict[tuple[str, type], Section] = {}
    for r in all_roots:
        walk(r.schema, "", sections, r.name)
    out = ["# Configuration reference", "",
           f"<!-- generated by `launch.py show-config --markdown`; regenerate with `{REGENERATE}` -->", "",
           "Every key of every command, read from the typed configs: its type, bounds, default (with no config "
           "file) and description, one table per section, then the rules between keys. A YAML file in "
           "`configs/` sets any of them (a file may start with `base: other.yaml` to change only some keys of "
           "another); `key=value` on the command line overrides one (`rollout.episode.chunk_size=4`); an unknown "
           "key, a wrong type or a value out of bounds ends the command with exit status 2 and a message naming "
           "the dotted key. `launch.py show-config --config FILE [key=value ...]` prints the resolved training "
           "config of a file. Shipped files set many keys away from these defaults: `configs/default.yaml` is "
           "the main job's.", "",
           f"This page is generated: `{REGENERATE}` writes it again, and a test fails when it is stale.", "",
           "## Commands and their root configs", "",
           "| root | read by | sections |", "|---|---|---|"]
    for r in all_roots:
        subs = [n for n, i in r.schema.model_fields.items() if section_type(i) is not None]
        out.append(f"| {r.name} (`{r.schema.__name__}`) | {_cell(r.commands)} | "
                   + ", ".join(f"`{s}`" for s in subs) + " |")
    out.append("")
    for r in all_roots:
        notes = []
        other = getattr(r.schema, "OTHER_STAGES", ())
        if other:
            notes.append("drops the sections of the pipeline's other stages from a file it reads ("
                         + ", ".join(f"`{s}`" for s in other) + "); setting one of their keys on the command line "
                                                                 "is an error")
        for name, why in getattr(r.schema, "UNUSED_SECTIONS", {}).items():
            notes.append(f"ignores a `{name}` section inherited through `base:` ({why}); setting one of its keys "
                         "in the file itself or on the command line is an error")
        diffs = root_differences(r.schema)
        if diffs:
            notes.append("starts from other values than the section tables give: " + "; ".join(
                f"`{k}` = {render_value(v)} (table: {render_value(t)})" for k, t, v in diffs))
        if notes:
            out.append(f"- **{r.name}** " + "; it ".join(notes) + ".")
    out.append("")
    out.append("## Sections")
    for sec in sections.values():
        if not sec.path:
            continue
        title = sec.path.replace("[type=", " entries with type: ").replace("]", "")
        out += ["", f"### {title}", "",
                f"{_md(first_paragraph(sec.model.__doc__))} Used by: {', '.join(sec.roots)}.", ""]
        out += section_table(sec)
    out += ["", "## Sweep files (`launch.py sweep --config FILE`)", "",
            _md(first_paragraph(SweepConfig.__doc__)) + " The keys of the file:", ""]
    sweep: dict[tuple[str, type], Section] = {}
    walk(SweepConfig, "", sweep, "sweep")
    from orchestration.training.sweep import SweepRun

    out += section_table(Section("", SweepConfig)) + ["", "Each entry of `runs`:", ""]
    out += section_table(Section("runs[]", SweepRun)) + [""]
    out += rules_section(sections, all_roots)
    return "\n".join(line.rstrip() for line in out).rstrip() + "\n"
