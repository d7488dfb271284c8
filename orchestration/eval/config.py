"""Typed configuration of ``launch.py eval``: which policies, on which test set, how.

The eval root config has the driver's ``run``, ``data``, ``model`` and ``ray`` sections, the
``rollout`` section (the learned policy's episode layout and the vLLM engine) and ``eval``.
``eval.settings`` is a list of policy entries chosen by ``type:`` (:data:`POLICY_TYPES`); a list
in a swept field (``k``, ``levels``, ``checkpoint``, ``chunk_size``) expands into one setting
per value, so one entry sweeps wait-k over k = 1, 3, 5, 7 or LSG over the paper's four levels.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from orchestration.config import DataConfig, ModelConfig, RayConfig, RunConfig
from orchestration.config_loader import _allowed_keys, load_config
from rollout.config import RolloutConfig
from rollout.prefix_layout import DEFAULT_PREFIX_SYSTEM_PROMPT


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


K = Annotated[int, Field(ge=1, le=1000)]
Chunk = Annotated[int, Field(ge=1, le=64)]
PathStr = Annotated[str, Field(min_length=1, max_length=1000)]
Label = Field(None, min_length=1, max_length=60, description="line name on the plot; null = the policy type")


Positions = Field("contiguous", description="contiguous: the prompt as written (vLLM or transformers); expost: "
                                            "ExPosST slots on transformers with one KV cache per sentence, for "
                                            "models trained with sft.layout=simulmask")
Slots = Field(None, ge=1, le=100_000, description="positions: expost: reserved source positions; null = the "
                                                  "model's sft_provenance.json (what it was trained with)")


class WaitKSetting(_Section):
    """wait-k: read k units, then write one / read one (prefix layout), or the same schedule in
    the training episode layout (``layout: episode``) so the layout's effect and the policy's
    can be told apart."""

    type: Literal["waitk"] = Field(description="policy name")
    k: K | Annotated[list[K], Field(min_length=1)] = Field(
        description="units read before the first write; a list sweeps")
    layout: Literal["prefix", "episode"] = Field(
        "prefix", description="prefix: the source so far and the translation so far, one unit per write (the "
                              "wait-k curve); episode: rollout.episode's chunk layout, writing by the wait-k schedule")
    positions: Literal["contiguous", "expost"] = Positions
    source_slots: int | None = Slots
    label: str | None = Label

    @model_validator(mode="after")
    def _episode_layout_has_plain_positions(self) -> "WaitKSetting":
        if self.layout == "episode" and self.positions == "expost":
            raise ValueError("layout: episode runs the training layout on vLLM; positions: expost is for the "
                             "prefix layout")
        return self


LevelLU = Annotated[list[Annotated[int, Field(ge=0, le=1000)]], Field(min_length=2, max_length=2)]


class LSGSetting(_Section):
    """LSG (Guo et al., AAAI 2025; prefix layout): KL / confidence rule inside a read range."""

    type: Literal["lsg"] = Field(description="policy name")
    delta: float = Field(9.0, ge=0.0, le=1000.0, description="δ: WRITE when KL(p_cur, p_base) > δ (De→En 9.0, En→De 7.5)")
    alpha: float = Field(0.6, ge=0.0, le=1.0, description="α: WRITE when max p_cur > α")
    levels: list[LevelLU] = Field(
        default_factory=lambda: [[1, 4], [3, 4], [5, 6], [7, 6]], min_length=1, max_length=64,
        description="[L, U] read ranges, one setting each (the paper's four latency levels)")
    kl: Literal["forward", "reverse"] = Field(
        "forward", description="forward = KL(p_cur ‖ p_base) as in the paper, reverse as their public code")
    distribution: Literal["exact", "topk"] = Field(
        "exact", description="exact = full-vocabulary log-probs (vLLM with max_logprobs=-1, or transformers), "
                             "topk = vLLM's top_k list (approximate)")
    top_k: int = Field(20, ge=1, le=1_000_000,
                       description="log-probs per distribution with distribution=topk (the engine's max_logprobs is raised to it)")
    label: str | None = Label


class LearnedSetting(_Section):
    """The trained policy in the interleaved chunk layout (DESIGN §2.1), greedy."""

    type: Literal["learned"] = Field(description="policy name")
    chunk_size: Chunk | None | Annotated[list[Chunk], Field(min_length=1)] = Field(
        None, description="source units per chunk; null = rollout.episode.chunk_size; a list sweeps")
    checkpoint: PathStr | None | Annotated[list[PathStr], Field(min_length=1)] = Field(
        None,
        description="a train checkpoint (checkpoints/step-N), a peft adapter directory, or null = model.path as is; a list sweeps")
    model: PathStr | None = Field(
        None, description="the policy's own model directory (e.g. RUN_DIR/model of sft or train with "
                          "train.export_model), run instead of model.path; the wait-k curve stays model.path's")
    label: str | None = Label


class OfflineSetting(_Section):
    """Full-sentence translation (quality ceiling; AL = |X|)."""

    type: Literal["offline"] = Field(description="policy name")
    positions: Literal["contiguous", "expost"] = Positions
    source_slots: int | None = Slots
    label: str | None = Label


PolicyEntry = Annotated[Union[WaitKSetting, LSGSetting, LearnedSetting, OfflineSetting],
                        Field(discriminator="type")]
POLICY_TYPES = ("waitk", "lsg", "learned", "offline")


class EvalConfig(_Section):
    """The evaluator: policy settings, decoding caps, metrics, plot."""

    settings: list[PolicyEntry] = Field(
        default_factory=lambda: [OfflineSetting(type="offline")], min_length=1, max_length=1000,
        description="policy entries (type: waitk | lsg | learned | offline); lists in k/levels/checkpoint/chunk_size sweep")
    backend: Literal["auto", "vllm", "hf"] = Field(
        "auto", description="auto = vLLM for every policy (exact LSG through full-vocabulary log-probs); hf = transformers")
    batch_size: int = Field(128, ge=1, le=100_000, description="sentences decoded in lock-step per batch")
    hf_batch_size: int = Field(8, ge=1, le=4096, description="prompts per transformers forward (hf backend)")
    max_tokens_per_unit: int = Field(
        4, ge=1, le=256, description="generation cap of one write call (a longer word continues at the next call "
                                     "with the same source; 4 saves the decoding of tokens the write discards)")
    max_new_tokens_final: int = Field(256, ge=1, le=8192, description="generation cap once the source is complete")
    system_prompt: str = Field(
        DEFAULT_PREFIX_SYSTEM_PROMPT, min_length=1, max_length=4000,
        description="instruction of the prefix layout (wait-k, LSG, offline); {src_lang} {tgt_lang} are filled in")
    source_unit_ms: float = Field(
        400.0, gt=0.0, le=100_000.0,
        description="assumed arrival time of one source unit (ms): scales compute time into AL_CA")
    comet_model: str | None = Field(None, min_length=1, max_length=1000,
                                    description="COMET checkpoint directory or hub id; null = no COMET")
    comet_python: str | None = Field(".venv-comet/bin/python", min_length=1, max_length=1000,
                                     description="interpreter of the COMET actor (relative to the repository)")
    comet_batch_size: int = Field(32, ge=1, le=4096, description="segments per COMET batch")
    plot_quality: Literal["BLEU", "chrF", "COMET"] = Field("BLEU", description="quality axis of curves.png")
    # the scoreboard: every other setting's distance to the wait-k curve (orchestration/eval/curve.py)
    curve_k: list[K] = Field(
        default_factory=lambda: list(range(1, 10)), max_length=100,
        description="k of the wait-k curve every other setting is scored against (added to the run unless "
                    "listed); [] = no curve, no scoreboard")
    curve_cache: PathStr | None = Field(
        "runs/curves", description="where finished wait-k curve points are kept and reused across runs "
                                   "(relative to the repository); null = no cache")
    runs: list[PathStr] = Field(
        default_factory=list, max_length=100,
        description="`launch.py pipeline` run directories: their SFT and GRPO policies (RUN/sft/model, "
                    "RUN/grpo/model) join the settings as learned settings with their own model")
    curve_replicates: int = Field(1000, ge=1, le=100_000,
                                  description="bootstrap resamples of the sentences for the scoreboard's intervals")


class EvalRootConfig(_Section):
    """Everything ``launch.py eval`` needs."""

    run: RunConfig = Field(default_factory=lambda: RunConfig(name="eval"), description="run directory and seed")
    data: DataConfig = Field(default_factory=DataConfig,
                             description="data.test names the test set; data.limit keeps its first lines (never shuffled)")
    model: ModelConfig = Field(default_factory=ModelConfig, description="the model every policy runs on")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig,
                                   description="episode layout of the learned policy; rollout.engine for vLLM")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="policies, caps, metrics")
    ray: RayConfig = Field(default_factory=RayConfig, description="Ray cluster")


# --- expansion into single settings ----------------------------------------------------------


@dataclass(frozen=True)
class RunSetting:
    """One point of the sweep: a policy with single values, its directory name and line."""

    name: str
    line: str
    backend: Literal["vllm", "hf", "expost"]
    params: dict[str, Any]


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "x"


def _backend(entry: Any, choice: str) -> Literal["vllm", "hf", "expost"]:
    if getattr(entry, "positions", "contiguous") == "expost":
        return "expost"     # transformers with ExPosST positions, whatever eval.backend says
    return "vllm" if choice == "auto" else choice  # type: ignore[return-value]


def _layout(entry: Any) -> tuple[dict[str, Any], str]:
    """The position parameters of a prefix-layout entry and its name suffix."""
    if getattr(entry, "positions", "contiguous") != "expost":
        return {}, ""
    return {"positions": "expost", "source_slots": entry.source_slots}, "-expost"


def expost_slots(model_dir: Path) -> int | None:
    """The ``source_slots`` a simulmask-trained model was trained with (its sft_provenance.json)."""
    try:
        note = json.loads((model_dir / "sft_provenance.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    slots = note.get("source_slots")
    return int(slots) if isinstance(slots, int) and slots > 0 else None


def engine_max_logprobs(settings: "list[RunSetting]") -> int | None:
    """vLLM's ``max_logprobs`` for these settings: -1 (the whole vocabulary) for exact LSG,
    the largest ``top_k`` above vLLM's default 20, else ``None`` (the default)."""
    lsg = [s.params for s in settings if s.backend == "vllm" and s.params["type"] == "lsg"]
    if any(p["distribution"] == "exact" for p in lsg):
        return -1
    top = max((p["top_k"] for p in lsg), default=0)
    return top if top > 20 else None


