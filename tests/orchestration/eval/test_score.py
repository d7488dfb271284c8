"""``launch.py score``: SimulEval-equal corpus latency, BLEU/chrF, per-instance output, errors."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import sacrebleu

from orchestration.errors import UserInputError
from orchestration.eval.score import main as score_main

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # pydub (imported by simuleval) warns about ffmpeg
    from simuleval.evaluator.instance import LogInstance
    from simuleval.evaluator.scorers import latency_scorer as ls

REPO = Path(__file__).resolve().parents[3]
METRICS = ("AL", "LAAL", "AP", "DAL")

WORD_INSTANCES = [
    {"index": 0, "source_length": 6, "delays": [2, 3, 4, 5, 6, 6],
     "prediction": "the cat sat on the mat", "reference": "the cat sat on a mat"},
    {"index": 1, "source_length": 4, "delays": [], "prediction": "", "reference": "hello world"},
    {"index": 2, "source_length": 3, "delays": [1, 2, 3, 3, 3, 3, 3],
     "prediction": "a b c d e f g", "reference": "a b c"},
    {"index": 3, "source_length": 5, "delays": [5],
     "prediction": "late", "reference": "too late now"},
    {"index": 4, "source_length": 8, "delays": [1.5, 2.5, 8],
     "prediction": "x  y\tz", "reference": "x y z w"},
]


def write(path: Path, instances: list[dict]) -> Path:
    path.write_text("".join(json.dumps(i, ensure_ascii=False) + "\n" for i in instances),
                    encoding="utf-8")
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "launch.py", "score", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


def simuleval_scores(instances: list[dict], unit: str) -> tuple[dict, dict]:
    """Corpus means and per-instance metrics from SimulEval's scorers on its LogInstance."""
    logs = {}
    for i, info in enumerate(instances):
        info = {"index": i, "reference": None, **info}  # null reference: |Y| = len(delays)
        logs[i] = LogInstance(json.dumps(info), latency_unit=unit)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SimulEval warns for every skipped empty instance
        means = {name: ls.LATENCY_SCORERS_DICT[name]()(logs) for name in METRICS}
    return means, {i: ins.metrics for i, ins in logs.items()}


def assert_means(got: dict, want: dict) -> None:
    for name in METRICS:
        assert got[name] == pytest.approx(want[name], abs=1e-9, rel=0), name


def test_word_unit_with_references_per_instance(tmp_path):
    f = write(tmp_path / "instances.log", WORD_INSTANCES)
    proc = run_cli("--instances", f, "--per-instance")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    want, per = simuleval_scores(WORD_INSTANCES, "word")
    assert_means(out, want)
    assert (out["scored"], out["skipped_empty"], out["latency_unit"]) == (4, 1, "word")
    hyps = [i["prediction"] for i in WORD_INSTANCES]
    refs = [i["reference"] for i in WORD_INSTANCES]
    assert out["BLEU"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs], tokenize="13a").score)
    assert out["chrF"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert [i["index"] for i in out["instances"]] == [0, 1, 2, 3, 4]
    assert all(out["instances"][1][m] is None for m in METRICS)
    for row in out["instances"]:
        for m in METRICS:
            if row[m] is not None:
                assert row[m] == pytest.approx(per[row["index"]][m], abs=1e-9, rel=0)


def cli_args(path: Path, unit: str = "word", per_instance: bool = False) -> argparse.Namespace:
    return argparse.Namespace(instances=str(path), latency_unit=unit, per_instance=per_instance)


def run_main(capsys, path: Path, unit: str = "word", per_instance: bool = False) -> dict:
    assert score_main(cli_args(path, unit, per_instance)) == 0
    return json.loads(capsys.readouterr().out)


def test_without_references_uses_hypothesis_length_and_omits_quality(tmp_path, capsys):
    no_ref = [{k: v for k, v in i.items() if k != "reference"} for i in WORD_INSTANCES]
    out = run_main(capsys, write(tmp_path / "a.jsonl", no_ref))
    assert "BLEU" not in out and "chrF" not in out
    assert_means(out, simuleval_scores(no_ref, "word")[0])
    assert "instances" not in out

    # One instance without a reference: latency per instance as available, no corpus BLEU.
    mixed = [dict(i) for i in WORD_INSTANCES]
    mixed[2]["reference"] = None
    out = run_main(capsys, write(tmp_path / "b.jsonl", mixed))
    assert "BLEU" not in out
    assert_means(out, simuleval_scores(mixed, "word")[0])


def test_char_unit_chinese_uses_zh_tokenizer(tmp_path, capsys):
    zh = [
        {"source_length": 5, "delays": [2, 3, 4, 5, 5, 5], "prediction": "我是一个学生",
         "reference": "我是学生。"},
        {"source_length": 3, "delays": [1, 3], "prediction": "你好", "reference": "你好！"},
        {"source_length": 4, "delays": [4, 4, 4], "prediction": "谢 谢你", "reference": "谢谢你"},
    ]
    out = run_main(capsys, write(tmp_path / "zh.jsonl", zh), unit="char", per_instance=True)
    assert_means(out, simuleval_scores(zh, "char")[0])
    hyps, refs = [i["prediction"] for i in zh], [i["reference"] for i in zh]
    assert out["BLEU"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs], tokenize="zh").score)
    assert out["latency_unit"] == "char"
    assert [i["index"] for i in out["instances"]] == [0, 1, 2]  # positions when no index


