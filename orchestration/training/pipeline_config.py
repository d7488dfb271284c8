"""Typed configuration of ``launch.py pipeline``: SFT warm start, then GRPO, then the dev scoreboard.

A pipeline config is a training config (every section ``train`` reads) plus ``sft`` (the warm
start, :class:`~orchestration.training.sft_config.SftConfig`) and ``scoreboard`` (the dev
set's distance to the base model's wait-k curve). ``launch.py train`` and ``launch.py sft`` read
the same file for their one stage and drop the sections of the others
(``RootConfig.OTHER_STAGES``), so ``configs/default.yaml`` is both the main job and a training
config a sweep can base its runs on.
"""
from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field, model_validator

from orchestration.config import RootConfig, _Section
from orchestration.training.sft_config import SftConfig, SftRootConfig

K = Annotated[int, Field(ge=1, le=1000)]


class ScoreboardConfig(_Section):
    """The last stage: the policies on the dev set against the base model's wait-k curve."""

    enabled: bool = Field(True, description="score the SFT and GRPO policies on the dev set against the wait-k curve")
    curve_k: list[K] = Field(default_factory=lambda: [1, 3, 5, 7, 9], min_length=2, max_length=100,
                             description="k of the base model's wait-k curve on the same dev sentences")
    curve_cache: str | None = Field("runs/curves", min_length=1, max_length=1000,
                                    description="where wait-k curve points are kept and reused (relative to the "
                                                "repository); null = decode them every time")
    replicates: int = Field(1000, ge=1, le=100_000, description="bootstrap resamples of the dev sentences")


class PipelineRootConfig(RootConfig):
    """Everything ``launch.py pipeline`` needs: the training root, ``sft`` and ``scoreboard``."""

    OTHER_STAGES: ClassVar[tuple[str, ...]] = ()

    sft: SftConfig = Field(default_factory=SftConfig, description="SFT warm start (stage 1)")
    scoreboard: ScoreboardConfig = Field(default_factory=ScoreboardConfig,
                                         description="dev scoreboard against the wait-k curve (stage 3)")

    @model_validator(mode="after")
    def _sft_layout_is_the_episode_layout(self) -> "PipelineRootConfig":
        # GRPO continues in the episode layout the SFT stage taught
        if self.sft.enabled and self.sft.layout != "interleaved":
            raise ValueError(f"sft.layout={self.sft.layout}: the pipeline's GRPO stage runs the episode layout; "
                             "use sft.layout=interleaved (train episodes) or launch.py sft for a prefix-layout model")
        if self.sft.enabled and self.model.init_from:
            raise ValueError(f"model.init_from={self.model.init_from} and sft.enabled: the SFT stage makes the "
                             "starting policy; set sft.enabled=false to start GRPO from model.init_from")
        return self

    def training(self) -> RootConfig:
        """The GRPO stage's config (the SFT model as its start when the SFT stage runs)."""
        data = self.model_dump(exclude={"sft", "scoreboard"})
        return RootConfig.model_validate(data)

    def sft_stage(self) -> SftRootConfig:
        """The SFT stage's config: no KL term, no dev rollouts (the GRPO stage's 'before'
        evaluation measures the SFT policy on the same dev sentences as its 'after')."""
        data = self.model_dump(exclude={"train", "scoreboard"})
        data["learner"]["kl_beta"] = 0.0
        data["sft"]["eval_rollouts"] = False
        return SftRootConfig.model_validate(data)
