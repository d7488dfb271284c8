"""launch.py eval: config errors, sweep expansion, the whole command on the tiny model
(transformers backend; one vLLM run is marked slow), scores equal to the simuleval package's
and to OmniSTEval's (the IWSLT 2026 scorer) read from the same instances file, and resuming
without redoing finished settings."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

import launch
from orchestration.config_loader import ConfigError
from orchestration.errors import UserInputError
from orchestration.eval.config import expand_settings, load_eval_config

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # pydub (imported by simuleval) warns about ffmpeg
    from simuleval.evaluator.instance import LogInstance
    from simuleval.evaluator.scorers import latency_scorer as ls

SRC = ["Die Katze sitzt auf der Matte.", "Der Zug nach Berlin hat heute Verspätung.",
       "Wir übersetzen den Satz, während der Sprecher noch redet.", "Guten Morgen."]
REF = ["The cat sits on the mat.", "The train to Berlin is late today.",
       "We translate the sentence while the speaker is still talking.", "Good morning."]


def _yaml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "eval.yaml"
    path.write_text(text)
    return str(path)


def test_sweeps_expand_into_named_settings(tmp_path):
    cfg = load_eval_config(_yaml(tmp_path, """
eval:
  settings:
    - {type: waitk, k: [1, 3, 5, 7]}
    - {type: lsg, levels: [[1, 4], [3, 4], [5, 6], [7, 6]]}
    - {type: lsg, distribution: topk, kl: reverse, levels: [[1, 4]]}
    - {type: learned, checkpoint: [runs/a/checkpoints/step-4, runs/a/checkpoints/step-8], chunk_size: 3}
    - {type: offline}
"""))
    got = [(s.name, s.backend) for s in expand_settings(cfg.eval)]
    assert got == [("waitk-k1", "vllm"), ("waitk-k3", "vllm"), ("waitk-k5", "vllm"), ("waitk-k7", "vllm"),
                   ("lsg-L1-U4-exact", "vllm"), ("lsg-L3-U4-exact", "vllm"), ("lsg-L5-U6-exact", "vllm"),
                   ("lsg-L7-U6-exact", "vllm"), ("lsg-L1-U4-reverse-top20", "vllm"), ("learned-a-step-4-m3", "vllm"),
                   ("learned-a-step-8-m3", "vllm"), ("offline", "vllm")]


def test_episode_waitk_and_a_policy_with_its_own_model(tmp_path):
    """waitk with layout: episode is a setting of its own (not a curve point); a learned setting
    with its own model runs that model on its own engine."""
    from orchestration.eval.command import _groups
    from orchestration.eval.curve import is_curve_params

    cfg = load_eval_config(_yaml(tmp_path, """
eval:
  curve_k: []
  settings:
    - {type: waitk, k: 3, layout: episode}
    - {type: learned, model: runs/p/grpo/model}
    - {type: learned}
