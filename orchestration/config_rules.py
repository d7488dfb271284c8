"""Rules between config fields, checked together before Ray starts (all problems at once).

Each rule looks at a few sections and returns ``dotted.key: what is wrong and what to do``.
``config_problems`` runs every rule that applies to the sections a root config has (the
``sft`` and ``eval`` roots share most sections with ``train``); ``check_config`` raises one
``ConfigError`` listing all of them. The first line of each rule's docstring and the messages
it can return are listed in docs/configuration.md (``launch.py show-config --markdown``).
"""
from __future__ import annotations

import math

from orchestration.errors import ConfigError


def _whole(x: float) -> bool:
    return math.isclose(x, round(x))


def trains_grpo(cfg) -> bool:
    """The root runs GRPO on its ``train`` section (``train`` and ``pipeline``; ``sft`` ignores
    the ``train`` section it may inherit, see ``SftRootConfig.UNUSED_SECTIONS``)."""
    return hasattr(cfg, "train") and "train" not in getattr(type(cfg), "UNUSED_SECTIONS", {})


def weight_sync_rules(cfg) -> list[str]:
    """How new weights reach the engines (rollout.weight_sync) against LoRA and the engine's LoRA support."""
    ro, le = cfg.rollout, cfg.learner
    out = []
    mode, lora = ro.weight_sync, le.lora.enabled
    # SFT exports full weights when there is no LoRA (orchestration.training.sft); GRPO cannot
    if mode == "merged" and not lora and trains_grpo(cfg):
        out.append("rollout.weight_sync=merged: merges a LoRA delta but learner.lora.enabled=false; "
                   "use rollout.weight_sync=full for full fine-tuning")
    if mode == "adapter":
        if not lora:
            out.append("rollout.weight_sync=adapter: needs learner.lora.enabled=true (there is no adapter to send)")
        if not ro.engine.enable_lora:
            out.append("rollout.weight_sync=adapter: needs rollout.engine.enable_lora=true")
        elif lora and ro.engine.max_lora_rank < le.lora.r:
            out.append(f"rollout.engine.max_lora_rank={ro.engine.max_lora_rank}: below learner.lora.r="
                       f"{le.lora.r}; the engine would refuse the adapter")
    return out


def resource_rules(cfg) -> list[str]:
    """GPUs per engine, per learner rank and per reward replica, and the colocated placement's shares."""
    ro, le, rw, rc = cfg.rollout, cfg.learner, cfg.reward, cfg.ray
    tp = ro.engine.tensor_parallel_size
    out = []
    if tp > 1 and ro.num_gpus_per_worker == 0:
        out.append(f"rollout.engine.tensor_parallel_size={tp}: tensor parallelism needs GPUs; "
                   f"set rollout.num_gpus_per_worker={tp} (GPUs per engine)")
    if tp > 1 and rc.placement == "disaggregate" and 0 < ro.num_gpus_per_worker != tp:
        out.append(f"rollout.num_gpus_per_worker={ro.num_gpus_per_worker:g}: with rollout.engine."
                   f"tensor_parallel_size={tp} an engine uses {tp} whole GPUs; set it to {tp}")
    if tp == 1 and ro.num_gpus_per_worker > 1:
        out.append(f"rollout.num_gpus_per_worker={ro.num_gpus_per_worker:g}: one engine uses more than one GPU "
                   f"only with rollout.engine.tensor_parallel_size={ro.num_gpus_per_worker:g}")
    if le.num_gpus_per_rank > 1 and not _whole(le.num_gpus_per_rank):
        out.append(f"learner.num_gpus_per_rank={le.num_gpus_per_rank:g}: a rank uses a share of one GPU "
                   "(at most 1) or whole GPUs")
    if le.num_gpus_per_rank > 1:
        out.append(f"learner.num_gpus_per_rank={le.num_gpus_per_rank:g}: a DeepSpeed rank drives one GPU; "
                   "use more learner.num_ranks instead")
    gpu_learner, gpu_rollout = le.num_gpus_per_rank > 0, ro.num_gpus_per_worker > 0
    if rw.device == "cuda" and rw.quality != "comet":
        out.append(f"reward.device=cuda: only COMET runs on a GPU; reward.quality={rw.quality} would hold a GPU "
                   "idle (use reward.device=cpu)")
    if rc.placement == "colocate":
        if ro.num_workers * tp != le.num_ranks:
            out.append(f"ray.placement=colocate: puts one learner rank and 1/tensor_parallel_size of an engine on "
                       f"each GPU, so rollout.num_workers × rollout.engine.tensor_parallel_size "
                       f"({ro.num_workers} × {tp}) must equal learner.num_ranks ({le.num_ranks})")
        if gpu_learner != gpu_rollout:
            out.append("ray.placement=colocate: learner.num_gpus_per_rank and rollout.num_gpus_per_worker must "
                       "both be 0 (CPU) or both above 0 (sharing GPUs)")
        share = le.num_gpus_per_rank + (ro.num_gpus_per_worker / tp)
        if gpu_learner and share > 1 + 1e-9:
            out.append(f"ray.placement=colocate: learner.num_gpus_per_rank + rollout.num_gpus_per_worker / "
                       f"tensor_parallel_size = {share:g} GPUs per bundle; colocated actors share one GPU "
                       "(e.g. 0.5 + 0.5)")
        if gpu_rollout and ro.engine.gpu_memory_utilization > 0.7:
            out.append(f"rollout.engine.gpu_memory_utilization={ro.engine.gpu_memory_utilization:g}: colocated "
                       "with a learner rank the engine must leave the GPU room (at most 0.7)")
    return out


