"""LearnerConfig: documented, bounded, strict."""
from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from learner.config import LearnerConfig, LoraConfig


def _fields(model: type[BaseModel], prefix: str = ""):
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _fields(ann, f"{prefix}{name}.")
        yield f"{prefix}{name}", field


def test_every_field_is_documented_and_numbers_are_bounded():
    for key, field in _fields(LearnerConfig):
        assert field.description, key
        meta = {type(m).__name__ for m in field.metadata}
        if field.annotation in (int, float, int | None, float | None):
            assert {"Ge", "Gt"} & meta and {"Le", "Lt"} & meta, f"{key} is not bounded"


def test_defaults_and_strictness():
    cfg = LearnerConfig()
    assert cfg.lora.enabled and cfg.lora.target_modules == ["q_proj", "v_proj"] and cfg.lora.r == 8
    assert cfg.loss_agg == "token-mean" and cfg.updates_per_batch == 1
    assert (cfg.clip_low, cfg.clip_high, cfg.kl_beta) == (0.2, 0.28, 0.02)
    with pytest.raises(ValidationError):
        LearnerConfig(zero_stage=4)
    with pytest.raises(ValidationError):
        LearnerConfig(loss_agg="sum")
    with pytest.raises(ValidationError):
        LearnerConfig.model_validate({"lora": {"rank": 8}})
    with pytest.raises(ValidationError):
        LoraConfig(target_modules=[])
    with pytest.raises(ValidationError):
        LearnerConfig(micro_batch_size="8")    # strict: no string coercion