def _checkpoint_tag(path: str) -> str:
    """runs/x/checkpoints/step-4 -> x-step-4; any other directory -> its name."""
    p = Path(path)
    tag = f"{p.parent.parent.name}-{p.name}" if p.parent.name == "checkpoints" else p.name
    return _slug(tag)


def _model_tag(path: str) -> str:
    """runs/x/model -> x; runs/x/grpo/model -> x-grpo; any other directory -> its name."""
    p = Path(path)
    return _slug(f"{p.parent.name}" if p.name == "model" else p.name)


def expand_settings(cfg: EvalConfig) -> list[RunSetting]:
    """Every single setting of the sweep, in config order; names are unique."""
    out: list[RunSetting] = []
    for entry in cfg.settings:
        backend = _backend(entry, cfg.backend)
        line = entry.label or entry.type
        if isinstance(entry, WaitKSetting):
            extra, tag = _layout(entry)
            if entry.layout == "episode":
                extra, tag = {"layout": "episode"}, "-episode"
            for k in _as_list(entry.k):
                out.append(RunSetting(f"waitk-k{k}{tag}", line, backend, {"type": "waitk", "k": k} | extra))
        elif isinstance(entry, LSGSetting):
            for L, U in entry.levels:
                params = entry.model_dump(exclude={"levels", "label"}) | {"L": L, "U": U}
                tag = "" if entry.kl == "forward" else "-reverse"
                tag += "-exact" if entry.distribution == "exact" else f"-top{entry.top_k}"
                out.append(RunSetting(f"lsg-L{L}-U{U}{tag}", line, backend, params))
        elif isinstance(entry, LearnedSetting):
            for ckpt in _as_list(entry.checkpoint):
                for m in _as_list(entry.chunk_size):
                    what = "base" if ckpt is None else _checkpoint_tag(ckpt)
                    if entry.model is not None and ckpt is None:
                        what = _model_tag(entry.model)
                    name = f"learned-{what}" + ("" if m is None else f"-m{m}")
                    params = {"type": "learned", "checkpoint": ckpt, "chunk_size": m}
                    out.append(RunSetting(name, line, backend,
                                          params | ({"model": entry.model} if entry.model is not None else {})))
        else:
            extra, tag = _layout(entry)
            out.append(RunSetting(f"offline{tag}", line, backend, {"type": "offline"} | extra))
    seen: dict[str, int] = {}
    unique = []
    for s in out:  # the same point twice (or two checkpoints with one name) get a suffix
        n = seen.get(s.name, 0)
        seen[s.name] = n + 1
        unique.append(s if n == 0 else RunSetting(f"{s.name}-{n + 1}", s.line, s.backend, s.params))
    return unique