def shape_rules(cfg) -> list[str]:
    """Generation caps against the engine's context, and a GRPO batch against the learner ranks."""
    ro, le = cfg.rollout, cfg.learner
    out = []
    ep, eng = ro.episode, ro.engine
    if ep.max_new_tokens_final >= eng.max_model_len:
        out.append(f"rollout.episode.max_new_tokens_final={ep.max_new_tokens_final}: not below "
                   f"rollout.engine.max_model_len={eng.max_model_len}; no episode could finish")
    if trains_grpo(cfg):
        batch = cfg.train.sources_per_step * ro.sampling.group_size
        if batch < le.num_ranks:
            out.append(f"train.sources_per_step × rollout.sampling.group_size = {batch} trajectories per step: "
                       f"fewer than learner.num_ranks={le.num_ranks}; some ranks would get nothing")
        if ro.sampling.group_size == 1:
            out.append("rollout.sampling.group_size=1: GRPO compares trajectories of one source; every "
                       "advantage would be 0 (use 2 or more)")
    return out


# top of each sentence-level scorer's scale (reward.types.ScorerInfo.scale)
QUALITY_SCALE_TOP = {"chrf": 100.0, "chrf1": 100.0, "chrf_bp": 100.0, "bleu": 100.0, "comet": 1.0}


def reward_rules(cfg) -> list[str]:
    """The reward section on its own: the gated mode's threshold and the length gate.

    ``latency_floor`` is read only by ``truncate: raw`` and is
    left alone otherwise (it has a default, so a run that switches truncation off keeps it set)."""
    rw = cfg.reward
    out = []
    if rw.mode == "gated":
        if rw.quality_threshold is None:
            out.append("reward.mode=gated: needs reward.quality_threshold (the quality, in the scorer's units, "
                       "from which latency earns credit; e.g. 30 for chrF)")
        elif rw.quality_threshold > QUALITY_SCALE_TOP.get(rw.quality, float("inf")):
            top = QUALITY_SCALE_TOP[rw.quality]
            out.append(f"reward.quality_threshold={rw.quality_threshold:g}: above the top of {rw.quality}'s scale "
                       f"({top:g}); no trajectory would earn latency credit")
    if rw.length_gate is not None and not rw.length_gate[0] < rw.length_gate[1]:
        lo, hi = rw.length_gate
        out.append(f"reward.length_gate=[{lo:g}, {hi:g}]: needs lo < hi (the hypothesis/reference length "
                   "ratios accepted); null turns the gate off")
    return out


RULES = (weight_sync_rules, resource_rules, shape_rules)
# the sections each rule reads: a root config without one of them skips that rule
RULE_SECTIONS = {reward_rules: ("reward",)} | {rule: ("rollout", "learner", "reward", "ray") for rule in RULES}


def rules_for(sections) -> list:
    """The rules a root config with these top-level sections is checked by, in order."""
    return [rule for rule, needs in RULE_SECTIONS.items() if all(s in sections for s in needs)]


def config_problems(cfg) -> list[str]:
    """Every cross-field problem of a root config (empty when it is consistent)."""
    return [p for rule in rules_for(type(cfg).model_fields) for p in rule(cfg)]


def check_config(cfg, source: str = "config") -> None:
    problems = config_problems(cfg)
    if problems:
        raise ConfigError(f"{source}: {len(problems)} inconsistent setting(s):\n  " + "\n  ".join(problems))

