"""Typed configuration of the reward component (DESIGN §2.2)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from reward.types import RewardSettings


class RewardConfig(BaseModel):
    """Quality and latency terms of the SeqPO reward, its ablations, and the service replicas."""

    model_config = ConfigDict(extra="forbid", strict=True)

    quality: Literal["chrf", "bleu", "comet"] = Field(
        "chrf", description="quality scorer: chrf or bleu (sacrebleu, sentence level) or comet "
                            "(needs comet_model)")
    comet_model: str | None = Field(
        None, min_length=1, max_length=1000,
        description="COMET checkpoint: a local directory with hparams.yaml and checkpoints/model.ckpt, "
                    "or a hub id such as Unbabel/wmt22-comet-da where a hub is reachable")
    comet_batch_size: int = Field(32, ge=1, le=4096, description="segments per COMET forward batch")
    device: Literal["cpu", "cuda"] = Field(
        "cpu", description="where COMET runs; cuda gives every replica one GPU")
    lam: float = Field(2.0, ge=0.0, le=100.0, description="λ: weight of z(quality) against z(latency)")
    truncate: Literal["raw", "normalized", "none"] = Field(
        "raw", description="latency truncation: raw = max(l, chunk size) before z-scoring, "
                           "normalized = max(z(l), truncate_c) after, none = no truncation (ablation)")
    truncate_c: float = Field(
        -1.0, ge=-10.0, le=10.0,
        description="constant c of truncate=normalized: latency z-scores below c count as c")
    latency_metric: Literal["al", "laal"] = Field(
        "al", description="latency term: Average Lagging or Length-Adaptive AL")
    mode: Literal["fused", "quality_only", "latency_only"] = Field(
        "fused", description="reward: fused = λ·z(q) − z(l'), quality_only = z(q), "
                             "latency_only = −z(l') (ablations)")
    replicas: int = Field(1, ge=1, le=256, description="RewardService actors scoring in parallel")
    num_cpus: float = Field(1.0, ge=0.0, le=256.0, description="Ray CPUs reserved per replica")
    comet_python: str | None = Field(
        ".venv-comet/bin/python", min_length=1, max_length=1000,
        description="interpreter of the COMET service (relative to the repository root); "
                    "null = the driver's own interpreter")

    @model_validator(mode="after")
    def _comet_needs_a_model(self) -> "RewardConfig":
        if self.quality == "comet" and self.comet_model is None:
            raise ValueError("quality=comet needs reward.comet_model (a checkpoint directory or hub id)")
        return self

    def settings(self) -> RewardSettings:
        """The plain dataclass the reward service receives (it may run without pydantic)."""
        return RewardSettings(**self.model_dump())