"""))
    settings = expand_settings(cfg.eval)
    assert [s.name for s in settings] == ["waitk-k3-episode", "learned-grpo", "learned-base"]
    assert settings[0].params == {"type": "waitk", "k": 3, "layout": "episode"} and not is_curve_params(settings[0].params)
    assert settings[1].params["model"] == "runs/p/grpo/model" and "model" not in settings[2].params
    assert [(m, [s.name for s in ss]) for _, _, m, ss in _groups(settings)] == \
        [(None, ["waitk-k3-episode", "learned-base"]), ("runs/p/grpo/model", ["learned-grpo"])]
    with pytest.raises(ConfigError, match="positions: expost is for the prefix layout"):
        load_eval_config(_yaml(tmp_path, "eval:\n  settings:\n    - {type: waitk, k: 3, layout: episode, "
                                         "positions: expost}\n"))


def test_a_missing_policy_model_is_refused_before_anything_starts(tmp_path, capsys):
    path = _yaml(tmp_path, f"eval:\n  settings:\n    - {{type: learned, model: {tmp_path / 'gone'}}}\n")
    assert launch.main(["eval", "--config", path, "data.test=newstest2015_deen", "data.limit=2"]) == 2
    assert "eval.settings: learned-gone: model" in capsys.readouterr().err


@pytest.mark.parametrize("text, message", [
    ("eval:\n  settings:\n    - {type: waitk, kk: 3}\n", r"eval\.settings\.0\.kk: unknown key; allowed here: type, k"),
    ("eval:\n  settings:\n    - {type: wait, k: 3}\n", r"eval\.settings\.0: unknown policy type 'wait'"),
    ("eval:\n  settings:\n    - {type: waitk, k: 0}\n", r"eval\.settings\.0\.k: Input should be greater"),
    ("eval:\n  settings:\n    - {type: lsg, levels: [[1, 4, 5]]}\n", r"eval\.settings\.0\.levels\.0"),
    ("eval:\n  setings: []\n", r"eval\.setings: unknown key"),
    ("eval:\n  settings: []\n", r"eval\.settings: List should have at least 1 item"),
])
def test_bad_config_names_the_dotted_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_eval_config(_yaml(tmp_path, text))


def test_bad_input_exits_2(tmp_path, capsys):
    path = _yaml(tmp_path, "eval:\n  settings:\n    - {type: waitk, k: 2}\n")
    assert launch.main(["eval", "--config", path, "eval.bogus=1"]) == 2
    assert "eval.bogus: unknown key" in capsys.readouterr().err
    missing = tmp_path / "nowhere"
    assert launch.main(["eval", "--config", path, f"data.dir={missing}"]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    (root / "newstest2015_deen").mkdir()
    (root / "newstest2015_deen" / "src.txt").write_text("\n".join(SRC) + "\n")
    (root / "newstest2015_deen" / "ref.txt").write_text("\n".join(REF) + "\n")
    return root


def _config(tmp_path: Path, model: Path, data: Path, backend: str, settings: str) -> str:
    return _yaml(tmp_path, f"""
run: {{dir: {tmp_path / 'run'}}}
data: {{dir: {data}, test: newstest2015_deen, limit: 3}}
model: {{path: {model}, dtype: float32}}
rollout:
  episode: {{max_new_tokens_per_step: 6, max_new_tokens_final: 12}}
  engine: {{cpu_kv_cache_gib: 1, max_model_len: 1024}}
  num_cpus_per_worker: 0
eval:
  backend: {backend}
  hf_batch_size: 4
  max_new_tokens_final: 12
  curve_k: []                    # only the listed settings (test_curve_run.py covers the curve)
  settings:
{settings}
""")


def _simuleval_latency(path: Path) -> dict[str, float]:
    """The simuleval package's corpus latency of an instances file (its own reader and scorers)."""
    instances = {}
    for line in path.read_text().splitlines():
        ins = LogInstance(line)
        instances[ins.index] = ins
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {name: scorer(instances) for name, scorer in
                (("AL", ls.ALScorer()), ("LAAL", ls.LAALScorer()), ("AP", ls.APScorer()), ("DAL", ls.DALScorer()),
                 # computation-aware on the log's elapsed field (SimulEval refuses it only for
                 # live text input, not for a log)
                 ("AL_CA", ls.ALScorer(computation_aware=True)),
                 ("LAAL_CA", ls.LAALScorer(computation_aware=True)))}


def _omnisteval_scores(path: Path) -> dict[str, float]:
    """OmniSTEval 0.1.10 shortform on an instances file, through its own reader and scorers."""
    from omnisteval.io import load_shortform_instances
    from omnisteval.scoring import evaluate_instances

    instances = load_shortform_instances(str(path), None, emission_cu_key="delays",
                                         emission_ca_key="elapsed")
    scores, _empty, _norm = evaluate_instances(instances, is_longform=False)
    names = {"bleu": "BLEU", "chrf": "chrF", "al": "AL", "laal": "LAAL", "ap": "AP", "dal": "DAL",
             "yaal": "YAAL", "ca_al": "AL_CA", "ca_laal": "LAAL_CA", "ca_yaal": "YAAL_CA",
             "swf": "SWF", "efsw": "EFSW", "dsptv": "DSPTV", "degenerate_policy": "degenerate_policy"}
    return {ours: scores[theirs] for theirs, ours in names.items()}