BAD_LINES = [
    ("{not json", "invalid JSON"),
    ('[1, 2]', "expected a JSON object"),
    ('{"delays": [1], "prediction": "a"}', "missing field 'source_length'"),
    ('{"source_length": "3", "delays": [1], "prediction": "a"}', "'source_length' must be a number"),
    ('{"source_length": -1, "delays": [1], "prediction": "a"}', "must not be negative"),
    ('{"source_length": 3, "delays": [1, "2"], "prediction": "a b"}', "list of finite numbers"),
    ('{"source_length": 3, "delays": [1, 2], "prediction": "a"}', "2 delays but the prediction has 1"),
    ('{"source_length": 3, "delays": [1], "prediction": 5}', "'prediction' must be a string"),
    ('{"source_length": 3, "delays": [1], "prediction": "a", "reference": 1}', "'reference' must be"),
    ('{"source_length": 3, "delays": [1], "prediction": "a", "reference": " "}', "'reference' is empty"),
    ('{"source_length": 0, "delays": [0], "prediction": "a"}', "'source_length' is 0"),
    ('{"source_length": 0, "delays": [1], "prediction": "a"}', "beyond 'source_length' 0"),
    ('{"source_length": 3, "delays": [3, 1], "prediction": "a b"}', "'delays' decrease at position 2 (3 then 1)"),
    ('{"source_length": 5, "delays": [1, 2, 2, 1.5], "prediction": "a b c d"}', "decrease at position 4"),
    ('{"source_length": 3, "delays": [1, 4], "prediction": "a b"}', "delay 4 is beyond 'source_length' 3"),
    ("", "blank line"),
]


@pytest.mark.parametrize("line,message", BAD_LINES)
def test_malformed_line_names_file_and_line(tmp_path, line, message):
    good = json.dumps(WORD_INSTANCES[0])
    f = tmp_path / "bad.jsonl"
    f.write_text(f"{good}\n{good}\n{line}\n{good}\n", encoding="utf-8")
    with pytest.raises(UserInputError) as exc:
        score_main(cli_args(f))
    assert f"{f}:3: " in str(exc.value) and message in str(exc.value)


def test_missing_trailing_newline_and_empty_file(tmp_path, capsys):
    f = tmp_path / "x.jsonl"
    f.write_text(json.dumps(WORD_INSTANCES[0]), encoding="utf-8")
    assert run_main(capsys, f)["scored"] == 1
    f.write_text("", encoding="utf-8")
    with pytest.raises(UserInputError, match="no instances"):
        score_main(cli_args(f))


