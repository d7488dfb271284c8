"""The placement plan and the cross-field config rules, as plain functions (no Ray), plus one
check against the session's real local Ray instance."""
from __future__ import annotations

import pytest

from orchestration.config import RootConfig
from orchestration.config_loader import ConfigError, load_config
from orchestration.config_rules import config_problems
from orchestration.placement import build_plan, fit_problems

NODE_8GPU = {"CPU": 64.0, "GPU": 8.0}


def cfg_of(path="configs/default.yaml", *overrides):
    return load_config(path, list(overrides))


def test_cluster_config_plans_every_actor_into_its_bundles():
    plan = build_plan(cfg_of("configs/cluster-8gpu.yaml"))
    groups = {g.name: g for g in plan.groups}
    assert set(groups) == {"rollout", "learner", "reward"}
    assert groups["rollout"].bundles == [{"CPU": 4.0, "GPU": 1.0}] * 4
    assert groups["learner"].bundles == [{"CPU": 4.0, "GPU": 1.0}] * 3
    assert groups["reward"].bundles == [{"CPU": 2.0, "GPU": 1.0}]
    assert plan.totals() == {"CPU": 30.0, "GPU": 8.0}
    assert [(s.group, s.bundles) for s in plan.rollout] == [("rollout", [i]) for i in range(4)]
    assert [(s.group, s.bundles) for s in plan.learner] == [("learner", [i]) for i in range(3)]
    assert fit_problems(plan, NODE_8GPU, [NODE_8GPU]) == []


def test_tensor_parallel_engine_gets_one_bundle_per_gpu_on_one_node():
    cfg = cfg_of("configs/cluster-8gpu.yaml", "rollout.num_workers=2", "rollout.engine.tensor_parallel_size=2",
                 "rollout.num_gpus_per_worker=2")
    plan = build_plan(cfg)
    engines = [g for g in plan.groups if g.name.startswith("rollout-")]
    assert [g.strategy for g in engines] == ["STRICT_PACK"] * 2
    assert engines[0].bundles == [{"CPU": 4.0, "GPU": 1.0}, {"GPU": 1.0}]
    slot = plan.rollout[1]
    assert (slot.group, slot.bundles, slot.num_gpus) == ("rollout-1", [0, 1], 0.0)
    assert slot.env == {"VLLM_RAY_PER_WORKER_GPUS": "1", "VLLM_RAY_BUNDLE_INDICES": "0,1"}
    assert plan.totals()["GPU"] == 8.0
    # two nodes of 4 GPUs hold it; nodes of 1 GPU cannot hold a 2-GPU engine
    four = {"CPU": 32.0, "GPU": 4.0}
    assert fit_problems(plan, {"CPU": 64.0, "GPU": 8.0}, [four, four]) == []
    one = {"CPU": 8.0, "GPU": 1.0}
    problems = fit_problems(plan, {"CPU": 64.0, "GPU": 8.0}, [one] * 8)
    assert problems and "rollout-0" in problems[0] and "tensor_parallel_size" in problems[0]


def test_colocate_shares_bundle_i_between_learner_rank_i_and_an_engine():
    cfg = cfg_of("configs/cluster-8gpu.yaml", "ray.placement=colocate", "rollout.num_workers=4",
                 "learner.num_ranks=4", "learner.num_gpus_per_rank=0.5", "rollout.num_gpus_per_worker=0.5",
                 "rollout.engine.gpu_memory_utilization=0.4")
    plan = build_plan(cfg)
    shared = [g for g in plan.groups if g.name == "colocated"][0]
    assert shared.bundles == [{"CPU": 8.0, "GPU": 1.0}] * 4
    assert [(s.group, s.bundles, s.num_gpus) for s in plan.learner] == [("colocated", [i], 0.5) for i in range(4)]
    assert [(s.group, s.bundles, s.num_gpus) for s in plan.rollout] == [("colocated", [i], 0.5) for i in range(4)]
    assert plan.totals()["GPU"] == 5.0     # 4 shared + 1 reward


def test_roles_without_resources_get_no_bundle_and_custom_resources_pin_roles():
    plan = build_plan(cfg_of("configs/default.yaml", "learner.num_cpus_per_rank=0", "rollout.num_cpus_per_worker=0"))
    assert plan.groups == [] and all(s.group is None for s in plan.rollout + plan.learner + plan.reward)
    plan = build_plan(cfg_of("configs/default.yaml", "ray.learner_resources={node_a: 1}",
                             "ray.rollout_resources={node_b: 1}", "ray.reward_resources={node_b: 0.5}"))
    groups = {g.name: g.bundles for g in plan.groups}
    assert groups == {"learner": [{"CPU": 1.0, "node_a": 1.0}], "rollout": [{"CPU": 1.0, "node_b": 1.0}],
                      "reward": [{"node_b": 0.5}]}


