"""A SimulEval 1.1 agent around our wait-k decoder, so SimulEval's own evaluator drives it.

SimulEval's text evaluator pushes one source word per call and records a delay for every unit
a ``WriteAction`` carries; the agent answers each call from the same per-sentence machinery
:class:`~rollout.prefix_layout.PrefixDecoder` uses (the same prompts, the same unit rules: a
multi-unit token's units in one ``WriteAction``, a begun unit finished before more source is
pushed, the look-ahead that closes a word discarded; the same safety valve), so its
``instances.log`` holds the instances ``launch.py eval`` writes for the same model and k. Two
differences are SimulEval's own:
``elapsed`` is 0 for text input, and its ``char`` unit drops the spaces of the prediction.

Run it with SimulEval's command line (from the repository root) or :func:`run_simuleval`::

    PYTHONPATH=. .venv/bin/simuleval --agent-class orchestration.eval.simuleval_agent.SimulRLWaitKAgent \
        --source src.txt --target ref.txt --output out --simulrl-model MODEL_DIR --waitk 3

The wait-k rule of SimulEval 1.1 (one write per pushed word, everything once the source is
finished) is wait-k's own schedule, which is why only wait-k is offered: LSG may write several
units at one read position, which that evaluator's loop cannot express unit by unit.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

from rollout.prefix_layout import PrefixDecoder, PrefixPrompter
from rollout.types import Source
from rollout.simul_policies import READ, WaitKPolicy, normalize_spaces
from rollout.units import split_units

UNBOUNDED = 10**9   # the source length while SimulEval has not said the source is finished


def _agent_base():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # pydub (imported by simuleval) warns about ffmpeg
        from simuleval.agents import TextToTextAgent
        from simuleval.agents.actions import ReadAction, WriteAction
    return TextToTextAgent, ReadAction, WriteAction


TextToTextAgent, ReadAction, WriteAction = _agent_base()


class SimulRLWaitKAgent(TextToTextAgent):
    """wait-k in the prefix layout on a transformers model (greedy), as a SimulEval agent."""

    def __init__(self, args: Any):
        super().__init__(args)
        from rollout.hf_backend import HFBackend

        self.backend = HFBackend(args.simulrl_model, dtype=args.simulrl_dtype)
        self.prompter = PrefixPrompter(self.backend.tokenizer)
        self.waitk = WaitKPolicy(args.waitk)
        self.src_lang, self.tgt_lang = args.simulrl_src_lang, args.simulrl_tgt_lang
        self.max_tokens_per_unit = args.simulrl_max_tokens_per_unit
        self.max_new_tokens_final = args.simulrl_max_new_tokens_final
        self._decoder: PrefixDecoder | None = None

    @staticmethod
    def add_args(parser: Any) -> None:
        parser.add_argument("--simulrl-model", required=True, help="model directory")
        parser.add_argument("--simulrl-dtype", default="float32", choices=["float32", "bfloat16"])
        parser.add_argument("--waitk", type=int, required=True, help="k of wait-k")
        parser.add_argument("--simulrl-src-lang", default="de")
        parser.add_argument("--simulrl-tgt-lang", default="en")
        parser.add_argument("--simulrl-max-tokens-per-unit", type=int, default=8)
        parser.add_argument("--simulrl-max-new-tokens-final", type=int, default=256)

    def reset(self) -> None:
        super().reset()
        self._decoder = None

    def _state(self) -> tuple[PrefixDecoder, Any]:
        """The sentence's decoder (made at its first call) and its one state, brought up to the
        words SimulEval has pushed."""
        words = list(self.states.source)
        src = Source(0, " ".join(words), self.src_lang, self.tgt_lang)
        dec = self._decoder
        if dec is None:
            dec = self._decoder = PrefixDecoder(self.backend, self.prompter, self.waitk, [src],
                                                max_tokens_per_unit=self.max_tokens_per_unit,
                                                max_new_tokens_final=self.max_new_tokens_final)
        st = dec.states[0]
        # SimulEval owns the reads: the words pushed so far are the words read
        st.source, st.read = src, len(words)
        st.source_length = len(words) if self.states.source_finished else UNBOUNDED
        return dec, st

    def _units(self, st: Any, start: int, end: int) -> str:
        units = split_units(normalize_spaces(st.text.prediction_text()), st.unit)
        return ("" if st.unit == "char" else " ").join(units[start:end])

    def policy(self):
        dec, st = self._state()
        if st.read >= st.source_length:
            done = st.units
            dec._finish([st])
            return WriteAction(self._units(st, done, st.units), finished=True)
        if dec._rule(st) == READ:
            return ReadAction()
        before, read = st.units, st.read
        while True:
            dec._write_units([st])
            if st.read > read:      # the safety valve asked for a read: SimulEval pushes it
                st.read = read
                break
            if st.units > before and not st.text.in_progress:
                break               # a begun unit is finished before SimulEval pushes more source
        if st.units > before:       # all of them were generated with this source: one delay
            return WriteAction(self._units(st, before, st.units), finished=False)
        return ReadAction()


def run_simuleval(model: str, k: int, sources: list[str], references: list[str], out_dir: Path,
                  src_lang: str = "de", tgt_lang: str = "en", latency_unit: str = "word",
                  max_new_tokens_final: int = 256) -> Path:
    """SimulEval's own evaluator on our wait-k agent; returns its ``instances.log``."""
    from simuleval.cli import evaluate
    from simuleval.utils.agent import EVALUATION_SYSTEM_LIST

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "source.txt").write_text("".join(s + "\n" for s in sources), encoding="utf-8")
    (out_dir / "target.txt").write_text("".join(r + "\n" for r in references), encoding="utf-8")
    argv = sys.argv
    try:
        sys.argv = ["simuleval"]   # SimulEval also parses the process's own command line
        EVALUATION_SYSTEM_LIST.clear()   # evaluate() appends to it: one system per call
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            evaluate(SimulRLWaitKAgent, {
                "source": str(out_dir / "source.txt"), "target": str(out_dir / "target.txt"),
                "output": str(out_dir / "simuleval"), "eval_latency_unit": latency_unit,
                "simulrl_model": model, "waitk": k, "simulrl_src_lang": src_lang,
                "simulrl_tgt_lang": tgt_lang, "simulrl_max_new_tokens_final": max_new_tokens_final,
                "quality_metrics": "BLEU", "latency_metrics": "AL"})
    finally:
        sys.argv = argv
    return out_dir / "simuleval" / "instances.log"
