"""Typed configuration of ``launch.py sft`` (the SFT warm start, DESIGN §2.5).

The root of an SFT config is the training root (model, data, rollout episode layout,
learner, Ray) plus an ``sft`` section; ``rollout.episode`` fixes the layout and chunk size,
so SFT episodes are those the rollout will build.
"""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from orchestration.config import RootConfig, _Section


class SftConfig(_Section):
    """Segmentation rule, passes and evaluation of the SFT stage."""

    lag_k: int = Field(3, ge=0, le=1000,
                       description="segmentation lag k in source units: after t·m units write ⌊|ref|·(t·m−k)/|src|⌋")
    layout: Literal["interleaved", "simulmask"] = Field(
        "interleaved", description="interleaved: the rollout's chunk episodes; simulmask: the prefix layout, one "
                                   "pass per pair with SimulMask masks and ExPosST positions (wait-k/LSG inference)")
    source_slots: int = Field(256, ge=1, le=100_000,
                              description="simulmask: source positions reserved (ExPosST); longer sources are skipped")
    enabled: bool = Field(True, description="launch.py pipeline: run this SFT stage before GRPO (false: GRPO "
                                            "starts from model.path)")
    pairs: int | None = Field(None, ge=1, le=10_000_000,
                              description="training pairs after the length filter; null = data.limit (all when unset)")
    lr: float | None = Field(None, gt=0.0, le=1.0, description="learning rate of this stage; null = learner.lr")
    epochs: int = Field(1, ge=1, le=1000, description="passes over the training pairs (one sequence per pair)")
    batch_size: int = Field(16, ge=1, le=100_000, description="sentences per optimizer step (global, all ranks)")
    min_source_units: int = Field(1, ge=1, le=100_000, description="skip training pairs with a shorter source")
    max_source_units: int = Field(60, ge=1, le=100_000, description="skip training pairs with a longer source")
    dev_size: int = Field(16, ge=1, le=100_000, description="first pairs of data.dev for dev loss and evaluation")
    eval_rollouts: bool | None = Field(
        None, description="greedy interleaved rollouts on dev (train's dev evaluation) before training and after "
                          "each epoch; null = on for layout interleaved, off for simulmask (another layout)")
    tensorboard: bool = Field(True, description="also write TensorBoard event files")
    export_model: bool = Field(
        True, description="write RUN_DIR/model, a plain HF directory (LoRA merged) that `train` starts from")


class SftRootConfig(RootConfig):
    """Everything ``launch.py sft`` and ``launch.py bench sft`` need.

    An SFT config is usually based on the training config it warm-starts (one episode layout),
    so it inherits a ``train`` section: that section is ignored, and setting one of its keys in
    the SFT config itself is an error. ``reward`` scores the dev evaluation (quality, λ)."""

    OTHER_STAGES: ClassVar[tuple[str, ...]] = ("scoreboard",)
    UNUSED_SECTIONS: ClassVar[dict[str, str]] = {
        "train": "sft trains for sft.epochs over the pairs; its dev set is sft.dev_size"}

    sft: SftConfig = Field(default_factory=SftConfig, description="SFT warm start")

    @model_validator(mode="after")
    def _dev_rollouts_in_the_trained_layout(self) -> "SftRootConfig":
        # the dev rollouts run the interleaved chunk layout: they say nothing of a prefix-layout model
        if self.sft.eval_rollouts is None:
            self.sft.eval_rollouts = self.sft.layout == "interleaved"
        elif self.sft.eval_rollouts and self.sft.layout == "simulmask":
            raise ValueError("sft.eval_rollouts=true: the dev rollouts use the interleaved layout, not "
                             "sft.layout=simulmask; evaluate the exported model with `launch.py eval` "
                             "(waitk with positions: expost) instead")
        return self

    @model_validator(mode="after")
    def _no_kl_term(self) -> "SftRootConfig":
        # SFT trains on reference translations: there is no sampled policy to keep near a reference.
        # Unset, kl_beta is 0 here; set (here or in a base training config) to anything else, an error.
        if "kl_beta" not in self.learner.model_fields_set:
            self.learner.kl_beta = 0.0
        elif self.learner.kl_beta != 0.0:
            raise ValueError(f"learner.kl_beta={self.learner.kl_beta:g}: SFT has no KL term; "
                             "set learner.kl_beta: 0 in the SFT config")
        return self