def test_a_plan_too_big_for_the_cluster_names_the_keys_and_numbers():
    plan = build_plan(cfg_of("configs/cluster-8gpu.yaml"))
    problems = fit_problems(plan, {"CPU": 2.0}, [{"CPU": 2.0}])
    assert len(problems) == 2
    gpu = [p for p in problems if p.startswith("GPU")][0]
    assert "asks for 8, the cluster has 0" in gpu
    for key in ("rollout.num_workers × rollout.num_gpus_per_worker = 4", "learner.num_ranks × learner.num_gpus_per_rank = 3",
                "reward.replicas × 1 (reward.device=cuda) = 1"):
        assert key in gpu
    cpu = [p for p in problems if p.startswith("CPU")][0]
    assert "asks for 30, the cluster has 2" in cpu and "learner.num_ranks × learner.num_cpus_per_rank = 12" in cpu


def test_cross_field_rules_report_every_problem_at_once(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: %s\nlearner:\n  lora:\n    enabled: false\nrollout:\n  weight_sync: merged\n"
                   "  engine:\n    tensor_parallel_size: 2\n    max_model_len: 128\n  episode:\n"
                   "    max_new_tokens_final: 128\nreward:\n  device: cuda\n" % (
                       (__import__("pathlib").Path("configs/default.yaml").resolve())))
    with pytest.raises(ConfigError) as err:
        load_config(bad, ["rollout.sampling.group_size=1"])
    text = str(err.value)
    for key in ("rollout.weight_sync=merged", "rollout.engine.tensor_parallel_size=2", "reward.device=cuda",
                "rollout.episode.max_new_tokens_final=128", "rollout.sampling.group_size=1"):
        assert key in text, key
    assert "5 inconsistent setting(s)" in text and "command-line overrides" in text


def test_adapter_sync_rules():
    cfg = RootConfig.model_validate({"rollout": {"weight_sync": "adapter"}})
    assert config_problems(cfg) == ["rollout.weight_sync=adapter: needs rollout.engine.enable_lora=true"]
    cfg = RootConfig.model_validate({"rollout": {"weight_sync": "adapter", "engine": {"enable_lora": True,
                                                                                         "max_lora_rank": 4}}})
    assert config_problems(cfg) == ["rollout.engine.max_lora_rank=4: below learner.lora.r=8; the engine would "
                                    "refuse the adapter"]
    assert config_problems(cfg_of("configs/cluster-8gpu.yaml")) == []


def test_the_pipeline_is_held_to_the_rules_of_its_grpo_stage():
    """A pipeline config has an sft section, yet its GRPO stage trains: the GRPO rules apply to it,
    and only an sft root (which ignores its train section) is spared them."""
    from orchestration.training.pipeline_config import PipelineRootConfig
    from orchestration.training.sft_config import SftRootConfig

    for over, key in (("rollout.sampling.group_size=1", "rollout.sampling.group_size=1: GRPO compares"),
                      ("learner.lora.enabled=false", "rollout.weight_sync=merged: merges a LoRA delta")):
        with pytest.raises(ConfigError, match=key):
            load_config("configs/default.yaml", [over], schema=PipelineRootConfig)
        with pytest.raises(ConfigError, match=key):
            load_config("configs/default.yaml", [over])
    # an SFT stage without LoRA exports full weights: merged is no problem there
    cfg = load_config("configs/sft/demo-deen.yaml", ["learner.lora.enabled=false"], schema=SftRootConfig)
    assert cfg.rollout.weight_sync == "merged" and config_problems(cfg) == []


@pytest.mark.slow
def test_reserving_more_than_the_local_cluster_fails_at_once(ray_local):
    from orchestration.errors import UserInputError
    from orchestration.placement import reserve

    plan = build_plan(cfg_of("configs/cluster-8gpu.yaml"))
    with pytest.raises(UserInputError) as err:
        reserve(plan, timeout_s=5)
    assert "GPU: the config asks for 8, the cluster has 0" in str(err.value)


def test_weight_group_backend_is_nccl_only_between_whole_gpus_of_their_own():
    from orchestration.weight_sync import backend_for

    assert backend_for(cfg_of("configs/cluster-8gpu.yaml")) == "nccl"
    assert backend_for(cfg_of("configs/default.yaml")) == "gloo"
    shared = cfg_of("configs/cluster-8gpu.yaml", "learner.num_gpus_per_rank=0.5", "rollout.num_gpus_per_worker=0.5")
    assert backend_for(shared) == "gloo"      # Ray may pack both onto one GPU: NCCL would refuse


def test_reserved_slots_give_ray_options_with_strategy_and_env():
    from orchestration.placement import Reserved, Slot

    pg = object()
    opts = Reserved({"rollout-0": pg}).options(Slot("rollout-0", [0, 1], 4.0, 0.0, {"VLLM_RAY_BUNDLE_INDICES": "0,1"}))
    strategy = opts.pop("scheduling_strategy")
    assert opts == {"num_cpus": 4.0, "num_gpus": 0.0, "runtime_env": {"env_vars": {"VLLM_RAY_BUNDLE_INDICES": "0,1"}}}
    assert strategy.placement_group is pg and strategy.placement_group_bundle_index == 0
    assert strategy.placement_group_capture_child_tasks is True
    assert Reserved({}).options(Slot(None, [], 0.0, 0.0)) == {"num_cpus": 0.0, "num_gpus": 0.0}