def assert_waitk_delays(row: dict, k: int) -> None:
    """wait-k's rule as an instance shows it: unit i's delay is min(k + i − 1, |X|), or the earlier
    delay of the unit before it (a token that held both was written whole; tests/rollout check
    which token each unit came from)."""
    d = row["delays"]
    for i, delay in enumerate(d):
        schedule = min(k + i, row["source_length"])
        assert delay == schedule or (i > 0 and delay == d[i - 1] < schedule), (k, d)


@pytest.mark.slow
def test_eval_command_end_to_end_and_resume(tmp_path, tiny_model_dir, data_dir, ray_local, monkeypatch):
    from orchestration.eval import command as eval_cmd

    cfg = _config(tmp_path, tiny_model_dir, data_dir, "hf", """    - {type: waitk, k: [1, 3]}
    - {type: waitk, k: 2, positions: expost, source_slots: 64}
    - {type: lsg, delta: 0.00002, alpha: 0.0037, levels: [[1, 3]], distribution: exact}
    - {type: learned, chunk_size: 2}
    - {type: offline}""")
    assert launch.main(["eval", "--config", cfg]) == 0
    run = tmp_path / "run"
    names = ["waitk-k1", "waitk-k3", "waitk-k2-expost", "lsg-L1-U3-exact", "learned-base-m2", "offline"]
    checked: list[str] = []
    checked_omni: list[str] = []
    assert (run / "curves.png").stat().st_size > 1000 and (run / "config.yaml").is_file()
    for name in names:
        path = run / "settings" / name / "instances.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert [r["index"] for r in rows] == [0, 1, 2]
        # SimulEval's fields; a setting in the episode layout also records each sentence's wait share
        episode = name.startswith("learned") or name.endswith("-episode")
        assert set(rows[0]) == {"index", "source", "prediction", "reference", "delays", "elapsed",
                                "source_length", "prediction_length"} | ({"wait_share"} if episode else set())
        scores = json.loads((run / "settings" / name / "scores.json").read_text())
        for key in ("BLEU", "chrF", "AL", "LAAL", "AP", "DAL", "YAAL", "AL_CA", "YAAL_CA", "degeneracy"):
            assert key in scores, (name, key)
        assert scores["forced_reads"]["beyond_bound"] == 0
        # elapsed is in source units: never below the delay, above it by the compute time
        assert all(e >= d for r in rows for d, e in zip(r["delays"], r["elapsed"]))
        # simuleval cannot average over an empty prediction's missing delays: the oracles score
        # the non-empty ones, which are exactly those our corpus means count
        assert scores["scored"] + scores["skipped_empty"] == 3 and scores["scored"] >= 1, name
        scored = tmp_path / f"{name}-scored.jsonl"
        scored.write_text("".join(json.dumps(r) + "\n" for r in rows if r["delays"]))
        oracle = _simuleval_latency(scored)
        for key, value in oracle.items():
            assert scores[key] == pytest.approx(value, abs=1e-9), (name, key)
        if scores["skipped_empty"] == 0:   # OmniSTEval scores every line of the file, empty ones too
            omni = _omnisteval_scores(path)
            flat = dict(scores, **scores["degeneracy"])
            for key, value in omni.items():
                if flat[key] is None:
                    assert value != value, (name, key)        # OmniSTEval's NaN
                else:
                    assert flat[key] == pytest.approx(value, abs=1e-9), (name, key)
            checked_omni.append(name)
        checked.append(name)
        if name.startswith("waitk"):
            k = int(name.split("-")[1][1:])
            for r in rows:
                assert_waitk_delays(r, k)
            # the look-ahead closing each word was discarded (one more generated token a word)
            assert scores["stats"]["discarded_lookahead"] > 0
    assert checked == names   # every setting went through the simuleval oracle
    assert len(checked_omni) >= 2, checked_omni   # and settings without an empty line through OmniSTEval
    assert json.loads((run / "settings" / "lsg-L1-U3-exact" / "scores.json").read_text())["distribution"] \
        .startswith("exact")

    # Re-running finds every setting finished: no actor is started, outputs are kept.
    stamp = (run / "settings" / "waitk-k1" / "scores.json").stat().st_mtime_ns
    monkeypatch.setattr(eval_cmd, "run_group", lambda *a, **k: pytest.fail("a finished setting was redone"))
    assert launch.main(["eval", "--config", cfg]) == 0
    assert (run / "settings" / "waitk-k1" / "scores.json").stat().st_mtime_ns == stamp

    # A changed setting (k=2 is new) is the only one run.
    ran = []
    monkeypatch.setattr(eval_cmd, "run_group", lambda cfg, b, lora, todo, *a: ran.extend(s.name for s, _ in todo)
                        or [json.loads((run / "settings" / "waitk-k1" / "scores.json").read_text())] * len(todo))
    assert launch.main(["eval", "--config", cfg, "eval.settings=[{type: waitk, k: [1, 2]}]"]) == 0
    assert ran == ["waitk-k2"]


