"""Every YAML file under configs/ loads with the schema of the command that reads it and names
data sets that exist in the role that command uses them for. A new config file fails this test
until it is listed here, so no shipped config goes unchecked."""
from __future__ import annotations

from pathlib import Path

import pytest

from orchestration.config import RootConfig
from orchestration.config_loader import load_config
from orchestration.data import get_spec
from orchestration.eval.config import expand_settings, load_eval_config
from orchestration.training.sft_config import SftRootConfig

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"

# config file (relative to configs/) -> the command that reads it
COMMANDS = {
    "default.yaml": "pipeline",
    "demo-1.5b.yaml": "pipeline",
    "cluster-8gpu.yaml": "train",
    **{f"ablations/{p.name}": "train" for p in (CONFIGS / "ablations").glob("*.yaml")},
    "bench/rollout-cpu.yaml": "bench-rollout",
    "bench/reward-chrf.yaml": "bench-reward",
    "bench/metrics.yaml": "bench-metrics",
    "bench/train-cpu.yaml": "train",
    "bench/sync-cpu.yaml": "train",
    "bench/scaling-cpu.yaml": "train",
    "bench/sft-cpu.yaml": "sft",
    "sft/demo-deen.yaml": "sft",
    "sft/demo-deen-simulmask.yaml": "sft",
    "eval/newstest2015-deen-cpu.yaml": "eval",
    "eval/heldout-deen-cpu.yaml": "eval",
    "eval/heldout-arms-deen-cpu.yaml": "eval",
    "eval/heldout-deen-1.5b-cpu.yaml": "eval",
    "eval/simulmask-deen-cpu.yaml": "eval",
    "eval/lsg-paper-levels.yaml": "eval",
    "eval/checkpoints.yaml": "eval",
    "sweeps/reward-ablation-cpu.yaml": "sweep",
}


def test_every_shipped_config_is_listed():
    shipped = sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.yaml"))
    assert shipped == sorted(COMMANDS)
    assert len(shipped) >= 20


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_shipped_config_validates(name):
    path, command = CONFIGS / name, COMMANDS[name]
    if command == "sweep":
        from orchestration.training.sweep import check_all, expand, load_sweep

        sweep, base = load_sweep(path)
        check_all(sweep, base, expand(sweep), REPO / "runs" / "sweeps" / path.stem)   # every run validates
        return
    if command == "eval":
        cfg = load_eval_config(str(path))
        settings = expand_settings(cfg.eval)
        assert settings and len({s.name for s in settings}) == len(settings)
        assert get_spec(cfg.data.test).role == "test"
        return
    if command == "pipeline":     # the main job: every stage's config validates too
        from orchestration.training.pipeline_config import PipelineRootConfig

        pipe = load_config(path, schema=PipelineRootConfig)
        pipe.sft_stage(), pipe.training()
        command = "train"
    cfg = load_config(path, schema=SftRootConfig if command == "sft" else RootConfig)
    assert cfg.model.dtype in ("bfloat16", "float32") and cfg.learner.dtype in ("bfloat16", "float32")
    if command in ("train", "sft"):
        assert get_spec(cfg.data.train).role == "train"
        assert get_spec(cfg.data.dev).role == "dev"
        assert cfg.rollout.sampling.group_size >= 2 or command == "sft"   # GRPO needs a group
    if command == "bench-rollout":
        assert get_spec(cfg.data.test).role == "test" and cfg.data.limit == 16
    if command == "bench-reward":
        assert cfg.reward.quality == "chrf"


def test_cluster_config_splits_eight_gpus():
    cluster = load_config(CONFIGS / "cluster-8gpu.yaml")
    gpus = (cluster.rollout.num_workers * cluster.rollout.num_gpus_per_worker + cluster.reward.replicas
            + cluster.learner.num_ranks * cluster.learner.num_gpus_per_rank)
    assert gpus == 8 and cluster.reward.device == "cuda"
