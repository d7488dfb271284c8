"""The root configuration: one typed section per component, composed here.

Components own their sections (``rollout.config``, ``reward.config``); this module adds
the driver's own sections (run, data, model, ray) and composes them.
"""
from __future__ import annotations

from typing import ClassVar, Annotated, Literal

from pydantic import model_validator, BaseModel, ConfigDict, Field

from learner.config import LearnerConfig
from reward.config import RewardConfig
from rollout.config import RolloutConfig


ResourceName = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class RunConfig(_Section):
    """Where a command writes and how it is seeded."""

    name: str = Field("simulrl", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$",
                      description="run name; the default run directory is runs/<name>-<timestamp>")
    dir: str | None = Field(None, min_length=1, max_length=1000,
                            description="run directory for every output; null = runs/<name>-<timestamp>")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed for data shuffling and sampling")


class DataConfig(_Section):
    """Which named data sets to use and where they live."""

    dir: str | None = Field(None, min_length=1, max_length=1000,
                            description="data directory; null = $SIMULRL_DATA, else ../shared/data")
    train: str = Field("wmt17-20_news_deen", min_length=1, max_length=1000,
                       description="training set: a name (`launch.py datasets`), a folder with src.txt/ref.txt, "
                                   "or a .jsonl/.tsv file")
    dev: str = Field("flores200_dev_deen", min_length=1, max_length=1000,
                     description="held-out set for periodic evaluation during training (name, folder or file)")
    test: str = Field("newstest2015_deen", min_length=1, max_length=1000,
                      description="test set for evaluation commands (name, folder or file)")
    src_lang: str | None = Field(None, min_length=2, max_length=3, pattern=r"^[a-z]{2,3}$",
                                 description="source language of a folder/file set whose name does not say it")
    tgt_lang: str | None = Field(None, min_length=2, max_length=3, pattern=r"^[a-z]{2,3}$",
                                 description="target language of a folder/file set whose name does not say it")
    limit: int | None = Field(None, ge=1, le=10_000_000,
                              description="use at most this many pairs of a set (after shuffling)")
    shuffle: bool = Field(True, description="shuffle training pairs with run.seed")
    max_source_units: int = Field(500, ge=1, le=100_000,
                                  description="refuse a source longer than this many units")
    fetch: bool = Field(False, description="fetch a missing set with sacrebleu (needs a network)")


class ModelConfig(_Section):
    """The policy model: a local directory or a hub id."""

    path: str = Field("models/qwen2.5-coder-0.5b-instruct", min_length=1, max_length=1000,
                      description="HF model id or local directory (relative to the repository)")
    dtype: Literal["auto", "bfloat16", "float32", "float16"] = Field(
        "auto", description="weights and compute dtype; auto = bfloat16 on GPUs and bf16-capable CPUs, else float32")
    init_from: str | None = Field(
        None, min_length=1, max_length=1000,
        description="run directory of `launch.py sft`: the policy starts from its model/ instead of path")


class RayConfig(_Section):
    """Ray cluster to run on."""

    address: str | None = Field(None, min_length=1, max_length=500,
                                description="existing cluster address; null = $RAY_ADDRESS, else a local one")
    num_cpus: int | None = Field(None, ge=1, le=100_000,
                                 description="CPUs of a local Ray instance; null = all")
    placement: Literal["disaggregate", "colocate"] = Field(
        "disaggregate", description="disaggregate: every role its own bundles; colocate: learner rank i shares "
                                    "bundle i (its GPU) with a rollout engine")
    rollout_resources: dict[ResourceName, float] = Field(
        default_factory=dict, description="custom Ray resources added to every rollout bundle (pin engines to nodes)")
    reward_resources: dict[ResourceName, float] = Field(
        default_factory=dict, description="custom Ray resources added to every reward replica's bundle")
    learner_resources: dict[ResourceName, float] = Field(
        default_factory=dict, description="custom Ray resources added to every learner rank's bundle")
    start_timeout_s: float = Field(900.0, gt=0.0, le=86_400.0,
                                   description="longest wait for placement groups and actors to start")
    sync_timeout_s: float = Field(600.0, gt=0.0, le=86_400.0,
                                  description="longest wait for one weight sync (every collective and call in it)")
    call_timeout_s: float = Field(7200.0, gt=0.0, le=604_800.0,
                                  description="longest wait for any other driver call (a learner step, a checkpoint)")


class TrainConfig(_Section):
    """The SeqPO-SiMT training loop."""

    steps: int = Field(12, ge=1, le=10_000_000, description="GRPO steps (one rollout batch each)")
    sources_per_step: int = Field(8, ge=1, le=1_000_000, description="sources per step; each gets a group of B")
    min_source_units: int = Field(1, ge=1, le=100_000, description="skip training sources shorter than this")
    max_source_units: int = Field(500, ge=1, le=100_000,
                                  description="skip training sources longer than this (units of the source)")
    dev_size: int = Field(16, ge=1, le=100_000, description="dev sentences of each evaluation (first ones of data.dev)")
    eval_every: int = Field(0, ge=0, le=1_000_000,
                            description="evaluate on dev every N steps; 0 = only before and after training")
    checkpoint_every: int = Field(4, ge=0, le=1_000_000,
                                  description="checkpoint every N steps (and always at the end); 0 = only at the end")
    tensorboard: bool = Field(True, description="also write TensorBoard event files")
    save_rollouts: bool = Field(False, description="also write each step's trajectories to rollouts/step-N.jsonl")
    export_model: bool = Field(
        False, description="after the last step write RUN_DIR/model: the policy as a plain HF directory (LoRA merged)")
    call_timeout_s: float = Field(3600.0, gt=0.0, le=7 * 86400.0,
                                  description="longest one learner or rollout call may take before the run stops")
    mode: Literal["sync", "one_step_off", "async"] = Field(
        "sync", description="sync: rollout then update; one_step_off: batch t+1 is rolled out during update t "
                            "(one version stale); async: up to max_staleness batches ahead")
    max_staleness: int = Field(1, ge=1, le=64, description="async: most weight versions a trained batch may lag")
    filter_zero_advantage: bool = Field(
        False, description="drop groups whose rewards are all equal (no gradient) before the update")
    fill_rounds: int = Field(
        0, ge=0, le=64, description="with filter_zero_advantage: extra rollouts of new sources to replace "
                                    "dropped groups, at most this many per step")

    @model_validator(mode="after")
    def _fill_needs_sync(self) -> "TrainConfig":
        # a fill round draws from the data cursor, which a rollout ahead of the learner also draws from
        if self.fill_rounds and (not self.filter_zero_advantage or self.mode != "sync"):
            raise ValueError("train.fill_rounds > 0 needs train.filter_zero_advantage=true and train.mode=sync")
        return self


class RootConfig(_Section):
    """Everything a SimulRL command needs."""

    # sections of a pipeline config (``launch.py pipeline``) that this command's stage drops
    OTHER_STAGES: ClassVar[tuple[str, ...]] = ("sft", "scoreboard")

    run: RunConfig = Field(default_factory=RunConfig, description="run directory and seed")
    data: DataConfig = Field(default_factory=DataConfig, description="data sets")
    model: ModelConfig = Field(default_factory=ModelConfig, description="policy model")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="rollout workers")
    reward: RewardConfig = Field(default_factory=RewardConfig, description="reward service")
    learner: LearnerConfig = Field(default_factory=LearnerConfig, description="GRPO learner ranks")
    train: TrainConfig = Field(default_factory=TrainConfig, description="training loop")
    ray: RayConfig = Field(default_factory=RayConfig, description="Ray cluster")