def test_cli_exit_2_on_bad_line_and_missing_file(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps(WORD_INSTANCES[0]) + '\n{"source_length": 3}\n', encoding="utf-8")
    proc = run_cli("--instances", f)
    assert proc.returncode == 2 and proc.stdout == ""
    assert f"error: {f}:2: missing field 'delays'" in proc.stderr
    proc = run_cli("--instances", tmp_path / "nope.jsonl", "--latency-unit", "char")
    assert proc.returncode == 2 and proc.stdout == ""
    assert "nope.jsonl: instances file not found" in proc.stderr


def test_against_gives_paired_intervals_over_the_same_sentences(tmp_path):
    """--against: per-sentence differences (instances - base) matched by index, with the paired
    interval; the empty prediction's latency is left out of its pair, its chrF is not."""
    later = [dict(i, delays=[min(d + 1, i["source_length"]) for d in i["delays"]]) for i in WORD_INSTANCES]
    shuffled = list(reversed(later))                  # matched by index, not by line
    base, ours = write(tmp_path / "base.jsonl", WORD_INSTANCES), write(tmp_path / "ours.jsonl", shuffled)
    proc = run_cli("--instances", ours, "--against", base)
    assert proc.returncode == 0, proc.stderr
    paired = json.loads(proc.stdout)["paired"]
    assert set(paired) == {"chrF", "AL", "LAAL", "YAAL", "length_ratio"}
    assert paired["AL"]["n"] == 4 and paired["chrF"]["n"] == 5
    assert paired["chrF"]["diff"] == 0 and paired["length_ratio"]["diff"] == 0   # same words
    want = [sum(min(d + 1, i["source_length"]) - d for d in i["delays"]) for i in WORD_INSTANCES if i["delays"]]
    assert paired["AL"]["diff"] > 0 and paired["AL"]["low"] <= paired["AL"]["diff"] <= paired["AL"]["high"]
    assert len(want) == paired["AL"]["n"]
    # two files of different sentences: one clear message, exit 2
    write(tmp_path / "fewer.jsonl", WORD_INSTANCES[:3])
    proc = run_cli("--instances", ours, "--against", tmp_path / "fewer.jsonl")
    assert proc.returncode == 2 and "--against" in proc.stderr and "different sentences" in proc.stderr


def test_against_pairs_the_dev_reward_the_instances_carry(tmp_path):
    """Train's dev instances carry each sentence's reward and quality: --against pairs those numbers
    as recorded (two runs on one dev set), and only when every line of both files has them."""
    base = [dict(i, reward=0.1 * n, quality=40.0) for n, i in enumerate(WORD_INSTANCES)]
    ours = [dict(i, reward=0.1 * n + (0.3 if n % 2 else 0.1), quality=41.0) for n, i in enumerate(WORD_INSTANCES)]
    proc = run_cli("--instances", write(tmp_path / "ours.jsonl", ours), "--against", write(tmp_path / "base.jsonl", base))
    assert proc.returncode == 0, proc.stderr
    paired = json.loads(proc.stdout)["paired"]
    gains = [o["reward"] - b["reward"] for o, b in zip(ours, base)]
    assert paired["reward"]["n"] == len(WORD_INSTANCES)
    assert paired["reward"]["diff"] == pytest.approx(sum(gains) / len(gains))
    assert 0.1 - 1e-9 <= paired["reward"]["low"] <= paired["reward"]["high"] <= 0.3 + 1e-9
    assert paired["quality"]["diff"] == pytest.approx(1.0) and "wait_share" not in paired
    ours[2].pop("reward")                              # one line without it: no reward pair
    proc = run_cli("--instances", write(tmp_path / "ours2.jsonl", ours), "--against", tmp_path / "base.jsonl")
    assert "reward" not in json.loads(proc.stdout)["paired"]
