"""launch.py sft: config errors, the starting-policy path for `train`, the exported model, and
(slow) a whole SFT run of the tiny model through the DeepSpeed learner."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import launch
from orchestration.config_loader import load_config
from orchestration.errors import UserInputError
from orchestration.training.dev_instances import PAIRED_METRICS, read_instances
from orchestration.training.sft_config import SftConfig, SftRootConfig
from orchestration.training.learners import policy_path
from tests.tiny_data import build_tiny_data


def test_sft_fields_are_documented_and_bounded():
    for name, field in SftConfig.model_fields.items():
        assert field.description, name


def test_unknown_sft_key_names_the_dotted_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sft:\n  lag: 3\n")
    assert launch.main(["sft", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "sft.lag: unknown key (did you mean sft.lag_k?)" in err and str(bad) in err
    assert launch.main(["sft", "sft.epochs=0"]) == 2
    assert "sft.epochs" in capsys.readouterr().err


def test_train_keys_set_for_sft_are_refused_but_a_base_may_bring_them(tmp_path, capsys):
    """sft ignores the train section: inherited from a base training config it is fine, written
    into the SFT config or given on the command line it is an error naming every key."""
    base = tmp_path / "train.yaml"
    base.write_text("train:\n  steps: 5\nlearner:\n  kl_beta: 0.0\n")
    ok = tmp_path / "sft.yaml"
    ok.write_text("base: train.yaml\nsft:\n  epochs: 2\n")
    assert load_config(ok, schema=SftRootConfig).sft.epochs == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: train.yaml\ntrain:\n  steps: 3\n  dev_size: 4\n")
    assert launch.main(["sft", "--config", str(bad), "train.eval_every=2"]) == 2
    err = capsys.readouterr().err
    for key in ("train.steps", "train.dev_size", "train.eval_every"):
        assert f"{key}: not used by this command" in err
    assert err.count("\n") == 3 and str(bad) in err


def test_sft_refuses_a_kl_term_and_defaults_to_none(tmp_path, capsys):
    assert load_config(None, schema=SftRootConfig).learner.kl_beta == 0.0
    assert launch.main(["sft", "learner.kl_beta=0.02"]) == 2
    assert "learner.kl_beta=0.02: SFT has no KL term" in capsys.readouterr().err


def test_shipped_sft_configs_load():
    root = Path(__file__).resolve().parents[3]
    for f in ("configs/sft/demo-deen.yaml", "configs/bench/sft-cpu.yaml"):
        cfg = load_config(root / f, schema=SftRootConfig)
        assert cfg.sft.lag_k == 3 and cfg.learner.kl_beta == 0.0


def test_init_from_names_the_sft_model_directory(tmp_path):
    cfg = load_config(None, [f"model.init_from={tmp_path}"])
    with pytest.raises(UserInputError, match="model.init_from"):
        policy_path(cfg)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    assert policy_path(cfg) == str((tmp_path / "model").resolve())


def test_simulmask_layout_has_no_interleaved_dev_rollouts(capsys):
    assert load_config(None, ["sft.layout=simulmask"], schema=SftRootConfig).sft.eval_rollouts is False
    assert load_config(None, schema=SftRootConfig).sft.eval_rollouts is True
    assert launch.main(["sft", "sft.layout=simulmask", "sft.eval_rollouts=true"]) == 2
    assert "sft.eval_rollouts=true: the dev rollouts use the interleaved layout" in capsys.readouterr().err


def _tiny_sft(tiny_model_dir: Path, tmp_path: Path, *extra: str) -> Path:
    data = build_tiny_data(tmp_path / "data")
    run = tmp_path / "run"
    assert launch.main(["sft", f"model.path={tiny_model_dir}", "model.dtype=float32", f"data.dir={data}",
                        f"run.dir={run}", "learner.dtype=float32", "learner.lr=0.05", "learner.torch_threads=1",
                        "learner.num_cpus_per_rank=0", "ray.num_cpus=2", "sft.tensorboard=false",
                        "sft.epochs=3", "sft.batch_size=4", "sft.dev_size=4", "sft.min_source_units=4",
                        "sft.eval_rollouts=false", "rollout.episode.chunk_size=3", *extra]) == 0
    return run


@pytest.mark.slow
def test_simulmask_sft_run_exports_a_model_with_its_source_slots(tiny_model_dir, tmp_path, capsys):
    """sft.layout=simulmask trains one prefix-layout pass per pair through the DeepSpeed learner
    (its loss falling is tests/learner/test_sft_step.py's) and records the source slots that
    ExPosST inference must use."""
    run = _tiny_sft(tiny_model_dir, tmp_path, "sft.layout=simulmask", "sft.source_slots=96")
    assert "(simulmask training" in capsys.readouterr().out
    note = json.loads((run / "model" / "sft_provenance.json").read_text())
    assert note["layout"] == "simulmask" and note["source_slots"] == 96
    history = json.loads((run / "summary.json").read_text())["history"]
    assert history["train-epoch-3"]["steps"] >= 2 and history["epoch-3"]["loss"] != history["before"]["loss"]
    from orchestration.eval.config import expost_slots

    assert expost_slots(run / "model") == 96


@pytest.mark.slow
def test_sft_run_lowers_dev_loss_and_writes_a_model_train_accepts(tiny_model_dir, tmp_path, capsys):
    run = _tiny_sft(tiny_model_dir, tmp_path, "sft.eval_rollouts=true", "rollout.num_cpus_per_worker=0",
                    "rollout.engine.cpu_kv_cache_gib=1", "rollout.engine.max_model_len=1024",
                    "rollout.episode.max_new_tokens_per_step=4", "rollout.episode.max_new_tokens_final=8")
    assert json.loads((run / "model" / "sft_provenance.json").read_text())["layout"] == "interleaved"
    out = capsys.readouterr().out
    assert "(interleaved training, prefix episodes" in out and "model.init_from=" in out
    summary = json.loads((run / "summary.json").read_text())
    history = summary["history"]
    assert history["epoch-3"]["loss"] < history["before"]["loss"]
    # the greedy dev rollouts before and after, per sentence, and their paired intervals
    before, after = (read_instances(run / "dev" / tag / "instances.jsonl") for tag in ("before", "epoch-3"))
    assert [r["index"] for r in before] == [r["index"] for r in after] and len(before) == 4
    assert all(r["reference"] and r["source_length"] > 0 for r in before + after)
    assert set(summary["paired"]) == set(PAIRED_METRICS)
    q = summary["paired"]["quality"]
    assert q["n"] == 4 and q["low"] <= q["diff"] <= q["high"]
    assert q["before"] == pytest.approx(history["before"]["quality"])
    assert q["after"] == pytest.approx(history["epoch-3"]["quality"])
    assert "dev reward" in out and "95% interval" in out
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-3"
    assert (run / "checkpoints" / "step-3" / "adapter" / "adapter_config.json").is_file()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = run / "model"
    AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    moved = [n for n, p in model.state_dict().items() if not p.equal(base.state_dict()[n])]
    assert moved and all("q_proj" in n or "v_proj" in n for n in moved)   # the merged LoRA targets only
    cfg = load_config(None, [f"model.init_from={run}"])
    assert policy_path(cfg) == str(model_dir.resolve())