# --- loading ---------------------------------------------------------------------------------


def _allowed(loc: tuple) -> list[str]:
    """Field names of the section holding the key at ``loc`` (a policy entry: its type's)."""
    tags = [p for p in loc if isinstance(p, str) and p in POLICY_TYPES]
    if tags:
        entry = {"waitk": WaitKSetting, "lsg": LSGSetting, "learned": LearnedSetting,
                 "offline": OfflineSetting}[tags[-1]]
        return list(entry.model_fields)
    return _allowed_keys(EvalRootConfig, tuple(str(p) for p in loc))


def _format(err: ValidationError, source: str) -> str:
    lines, keys = [], set()
    for item in err.errors():
        # Drop union members from the location: eval.settings.0.waitk.kk -> eval.settings.0.kk
        loc = [str(p) for p in item["loc"] if not (isinstance(p, str) and (
            p in POLICY_TYPES or "-" in p or "[" in p))]
        key = ".".join(loc) or "<root>"
        if key in keys:  # one message per key (a union reports each of its members)
            continue
        keys.add(key)
        if item["type"] == "extra_forbidden":
            lines.append(f"{source}: {key}: unknown key; allowed here: {', '.join(_allowed(item['loc']))}")
        elif item["type"] == "union_tag_invalid":
            lines.append(f"{source}: {key}: unknown policy type {item['input'].get('type')!r}; "
                         f"allowed: {', '.join(POLICY_TYPES)}")
        else:
            got = item.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"{source}: {key}: {item['msg']}{shown}")
    return "\n".join(lines)


def load_eval_config(path: str | None, overrides: list[str] = ()) -> EvalRootConfig:
    """YAML file (optional, ``base:`` allowed) + ``key=value`` overrides -> validated config."""
    return load_config(path, overrides, schema=EvalRootConfig, format_error=_format)
