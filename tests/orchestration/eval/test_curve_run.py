"""The scoreboard of an eval run: ``launch.py score --curve DIR`` on hand-built run directories
(and its errors), the curve cache key, and ``launch.py eval`` reusing cached wait-k settings
(the decoder replaced by a stand-in that writes the files an EvalActor writes, so no engine
or Ray starts)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import launch
from orchestration.eval import command as eval_cmd
from orchestration.eval import curve_cache
from orchestration.eval.config import load_eval_config
from orchestration.eval.curve_cache import CurveCache, curve_key, key_digest
from orchestration.eval.score import read_instances, summarize
from tests.orchestration.eval.curve_data import record, references, write


def _setting(run: Path, name: str, params: dict, rows: list[dict]) -> None:
    """settings/NAME/{instances.jsonl,scores.json} as `launch.py eval` writes them."""
    path = write(run / "settings" / name / "instances.jsonl", rows)
    scores = summarize(read_instances(path, "word"), "word")
    (run / "settings" / name / "scores.json").write_text(json.dumps(
        {"setting": name, "line": params["type"], "policy": params["type"], "params": params, **scores}))


@pytest.fixture
def run_dir(tmp_path):
    run, refs = tmp_path / "run", references(24)
    for k in (1, 3, 5):
        _setting(run, f"waitk-k{k}", {"type": "waitk", "k": k}, [record(i, r, k, 0.6 - 0.1 * k) for i, r in enumerate(refs)])
    _setting(run, "waitk-k3-expost", {"type": "waitk", "k": 3, "positions": "expost", "source_slots": 64},
             [record(i, r, 3, 0.1) for i, r in enumerate(refs)])
    _setting(run, "lsg-L1-U4-exact", {"type": "lsg", "L": 1, "U": 4},
             [record(i, r, 2, 0.05) for i, r in enumerate(refs)])
    _setting(run, "offline", {"type": "offline"}, [record(i, r, 12, 0.0) for i, r in enumerate(refs)])
    return run


def _scores(run: Path, name: str) -> dict:
    return json.loads((run / "settings" / name / "scores.json").read_text())


def test_score_curve_scores_every_setting_against_the_wait_k_curve(run_dir, capsys):
    assert launch.main(["score", "--curve", str(run_dir), "--replicates", "200", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    board = json.loads((run_dir / "scoreboard.json").read_text())
    assert [(c["k"], c["setting"]) for c in board["curve"]] == [(1, "waitk-k1"), (3, "waitk-k3"), (5, "waitk-k5")]
    points = {p["setting"]: p for p in board["points"]}
    assert set(points) == {"lsg-L1-U4-exact", "offline", "waitk-k3-expost"}   # ExPosST wait-k is a point
    assert (board["replicates"], board["seed"], board["sentences"]) == (200, 3, 24)
    # the distance from the files' own scores: the LSG point's BLEU minus the line between the
    # wait-k settings whose LAAL brackets its LAAL
    lsg = _scores(run_dir, "lsg-L1-U4-exact")
    wk = {k: _scores(run_dir, f"waitk-k{k}") for k in (1, 3, 5)}
    lo, hi = next((a, b) for a, b in ((1, 3), (3, 5)) if wk[a]["LAAL"] <= lsg["LAAL"] <= wk[b]["LAAL"])
    t = (lsg["LAAL"] - wk[lo]["LAAL"]) / (wk[hi]["LAAL"] - wk[lo]["LAAL"])
    want = lsg["BLEU"] - (wk[lo]["BLEU"] + t * (wk[hi]["BLEU"] - wk[lo]["BLEU"]))
    cell = points["lsg-L1-U4-exact"]["distance"]["LAAL"]["BLEU"]
    assert cell["diff"] == pytest.approx(want, abs=1e-9) and cell["bracket"] == [lo, hi]
    assert points["lsg-L1-U4-exact"]["quality"]["BLEU"] == pytest.approx(lsg["BLEU"], abs=1e-9)
    assert points["offline"]["distance"]["LAAL"]["chrF"] == {"diff": None, "outside": "above"}
    assert "lsg-L1-U4-exact" in out and "above range" in out and "scoreboard.json" in out


def test_score_curve_needs_two_wait_k_settings(run_dir, capsys):
    for k in (1, 5):
        (run_dir / "settings" / f"waitk-k{k}" / "scores.json").unlink()   # unfinished
    assert launch.main(["score", "--curve", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert str(run_dir) in err and "found k = [3]" in err and "add wait-k with k = 1" in err
    assert not (run_dir / "scoreboard.json").exists()


def test_score_curve_refuses_different_sentences(run_dir, capsys):
    rows = [json.loads(line) for line in (run_dir / "settings" / "offline" / "instances.jsonl").read_text().splitlines()]
    write(run_dir / "settings" / "offline" / "instances.jsonl", rows[:-1])
    assert launch.main(["score", "--curve", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "settings/offline/instances.jsonl" in err and "different sentences" in err and "[23]" in err


def test_score_takes_instances_or_curve_not_both(run_dir, capsys):
    with pytest.raises(SystemExit) as exc:
        launch.main(["score", "--curve", str(run_dir), "--instances", "x.jsonl"])
    assert exc.value.code == 2 and "not allowed with" in capsys.readouterr().err
    assert launch.main(["score", "--curve", str(run_dir / "nowhere")]) == 2
    assert "no settings/ directory" in capsys.readouterr().err


# --- the cache key -----------------------------------------------------------------------------

SRC = ["Die Katze sitzt auf der Matte .", "Der Zug nach Berlin hat heute Verspätung .",
       "Wir übersetzen den Satz , während der Sprecher noch redet .", "Guten Morgen ."]
REF = ["The cat sits on the mat .", "The train to Berlin is late today .",
       "We translate the sentence while the speaker is still talking .", "Good morning ."]


def _model(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text('{"model_type": "qwen2"}')
    (root / "model.safetensors").write_bytes(b"\0" * 64)
    return root


def _sources(texts=SRC) -> list[dict]:
    return [{"index": i, "text": s, "reference": r, "src_lang": "de", "tgt_lang": "en"}
            for i, (s, r) in enumerate(zip(texts, REF))]


def test_cache_key_changes_with_every_input(tmp_path, monkeypatch):
    model = _model(tmp_path / "model")
    cfg = load_eval_config(None, [f"model.path={model}", "model.dtype=float32"])
    base = key_digest(curve_key(cfg, "vllm", "newstest2015_deen", _sources()))

    def digest(overrides=(), backend="vllm", dataset="newstest2015_deen", sources=None):
        c = load_eval_config(None, [f"model.path={model}", "model.dtype=float32", *overrides])
        return key_digest(curve_key(c, backend, dataset, sources if sources is not None else _sources()))

    assert digest() == base
    changed = {
        "system prompt": digest(["eval.system_prompt=Translate {src_lang} to {tgt_lang}."]),
        "max_tokens_per_unit": digest(["eval.max_tokens_per_unit=9"]),
        "max_new_tokens_final": digest(["eval.max_new_tokens_final=100"]),
        "dtype": digest(["model.dtype=bfloat16"]),
        "device": digest(["rollout.num_gpus_per_worker=1.0"]),
        "backend": digest(backend="hf"),
        "data set": digest(dataset="newstest2016_deen"),
        "indices": digest(sources=_sources()[:3]),
        "texts": digest(sources=_sources([SRC[0] + " !", *SRC[1:]])),
        "model path": key_digest(curve_key(load_eval_config(None, [f"model.path={_model(tmp_path / 'other')}",
                                                                    "model.dtype=float32"]),
                                           "vllm", "newstest2015_deen", _sources())),
    }
    st = (model / "config.json").stat()
    os.utime(model / "config.json", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    changed["config.json mtime"] = digest()
    (model / "model.safetensors").write_bytes(b"\1" * 65)
    changed["weights"] = digest()
    monkeypatch.setattr(curve_cache, "CURVE_FORMAT", curve_cache.CURVE_FORMAT + 1)
    changed["CURVE_FORMAT"] = digest()
    monkeypatch.undo()
    for what, value in changed.items():
        assert value != base, what
    assert len(set(changed.values())) == len(changed)
    # what a wait-k result does not depend on leaves the key alone
    now = digest()
    assert digest(["eval.batch_size=7", "eval.plot_quality=chrF", "eval.curve_replicates=10",
                   "eval.settings=[{type: offline}]"]) == now


def test_cache_stores_atomically_and_checks_what_it_holds(tmp_path):
    src = tmp_path / "run" / "settings" / "waitk-k2"
    _setting(tmp_path / "run", "waitk-k2", {"type": "waitk", "k": 2}, [record(0, "a b c", 2, 0.0)])
    cache = CurveCache(tmp_path / "cache", {"format": 1})
    assert cache.lookup(2) is None and cache.store(2, src)
    assert json.loads((cache.dir / "key.json").read_text()) == {"format": 1}
    assert not cache.store(2, src)                                # present already
    assert sorted(p.name for p in cache.dir.iterdir()) == ["key.json", "waitk-k2"]   # no temp left
    assert cache.lookup(3) is None and not cache.store(3, src)    # k=3 is not what the files say
    (cache.entry(2) / "scores.json").write_text("{half")
    assert cache.lookup(2) is None                                # unreadable: not reused


# --- launch.py eval with the cache ---------------------------------------------------------------


def _fake_run_group(ran: list[str]):
    """Stands in for the EvalActor: writes instances.jsonl and scores.json for each setting."""
    def run_group(cfg, backend, lora, todo, sources, run_dir, meta, model=None):
        out = []
        for s, fp in todo:
            ran.append(s.name)
            k = {"waitk": s.params.get("k"), "learned": 2}.get(s.params["type"], 99)
            rows = []
            for src in sources:
                n = len(src["text"].split())
                wrong = 0.0 if s.params["type"] != "waitk" else max(0.0, 0.6 - 0.15 * k)
                rows.append(record(src["index"], src["reference"], min(k, n), wrong, source_length=n))
            d = run_dir / "settings" / s.name
            write(d / "instances.jsonl", rows)
            scores = {"setting": s.name, "line": s.line, "policy": s.params["type"], "params": s.params,
                      **summarize(read_instances(d / "instances.jsonl", "word"), "word"), **meta,
                      "backend": backend, "fingerprint": fp, "stats": {"wall_s": 0.0}}
            (d / "scores.json").write_text(json.dumps(scores))
            out.append(scores)
        return out
    return run_group


@pytest.fixture
def eval_setup(tmp_path, monkeypatch):
    data = tmp_path / "data" / "newstest2015_deen"
    data.mkdir(parents=True)
    (data / "src.txt").write_text("\n".join(SRC) + "\n")
    (data / "ref.txt").write_text("\n".join(REF) + "\n")
    model = _model(tmp_path / "model")
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(f"""
data: {{dir: {tmp_path / 'data'}, test: newstest2015_deen, limit: 3}}
model: {{path: {model}, dtype: float32}}
eval:
  curve_k: [1, 3]
  curve_cache: {tmp_path / 'curves'}
  curve_replicates: 50
  settings:
    - {{type: learned}}
    - {{type: offline}}
