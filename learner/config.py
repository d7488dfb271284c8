"""Typed configuration of the learner component (DeepSpeed GRPO ranks, DESIGN §2.3 and §4)."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

ModuleName = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.]+$")]


class LoraConfig(BaseModel):
    """peft LoRA on the policy; disabled = full fine-tuning."""

    model_config = ConfigDict(extra="forbid", strict=True)

    enabled: bool = Field(True, description="train a LoRA adapter (false = full fine-tuning of all weights)")
    r: int = Field(8, ge=1, le=1024, description="LoRA rank")
    alpha: int = Field(16, ge=1, le=65536, description="LoRA alpha; the update is scaled by alpha / r")
    dropout: float = Field(0.0, ge=0.0, le=0.9, description="dropout on the LoRA input (0 keeps ratio = 1 exact)")
    target_modules: list[ModuleName] = Field(
        default_factory=lambda: ["q_proj", "v_proj"], min_length=1, max_length=64,
        description="module names that get an adapter (q_proj k_proj v_proj o_proj gate_proj up_proj down_proj)")


class LearnerConfig(BaseModel):
    """Data-parallel learner ranks: precision, memory, optimizer and the GRPO loss."""

    model_config = ConfigDict(extra="forbid", strict=True)

    num_ranks: int = Field(1, ge=1, le=4096, description="data-parallel learner ranks (one Ray actor each)")
    num_cpus_per_rank: float = Field(1.0, ge=0.0, le=1024.0, description="Ray CPUs reserved per rank")
    num_gpus_per_rank: float = Field(0.0, ge=0.0, le=64.0, description="Ray GPUs reserved per rank (0 = CPU)")
    torch_threads: int | None = Field(
        None, ge=1, le=1024, description="intra-op threads per rank; null = the machine's cores / num_ranks")
    cpu_cores: str | None = Field(
        None, min_length=1, max_length=200, pattern=r"^[0-9,\-]+$",
        description="pin every rank's process to these CPU cores, e.g. 1 or 2-3 (null = no pinning)")
    zero_stage: int = Field(0, ge=0, le=3, description="DeepSpeed ZeRO stage (0 = plain data parallel)")
    dtype: Literal["auto", "bfloat16", "float32"] = Field(
        "auto", description="base-weight dtype (LoRA and optimizer state stay fp32); auto: as model.dtype's rule")
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in backward: less memory, one more forward of compute")
    micro_batch_size: int = Field(8, ge=1, le=4096, description="trajectories per forward/backward on one rank")
    lr: float = Field(5e-5, gt=0.0, le=1.0, description="AdamW learning rate (constant)")
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="AdamW decoupled weight decay")
    adam_beta1: float = Field(0.9, ge=0.0, lt=1.0, description="AdamW beta1")
    adam_beta2: float = Field(0.999, ge=0.0, lt=1.0, description="AdamW beta2")
    adam_eps: float = Field(1e-8, gt=0.0, le=1e-2, description="AdamW epsilon")
    grad_clip: float = Field(1.0, ge=0.0, le=1e6, description="clip the global gradient norm to this; 0 = off")
    ppo_epochs: int = Field(1, ge=1, le=64, description="passes over each rollout batch")
    num_minibatches: int = Field(
        1, ge=1, le=4096, description="optimizer updates per pass (the batch is split into this many minibatches)")
    kl_beta: float = Field(
        0.02, ge=0.0, le=10.0,
        description="k3 KL coefficient to the reference policy (paper: 0.02 en-zh, 0.1 zh-en); 0 = no KL")
    clip_low: float = Field(0.2, ge=0.0, le=1.0, description="PPO ratio clip below: 1 - clip_low")
    clip_high: float = Field(
        0.28, ge=0.0, le=10.0,
        description="PPO ratio clip above: 1 + clip_high (0.28 = DAPO clip-higher; 0.2 = symmetric)")
    std_normalize: bool = Field(
        True, description="divide group-centred rewards by the group std (false = Dr. GRPO)")
    loss_agg: Literal["token-mean", "seq-mean-token-mean"] = Field(
        "token-mean", description="loss aggregation over the global batch")
    is_correction: Literal["none", "truncate", "mask"] = Field(
        "none", description="off-policy correction by pi_old/pi_rollout per token: truncate at is_cap, "
                            "mask outside [1/is_cap, is_cap], or none (weights still logged)")
    is_cap: float = Field(2.0, ge=1.0, le=1e4, description="cap of the rollout importance weight (see is_correction)")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA adapter (or full fine-tuning)")

    @property
    def updates_per_batch(self) -> int:
        """Optimizer steps taken on one rollout batch."""
        return self.ppo_epochs * self.num_minibatches
