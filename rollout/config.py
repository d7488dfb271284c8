"""Typed configuration of the rollout component (streaming episodes)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

WeightSyncMode = Literal["merged", "adapter", "full"]
# Where each weight sync mode's tensors land in an engine: "base" replaces the model's own
# weights (a merged LoRA delta, or every weight), "adapter" loads a peft adapter. A new mode
# is an entry here and in ``WeightSyncMode``; the engine and worker dispatch on the target.
WEIGHT_SYNC_TARGETS: dict[str, str] = {"merged": "base", "full": "base", "adapter": "adapter"}


def weight_target(mode: str) -> str:
    """``base`` or ``adapter`` for a weight sync mode; an unknown mode names the valid ones."""
    if mode not in WEIGHT_SYNC_TARGETS:
        raise ValueError(f"unknown weight sync mode {mode!r}; known: {', '.join(WEIGHT_SYNC_TARGETS)}")
    return WEIGHT_SYNC_TARGETS[mode]

EpisodeLayout = Literal["pieces", "continue", "prefix"]

# The instruction of each episode layout (``rollout.episode``); {src_lang} {tgt_lang}
# {end_marker} are filled in.
SYSTEM_PROMPTS: dict[str, str] = {
    "pieces": (
        "You are a simultaneous interpreter translating {src_lang} into {tgt_lang}. "
        "The {src_lang} text arrives in pieces, one per user message. After each piece, "
        "write only the {tgt_lang} translation of what can be translated so far, continuing "
        "your earlier output without repeating it, or reply with an empty message to wait "
        "for more. The last piece ends with {end_marker}: then finish the translation."),
    "continue": (
        "You are a simultaneous interpreter translating {src_lang} into {tgt_lang}. "
        "The {src_lang} text arrives in pieces, one per user message. Each of your replies "
        "starts with your translation so far: continue it with the translation of what can be "
        "translated now, or end the reply at once to wait for more. The last piece ends with "
        "{end_marker}: then finish the translation."),
    "prefix": (
        "You are a simultaneous interpreter translating {src_lang} into {tgt_lang}. "
        "Each user message holds the {src_lang} text received so far, which may stop in the "
        "middle of a sentence. Each of your replies starts with your translation so far: "
        "continue it with what the text so far says, or end the reply at once to wait for more. "
        "When the text ends with {end_marker} it is complete: finish the translation."),
}
DEFAULT_SYSTEM_PROMPT = SYSTEM_PROMPTS["pieces"]


class EpisodeConfig(BaseModel):
    """How a source sentence becomes a streaming episode (DESIGN §2.1)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    layout: EpisodeLayout = Field(
        "prefix", description="prefix: each user turn holds the source so far and each reply continues the "
                              "translation so far; continue: one new chunk per user turn, replies continue the "
                              "translation so far; pieces: one chunk per user turn, one piece per reply")
    chunk_size: int | None = Field(
        None, ge=1, le=64,
        description="source units per chunk; null = 3 words, or 4 characters for a Chinese source")
    system_prompt: str | None = Field(
        None, min_length=1, max_length=4000,
        description="instruction turn ({src_lang} {tgt_lang} {end_marker} are filled in); null = the layout's own")
    end_marker: str = Field(
        "[END]", min_length=1, max_length=32,
        description="appended to the complete source; a reply that writes it is cut before it")
    max_new_tokens_per_step: int = Field(
        32, ge=1, le=4096, description="generation cap for every step but the last")
    max_new_tokens_final: int = Field(
        256, ge=1, le=8192, description="generation cap of the last step (source complete), at most")
    final_tokens_per_source_unit: float | None = Field(
        3.0, gt=0.0, le=100.0,
        description="the last step's cap follows the source: ceil(this x source units) + 8 tokens, at most "
                    "max_new_tokens_final; null = max_new_tokens_final alone")
    units_per_read: float | None = Field(
        1.5, gt=0.0, le=100.0,
        description="before the source is complete the translation holds at most floor(this x source units "
                    "read) units; a reply is cut at the first unit beyond; null = no bound")

    def prompt_template(self) -> str:
        return self.system_prompt if self.system_prompt is not None else SYSTEM_PROMPTS[self.layout]


class SamplingConfig(BaseModel):
    """How trajectories are sampled during training rollouts."""

    model_config = ConfigDict(extra="forbid", strict=True)

    group_size: int = Field(4, ge=1, le=256, description="trajectories per source (GRPO group B)")
    temperature: float = Field(1.0, ge=0.0, le=5.0, description="sampling temperature; 0 = greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling mass")


class EngineConfig(BaseModel):
    """The vLLM engine of each rollout worker (CPU values are the measured good ones)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    max_model_len: int = Field(2048, ge=128, le=1_048_576, description="longest episode in tokens")
    block_size: int | None = Field(
        32, ge=16, le=256, description="KV block size; 32 is the smallest vLLM's CPU build takes; null = vLLM default")
    enable_prefix_caching: bool = Field(True, description="reuse earlier steps' KV across streaming steps")
    enforce_eager: bool = Field(True, description="skip graph capture/compilation (CPU: 30 s start instead of 95 s)")
    tensor_parallel_size: int = Field(1, ge=1, le=64, description="GPUs per engine (tensor parallel)")
    gpu_memory_utilization: float = Field(
        0.3, gt=0.0, le=0.99, description="share of GPU memory for the engine (GPU only)")
    cpu_kv_cache_gib: int = Field(4, ge=1, le=4096, description="KV cache size on CPU (GiB)")
    cpu_threads: str = Field(
        "all", min_length=1, max_length=200, pattern=r"^(all|[0-9,\-|]+)$",
        description="CPU cores the engine's OpenMP threads bind to: 'all' or a list like 0-1")
    enable_lora: bool = Field(False, description="start the engine with LoRA support (weight_sync=adapter)")
    max_lora_rank: int = Field(16, ge=1, le=512, description="largest LoRA rank the engine accepts")


class RolloutConfig(BaseModel):
    """Rollout workers: the streaming episode layout, sampling, engines and weight sync."""

    model_config = ConfigDict(extra="forbid", strict=True)

    episode: EpisodeConfig = Field(
        default_factory=EpisodeConfig, description="streaming episode layout")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig, description="training sampling")
    engine: EngineConfig = Field(default_factory=EngineConfig, description="vLLM engine settings")
    runner: Literal["lockstep", "streaming"] = Field(
        "streaming", description="streaming: each trajectory's next turn is submitted when its last one ends "
                                 "(continuous batching); lockstep: one batch per streaming step")
    max_in_flight: int = Field(
        256, ge=1, le=1_000_000, description="streaming runner: most requests inside one engine at a time")
    num_workers: int = Field(1, ge=1, le=4096, description="rollout worker replicas (one engine each)")
    num_cpus_per_worker: float = Field(1.0, ge=0.0, le=1024.0, description="Ray CPUs reserved per worker")
    num_gpus_per_worker: float = Field(0.0, ge=0.0, le=64.0, description="Ray GPUs reserved per worker")
    weight_sync: WeightSyncMode = Field(
        "merged", description="how new weights reach the engines: merged LoRA delta, LoRA adapter, all weights")
    weight_bucket_mb: int = Field(
        512, ge=1, le=65536, description="largest bucket of the weight broadcast (MiB; a bigger tensor goes alone)")