""")
    monkeypatch.setattr(eval_cmd, "start_ray", lambda *a, **k: False)
    ran: list[str] = []
    monkeypatch.setattr(eval_cmd, "run_group", _fake_run_group(ran))
    return tmp_path, str(cfg), ran


def test_eval_reuses_a_cached_wait_k_curve(eval_setup, capsys):
    tmp, cfg, ran = eval_setup
    assert launch.main(["eval", "--config", cfg, f"run.dir={tmp / 'first'}"]) == 0
    assert sorted(ran) == ["learned-base", "offline", "waitk-k1", "waitk-k3"]   # curve_k added two
    [key_dir] = [p for p in (tmp / "curves").iterdir()]
    key = json.loads((key_dir / "key.json").read_text())
    assert key["data"]["indices"] == [0, 1, 2] and key["model"]["files"]["config.json"]
    summary = json.loads((tmp / "first" / "summary.json").read_text())
    assert [c["k"] for c in summary["scoreboard"]["curve"]] == [1, 3]
    rows = {r["setting"]: r for r in summary["rows"]}
    assert "scoreboard" in rows["learned-base"] and "scoreboard" not in rows["waitk-k1"]
    assert rows["learned-base"]["scoreboard"]["distance"]["LAAL"]["BLEU"]["diff"] is not None
    assert (tmp / "first" / "scoreboard.json").is_file() and (tmp / "first" / "curves.png").stat().st_size > 1000
    assert "BLEU-curve@LAAL" in capsys.readouterr().out

    # A second run directory: the wait-k settings come from the cache, the others are decoded.
    ran.clear()
    assert launch.main(["eval", "--config", cfg, f"run.dir={tmp / 'second'}"]) == 0
    assert sorted(ran) == ["learned-base", "offline"]
    assert "waitk-k1: reused from the curve cache" in capsys.readouterr().out
    for name in ("waitk-k1", "waitk-k3"):
        assert (tmp / "second" / "settings" / name / "instances.jsonl").read_bytes() == \
            (tmp / "first" / "settings" / name / "instances.jsonl").read_bytes()
    assert json.loads((tmp / "second" / "summary.json").read_text())["scoreboard"]["points"] == summary["scoreboard"]["points"]

    # Resuming that directory keeps its (copied) settings through the run's own fingerprint.
    ran.clear()
    assert launch.main(["eval", "--config", cfg, f"run.dir={tmp / 'second'}"]) == 0
    assert ran == [] and "waitk-k3: finished earlier, kept" in capsys.readouterr().out

    # A decoder input in the key (eval.max_new_tokens_final) makes a new curve.
    assert launch.main(["eval", "--config", cfg, f"run.dir={tmp / 'third'}", "eval.max_new_tokens_final=100"]) == 0
    assert {"waitk-k1", "waitk-k3"} <= set(ran) and len(list((tmp / "curves").iterdir())) == 2


def test_an_empty_curve_k_turns_the_curve_off(eval_setup):
    tmp, cfg, ran = eval_setup
    assert launch.main(["eval", "--config", cfg, f"run.dir={tmp / 'off'}", "eval.curve_k=[]"]) == 0
    assert sorted(ran) == ["learned-base", "offline"]
    assert "scoreboard" not in json.loads((tmp / "off" / "summary.json").read_text())
    assert not (tmp / "curves").exists()
