"""Typed configuration of the reward component."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class RewardConfig(BaseModel):
    """Quality and latency terms of the SeqPO reward (DESIGN §2.2)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    latency_metric: Literal["al", "laal"] = Field(
        "al", description="latency term: Average Lagging or Length-Adaptive AL")
