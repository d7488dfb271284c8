"""Typed configuration of the reward component (DESIGN §2.2)."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from reward.types import RewardSettings

GateBound = Annotated[float, Field(ge=0.0, le=1000.0)]


class RewardConfig(BaseModel):
    """Quality and latency terms of the SeqPO reward, its ablations, and the service replicas."""

    model_config = ConfigDict(extra="forbid", strict=True)

    quality: Literal["chrf", "chrf1", "chrf_bp", "bleu", "comet"] = Field(
        "chrf", description="quality scorer: chrf (chrF2), chrf1 (chrF, beta 1), chrf_bp (chrF2 x "
                            "long-output penalty), bleu (sacrebleu, sentence level) or comet (needs comet_model)")
    comet_model: str | None = Field(
        None, min_length=1, max_length=1000,
        description="COMET checkpoint: a local directory with hparams.yaml and checkpoints/model.ckpt, "
                    "or a hub id such as Unbabel/wmt22-comet-da where a hub is reachable")
    comet_batch_size: int = Field(32, ge=1, le=4096, description="segments per COMET forward batch")
    device: Literal["cpu", "cuda"] = Field(
        "cpu", description="where COMET runs; cuda gives every replica one GPU")
    lam: float = Field(2.0, ge=0.0, le=100.0, description="λ: weight of z(quality) against z(latency)")
    truncate: Literal["raw", "normalized", "none"] = Field(
        "raw", description="latency truncation: raw = max(l, latency_floor) before z-scoring, "
                           "normalized = max(z(l), truncate_c) after, none = no truncation (ablation)")
    truncate_c: float = Field(
        -1.0, ge=-10.0, le=10.0,
        description="constant c of truncate=normalized: latency z-scores below c count as c")
    latency_floor: float | None = Field(
        4.0, ge=0.0, le=1000.0,
        description="floor of truncate=raw in source units (ignored otherwise); null = the chunk size, "
                    "the published SeqPO truncation")
    latency_metric: Literal["al", "laal"] = Field(
        "laal", description="latency term: Length-Adaptive AL (over-generation cannot shrink it) or Average Lagging")
    length_gate: Annotated[list[GateBound], Field(min_length=2, max_length=2)] | None = Field(
        [0.5, 2.0], description="[lo, hi] hypothesis/reference length ratio in target units; a hypothesis "
                                "outside is degenerate (scored like an empty one); null = off")
    mode: Literal["fused", "gated", "quality_only", "latency_only"] = Field(
        "fused", description="reward: fused = λ·z(q) − z(l'), gated = λ·z(q) − z(h) with HPO's hinge h "
                             "(needs quality_threshold), quality_only = z(q), latency_only = −z(l') (ablations)")
    quality_threshold: float | None = Field(
        None, ge=-1e6, le=1e6,
        description="mode=gated: quality (scorer units, e.g. 30 for chrF) from which latency earns credit")
    max_latency: float = Field(
        10.0, ge=0.0, le=1000.0,
        description="mode=gated: lag (source units) from which latency earns no credit, h = min(0, l' − max_latency)")
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
        values = self.model_dump()
        if values["length_gate"] is not None:
            values["length_gate"] = tuple(values["length_gate"])
        return RewardSettings(**values)
