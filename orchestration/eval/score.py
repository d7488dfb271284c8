"""``launch.py score``: latency and quality of SimulEval-style instances as one JSON object.

Input: JSON lines in the format of SimulEval's ``instances.log``, one instance a line::

    {"index": 0, "source_length": 7, "delays": [3, 4, 5], "prediction": "a b c", "reference": "a b c d"}

``source_length`` and ``delays`` are numbers (source units, or milliseconds for speech input);
delays never decrease and never exceed ``source_length``,
``prediction`` a string with one delay per unit in ``--latency-unit``; ``reference`` (string or
null), ``index`` (integer) and ``elapsed`` (one number per delay, in the unit of ``delays``:
SimulEval's computation-aware timestamps) are optional. Output on stdout::

    {"AL": …, "LAAL": …, "AP": …, "DAL": …, "YAAL": …, "AL_CA": …, "LAAL_CA": …, "YAAL_CA": …,
     "BLEU": …, "chrF": …, "degeneracy": {"SWF": …, "EFSW": …, "DSPTV": …, "degenerate_policy": …},
     "scored": n, "skipped_empty": n, "latency_unit": "word"}

YAAL and the degeneracy figures follow OmniSTEval 0.1.10 shortform; the ``_CA`` metrics are
``null`` unless every instance has ``elapsed`` (:mod:`reward.latency` defines them).

Latency follows SimulEval 1.1.x (:mod:`reward.latency`): |Y| is the reference length when
the instance has a reference, else the hypothesis length; empty predictions are left out of
the means and counted in ``skipped_empty``. BLEU and chrF appear only when every instance has
a reference (BLEU with sacrebleu's ``zh`` tokenizer for the char unit, else ``13a``).
Every malformed line raises :class:`UserInputError` naming ``FILE:LINE``: exit status 2.

``--against BASE`` compares the instances with another file of the same sentences (matched by
``index``; every index in both): the output gains ``paired``, per metric (sentence chrF with
references, AL, LAAL, YAAL, length ratio hypothesis/reference units) the mean of both files,
the difference (instances − BASE) and its paired bootstrap 95% interval over the sentences
(:mod:`orchestration.eval.paired_ci`; an empty prediction's latency is left out of its pair).
Files whose every line carries ``reward``, ``quality`` or ``wait_share`` (the dev instances of
``train`` and ``sft``) are paired on those numbers as well: two training runs compare on one dev set.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestration.errors import UserInputError
from orchestration.runtime import read_lines
from reward.latency import METRICS, LatencyScores, corpus_latency, score_instance, shortform_degeneracy
from reward.text_metrics import (
    Unit, bleu_tokenizer, corpus_bleu, corpus_chrf, count_units, reference_length, sentence_chrf)


@dataclass(frozen=True)
class ScoredInstance:
    """One validated line of the instances file and its latency scores."""

    index: int
    prediction: str
    reference: str | None
    scores: LatencyScores | None
    delays: tuple[float, ...] = ()
    source_length: float = 0
    reference_length: int | None = None
    has_elapsed: bool = False
    recorded: dict[str, float] = field(default_factory=dict)   # RECORDED_METRICS the line carries


def _is_number(value: Any) -> bool:
    # bool is an int subclass in Python but never a valid length or delay.
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _parse_line(text: str, where: str, position: int, unit: Unit) -> ScoredInstance:
    """Validate one JSON line and score it; ``where`` is ``FILE:LINE`` for messages."""
    try:
        info = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserInputError(f"{where}: invalid JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(info, dict):
        raise UserInputError(f"{where}: expected a JSON object, got {type(info).__name__}")

    for key in ("source_length", "delays", "prediction"):
        if key not in info:
            raise UserInputError(f"{where}: missing field '{key}'")
    source_length = info["source_length"]
    delays = info["delays"]
    prediction = info["prediction"]
    reference = info.get("reference")
    index = info.get("index", position)

    if not _is_number(source_length):
        raise UserInputError(f"{where}: 'source_length' must be a number, got {source_length!r}")
    if source_length < 0:
        raise UserInputError(f"{where}: 'source_length' must not be negative, got {source_length!r}")
    if not isinstance(delays, list) or not all(_is_number(d) for d in delays):
        raise UserInputError(f"{where}: 'delays' must be a list of finite numbers")
    if any(d < 0 for d in delays):
        raise UserInputError(f"{where}: 'delays' must not contain negative values")
    # A policy only ever reads more source: delays never decrease and never pass the source.
    for i in range(1, len(delays)):
        if delays[i] < delays[i - 1]:
            raise UserInputError(f"{where}: 'delays' decrease at position {i + 1} ({delays[i - 1]!r} then "
                                 f"{delays[i]!r}); a simultaneous policy never unreads source")
    if delays and max(delays) > source_length:
        raise UserInputError(f"{where}: delay {max(delays)!r} is beyond 'source_length' {source_length!r}; "
                             f"a policy cannot read more source than there is")
    if not isinstance(prediction, str):
        raise UserInputError(f"{where}: 'prediction' must be a string, got {type(prediction).__name__}")
    if reference is not None and not isinstance(reference, str):
        raise UserInputError(f"{where}: 'reference' must be a string or null, got {type(reference).__name__}")
    if not isinstance(index, int) or isinstance(index, bool):
        raise UserInputError(f"{where}: 'index' must be an integer, got {index!r}")

    # SimulEval records one delay per target unit written.
    units = count_units(prediction, unit)
    if units != len(delays):
        raise UserInputError(
            f"{where}: {len(delays)} delays but the prediction has {units} {unit} unit(s); "
            f"SimulEval writes one delay per unit (is --latency-unit right?)")
    ref_len = None
    if reference is not None:
        if not reference.strip():
            # SimulEval divides by the reference length (zero for the char unit): no score exists.
            raise UserInputError(f"{where}: 'reference' is empty; use null for no reference")
        ref_len = reference_length(reference, unit)
    if delays and source_length == 0:
        raise UserInputError(f"{where}: 'source_length' is 0 but the prediction is not empty")
    elapsed = info.get("elapsed")
    if elapsed is not None and (not isinstance(elapsed, list) or len(elapsed) != len(delays)
                                or not all(_is_number(e) for e in elapsed)):
        raise UserInputError(f"{where}: 'elapsed' must be a list of finite numbers, one per delay "
                             f"({len(delays)})")

    recorded = {k: float(info[k]) for k in RECORDED_METRICS if _is_number(info.get(k))}
    return ScoredInstance(index=index, prediction=prediction, reference=reference,
                          scores=score_instance(delays, source_length, ref_len, elapsed),
                          delays=tuple(delays), source_length=source_length,
                          reference_length=ref_len, has_elapsed=elapsed is not None, recorded=recorded)


def read_instances(path: Path, unit: Unit) -> list[ScoredInstance]:
    """Parse and score every line of an instances file (UserInputError on the first bad one)."""
    if not path.is_file():
        raise UserInputError(f"{path}: instances file not found; pass an existing JSON lines file")
    lines = read_lines(path)
    out: list[ScoredInstance] = []
    for lineno, line in enumerate(lines, start=1):
        where = f"{path}:{lineno}"
        if not line.strip():
            raise UserInputError(f"{where}: blank line; every line must be one JSON instance")
        out.append(_parse_line(line, where, len(out), unit))
    if not out:
        raise UserInputError(f"{path}: no instances (the file is empty)")
    return out


def summarize(instances: list[ScoredInstance], unit: Unit,
              per_instance: bool = False) -> dict[str, Any]:
    """The JSON object that ``score`` prints."""
    means, scored, skipped = corpus_latency(ins.scores for ins in instances)
    result: dict[str, Any] = dict(means)
    if not all(ins.has_elapsed for ins in instances):
        result.update(AL_CA=None, LAAL_CA=None, YAAL_CA=None)
    result["degeneracy"] = shortform_degeneracy(
        (ins.delays, ins.source_length, ins.reference_length) for ins in instances)
    if all(ins.reference is not None for ins in instances):
        hyps = [ins.prediction for ins in instances]
        refs = [ins.reference or "" for ins in instances]
        result["BLEU"] = corpus_bleu(hyps, refs, tokenize=bleu_tokenizer(unit))
        result["chrF"] = corpus_chrf(hyps, refs)
        result["length_ratio"] = length_ratio(instances)
    if all("wait_share" in ins.recorded for ins in instances):
        result["wait_share"] = math.fsum(ins.recorded["wait_share"] for ins in instances) / len(instances)
    result.update(scored=scored, skipped_empty=skipped, latency_unit=unit)
    if per_instance:
        result["instances"] = [
            {"index": ins.index,
             **{m: (getattr(ins.scores, m) if ins.scores else None) for m in METRICS}}
            for ins in instances]
    return result


def length_ratio(instances: list[ScoredInstance]) -> float | None:
    """Corpus length ratio: units written over reference units (as BLEU's brevity ratio counts,
    in latency units); over-generation shows as > 1."""
    ref = sum(ins.reference_length or 0 for ins in instances)
    return sum(len(ins.delays) for ins in instances) / ref if ref else None


PAIRED_METRICS = ("chrF", "AL", "LAAL", "YAAL", "length_ratio")
# per-sentence numbers a line may carry from the run that wrote it (train's and sft's dev
# instances: the dev reward, the reward scorer's quality, the wait share): paired as they are
# when every line of both files has them
RECORDED_METRICS = ("reward", "quality", "wait_share")


def _sentence_metrics(ins: ScoredInstance) -> dict[str, float | None]:
    ref_len = ins.reference_length
    out: dict[str, float | None] = {m: (getattr(ins.scores, m) if ins.scores else None) for m in ("AL", "LAAL", "YAAL")}
    out["chrF"] = sentence_chrf(ins.prediction, ins.reference) if ins.reference is not None else None
    out["length_ratio"] = len(ins.delays) / ref_len if ref_len else None
    return out


def paired_against(instances: list[ScoredInstance], base: list[ScoredInstance], where: str,
                   seed: int = 0) -> dict[str, Any]:
    """Per metric: both means over the paired sentences, the difference and its 95% interval."""
    from orchestration.eval.paired_ci import paired_bootstrap_ci

    ours, theirs = {i.index: i for i in instances}, {i.index: i for i in base}
    if set(ours) != set(theirs):
        only = sorted(set(ours) ^ set(theirs))[:5]
        raise UserInputError(f"--against {where}: the two files hold different sentences (index {only} "
                             "is in one only); compare runs over the same test lines")
    order = sorted(ours)
    a = [_sentence_metrics(ours[i]) for i in order]
    b = [_sentence_metrics(theirs[i]) for i in order]
    out = {}
    for m in PAIRED_METRICS:
        if all(row[m] is None for row in a + b):
            continue
        out[m] = paired_bootstrap_ci([row[m] for row in b], [row[m] for row in a], seed=seed).as_dict()
    for m in RECORDED_METRICS:
        if all(m in i.recorded for i in instances + base):
            out[m] = paired_bootstrap_ci([theirs[i].recorded[m] for i in order],
                                         [ours[i].recorded[m] for i in order], seed=seed).as_dict()
    return out


def main(args: argparse.Namespace) -> int:
    """``launch.py score --instances``: one instances file (optionally paired with another);
    ``--curve DIR`` goes to :func:`orchestration.eval.curve_run.score_command`."""
    unit: Unit = args.latency_unit
    instances = read_instances(Path(args.instances), unit)
    base = read_instances(Path(args.against), unit) if getattr(args, "against", None) else None
    result = summarize(instances, unit, per_instance=bool(args.per_instance))
    if base is not None:
        result["paired"] = paired_against(instances, base, args.against)
        result["paired_against"] = args.against
    sys.stdout.write(json.dumps(result, ensure_ascii=False) + "\n")
    return 0
