"""docs/configuration.md is the generated configuration reference (`launch.py show-config
--markdown`): up to date, holding every key of every command, and listing the rules between keys
as the code words them."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

import pytest
from pydantic import Field, ValidationError

import launch
from orchestration.config import RootConfig
from orchestration.config_reference import REGENERATE, _leaves, entry_models, reference, render_type, roots
from orchestration.config_rules import config_problems

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "configuration.md"


@pytest.fixture(scope="module")
def text() -> str:
    return reference()


def test_the_committed_reference_is_the_generated_one(text):
    assert DOC.read_text(encoding="utf-8") == text, f"docs/configuration.md is stale; regenerate it: {REGENERATE}"


def test_launch_prints_it_and_takes_no_config(text, capsys):
    assert launch.main(["show-config", "--markdown"]) == 0
    assert capsys.readouterr().out == text
    assert launch.main(["show-config", "--markdown", "--config", "configs/default.yaml"]) == 2
    assert "takes no --config" in capsys.readouterr().err


def test_every_key_of_every_root_has_its_row(text):
    rows = set(re.findall(r"^\| `([^`]+)` \|", text, re.M))
    for root in roots():
        cfg = root.schema.model_validate({})
        keys = set(_leaves(cfg))
        assert keys and keys <= rows, (root.name, sorted(keys - rows))
    from orchestration.eval.config import EvalConfig

    for model in entry_models(EvalConfig.model_fields["settings"].annotation):
        assert {f"eval.settings[].{name}" for name in model.model_fields} <= rows, model.__name__
    row = next(line for line in text.splitlines() if line.startswith("| `rollout.episode.layout` |"))
    assert "one of `pieces`, `continue`, `prefix`" in row and "| `prefix` |" in row
    row = next(line for line in text.splitlines() if line.startswith("| `run.seed` |"))
    assert "| integer | ≥ 0, ≤ 2147483647 | `0` |" in row
    # a command's own starting values are said where they differ from the section's
    assert "`run.name` = `eval` (table: `simulrl`)" in text
    assert "`learner.kl_beta` = `0.0` (table: `0.02`)" in text


def test_types_and_bounds_in_words():
    K = Annotated[int, Field(ge=1, le=9)]
    assert render_type(list[K], Field(min_length=2).metadata) == ("list of integer", ["at least 2 items", "each ≥ 1, ≤ 9"])
    assert render_type(Literal["a", "b"] | None) == ("one of `a`, `b` or null", [])
    assert render_type(str, Field(max_length=5, pattern="^x+$").metadata) == (
        "string", ["at most 5 characters", "matches `^x+$`"])
    assert render_type(float, Field(gt=0.0, lt=1.0).metadata) == ("number", ["> 0, < 1"])


def _templates(text: str) -> list[re.Pattern]:
    """The listed rule messages, each as a pattern (… = any value)."""
    lines = [m.group(1) for m in re.finditer(r"^  - (.+)$", text, re.M)]
    out = []
    for line in lines:
        plain = line.replace("\\<", "<").replace("\\*", "*")
        out.append(re.compile("^" + ".+?".join(re.escape(part) for part in plain.split("…")) + "$"))
    return out


def test_every_rule_message_a_bad_config_gets_is_listed(text):
    cfg = RootConfig.model_validate({
        "rollout": {"engine": {"tensor_parallel_size": 2, "max_model_len": 128},
                    "episode": {"max_new_tokens_final": 128}, "sampling": {"group_size": 1}},
        "learner": {"lora": {"enabled": False}, "num_ranks": 8},
        "reward": {"device": "cuda", "mode": "gated", "length_gate": [2.0, 1.0]},
        "train": {"sources_per_step": 1}})
    problems = config_problems(cfg)
    assert len(problems) >= 7
    templates = _templates(text)
    for problem in problems:
        assert any(t.match(problem) for t in templates), problem
    # a section's own validator too
    with pytest.raises(ValidationError) as err:
        RootConfig.model_validate({"train": {"fill_rounds": 1}})
    message = err.value.errors()[0]["msg"].removeprefix("Value error, ")
    assert any(t.match(message) for t in templates), message
    # and no template matches everything
    assert not any(t.match("nothing of the sort") for t in templates)
