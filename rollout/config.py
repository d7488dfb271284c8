"""Typed configuration of the rollout component (streaming episodes)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_SYSTEM_PROMPT = (
    "You are a simultaneous interpreter translating {src_lang} into {tgt_lang}. "
    "The {src_lang} text arrives in pieces, one per user message. After each piece, "
    "write only the {tgt_lang} translation of what can be translated so far, continuing "
    "your earlier output without repeating it, or reply with an empty message to wait "
    "for more. The last piece ends with {end_marker}: then finish the translation."
)


class EpisodeConfig(BaseModel):
    """How a source sentence becomes a streaming episode (DESIGN §2.1)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    chunk_size: int | None = Field(
        None, ge=1, le=64,
        description="source units per chunk; null = 3 words, or 4 characters for a Chinese source")
    system_prompt: str = Field(
        DEFAULT_SYSTEM_PROMPT, min_length=1, max_length=4000,
        description="instruction turn; {src_lang} {tgt_lang} {end_marker} are filled in")
    end_marker: str = Field(
        "[END]", min_length=1, max_length=32,
        description="appended to the last source chunk to say the source is complete")
    max_new_tokens_per_step: int = Field(
        32, ge=1, le=4096, description="generation cap for every step but the last")
    max_new_tokens_final: int = Field(
        128, ge=1, le=8192, description="generation cap for the last step (source complete)")


class RolloutConfig(BaseModel):
    """Rollout workers: the streaming episode layout and its sampling."""

    model_config = ConfigDict(extra="forbid", strict=True)

    episode: EpisodeConfig = Field(
        default_factory=EpisodeConfig, description="streaming episode layout")