@pytest.mark.slow
def test_eval_on_vllm(tmp_path, tiny_model_dir, data_dir, ray_local):
    """One tiny vLLM engine runs wait-k, LSG with top-K and with full-vocabulary distributions,
    and the learned layout."""
    cfg = _config(tmp_path, tiny_model_dir, data_dir, "vllm", """    - {type: waitk, k: 2}
    - {type: lsg, delta: 0.00002, alpha: 0.0037, levels: [[1, 3]], distribution: topk, top_k: 5}
    - {type: lsg, delta: 0.00002, alpha: 0.0037, levels: [[1, 3]]}
    - {type: learned, chunk_size: 2}""")
    assert launch.main(["eval", "--config", cfg]) == 0
    run = tmp_path / "run"
    lsg = json.loads((run / "settings" / "lsg-L1-U3-top5" / "scores.json").read_text())
    assert lsg["distribution"] == "top-5 approximation" and lsg["backend"] == "vllm"
    exact = json.loads((run / "settings" / "lsg-L1-U3-exact" / "scores.json").read_text())
    assert exact["distribution"] == "exact (full vocabulary, vllm)" and exact["stats"]["distribution_calls"] > 0
    for r in map(json.loads, (run / "settings" / "waitk-k2" / "instances.jsonl").read_text().splitlines()):
        assert_waitk_delays(r, 2)
    assert (run / "curves.png").is_file()


def test_expost_positions_need_their_slots(tmp_path, tiny_model_dir, data_dir, capsys):
    """positions: expost takes source_slots from the setting or the model's sft_provenance.json."""
    cfg = _config(tmp_path, tiny_model_dir, data_dir, "hf", "    - {type: waitk, k: 2, positions: expost}")
    assert launch.main(["eval", "--config", cfg]) == 2
    err = capsys.readouterr().err
    assert "waitk-k2-expost: positions=expost needs source_slots" in err and "sft_provenance.json" in err
    assert launch.main(["eval", "--config", cfg, "eval.settings=[{type: lsg, positions: expost}]"]) == 2
    assert "eval.settings.0.positions: unknown key" in capsys.readouterr().err


def test_pipeline_runs_join_as_learned_settings_on_their_own_models(tmp_path):
    from orchestration.eval.command import pipeline_settings

    run = tmp_path / "default-1"
    for stage in ("sft", "grpo"):
        (run / stage / "model").mkdir(parents=True)
        (run / stage / "model" / "config.json").write_text("{}")
    (run / "config.yaml").write_text("rollout:\n  episode:\n    layout: continue\n    chunk_size: 4\n")
    got = pipeline_settings([str(run)])
    assert [(s.name, s.line, s.params["model"]) for s in got] == [
        ("learned-default-1-sft", "SFT (default-1)", str(run / "sft" / "model")),
        ("learned-default-1-grpo", "SFT+GRPO (default-1)", str(run / "grpo" / "model"))]
    # decoded in the layout the run trained in
    assert all(s.params["episode"]["layout"] == "continue" and s.params["episode"]["chunk_size"] == 4 for s in got)
    with pytest.raises(UserInputError, match="eval.runs: .*holds a model"):
        pipeline_settings([str(tmp_path / "empty")])
