"""EvalActor: runs policy settings over a test set on one model and writes SimulEval outputs.

One actor owns one generation backend (a vLLM engine, or transformers where exact
full-vocabulary distributions are asked for). :meth:`EvalWorker.run_setting` is a generator:
it yields progress (sentences finished) while it decodes, then writes into the setting's
directory

- ``instances.jsonl``: SimulEval's instance log (``index, source, prediction, reference, delays,
  elapsed, source_length, prediction_length``); ``elapsed`` is in source units, as
  ``delays`` and ``source_length`` are: the delay plus the sentence's compute time at the write
  counted at ``source_unit_ms`` per source unit (:func:`reward.latency.elapsed_from_compute`),
  so SimulEval's and OmniSTEval's computation-aware scorers read it as they read speech logs;
- ``scores.json``: BLEU, chrF, COMET (when configured), AL, LAAL, AP, DAL, YAAL, AL_CA, LAAL_CA,
  YAAL_CA and OmniSTEval's degeneracy figures, exactly as ``launch.py score`` computes them from
  that file, plus the decoder's forced reads (the safety valve) and cut words.

Both are written atomically, ``scores.json`` last: its presence marks the setting finished.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from orchestration.runtime import write_json_atomic
from orchestration.eval.score import read_instances, summarize
from reward.latency import elapsed_from_compute
from rollout.prefix_layout import PrefixDecoder, PrefixPrompter, SimulOutput
from rollout.types import Source
from rollout.simul_policies import build_read_write_policy
from rollout.units import step_delay, unit_of


def torch_dtype(name: str) -> Any:
    import torch

    return torch.float32 if name == "float32" else torch.bfloat16


def instance_record(out: SimulOutput, src: Source, unit_ms: float) -> dict[str, Any]:
    return {"index": src.index, "source": src.text, "prediction": out.prediction,
            "reference": src.reference, "delays": list(out.delays),
            "elapsed": elapsed_from_compute(out.delays, out.compute_s, unit_ms),
            "source_length": out.source_length, "prediction_length": len(out.delays),
            **({"wait_share": out.wait_share} if out.wait_share is not None else {})}


def write_jsonl_atomic(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_checkpoint(path: str) -> tuple[str, Any]:
    """A train checkpoint or adapter directory -> ("adapter", {file: bytes}) or ("full", bytes)."""
    p = Path(path)
    if (p / "adapter").is_dir():
        p = p / "adapter"
    if (p / "adapter_config.json").is_file():
        return "adapter", {f.name: f.read_bytes() for f in p.iterdir() if f.is_file()}
    weights = p / "weights" / "model.safetensors"
    if weights.is_file():
        return "full", weights.read_bytes()
    raise ValueError(f"{path}: neither a peft adapter nor a checkpoint with weights/model.safetensors")


class EvalWorker:
    """The body of the EvalActor (plain class, so tests can run it without Ray)."""

    def __init__(self, model: str, dtype: str, backend: str, cfg: dict[str, Any], seed: int = 0,
                 comet: Any = None):
        from orchestration.eval.config import EvalRootConfig

        self.cfg = EvalRootConfig.model_validate(cfg)
        self.backend_name = backend
        if backend == "vllm":
            from orchestration.eval.config import engine_max_logprobs, expand_settings
            from rollout.engine import VLLMEngine

            self.backend: Any = VLLMEngine(model, dtype, self.cfg.rollout.engine, seed=seed,
                                           max_logprobs=engine_max_logprobs(expand_settings(self.cfg.eval)))
            tokenizer = self.backend.tokenizer
        elif backend == "expost":
            from transformers import AutoModelForCausalLM, AutoTokenizer

            # eager attention: ExPosST decoding passes explicit masks over a per-sentence cache
            self.model_dir = model
            self.hf_model = AutoModelForCausalLM.from_pretrained(
                model, dtype=torch_dtype(dtype), attn_implementation="eager").eval()
            tokenizer = AutoTokenizer.from_pretrained(model)
            self.backend = None   # one ExPosSTBackend per setting (its source_slots) on this model
        else:
            from rollout.hf_backend import HFBackend

            self.backend = HFBackend(model, dtype="float32" if dtype == "float32" else "bfloat16",
                                     seed=seed, batch_size=self.cfg.eval.hf_batch_size)
            tokenizer = self.backend.tokenizer
        self.tokenizer = tokenizer
        self.prompter = PrefixPrompter(tokenizer, self.cfg.eval.system_prompt)
        self.comet_settings = comet
        self._comet = None

    def info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "backend": self.backend_name,
                "engine_start_s": getattr(self.backend, "start_s", None)}

    # --- decoding -----------------------------------------------------------------------------

    def _prefix_batches(self, params: dict[str, Any], sources: list[Source]
                        ) -> Iterator[tuple[int, list[SimulOutput] | None, dict]]:
        ev = self.cfg.eval
        policy = build_read_write_policy(params)
        if params.get("distribution") == "topk":
            top_k = params["top_k"]
        else:   # exact: dense tensors from transformers, full-vocabulary lists from vLLM
            top_k = -1 if self.backend_name == "vllm" else None
        backend, prompter = self.backend, self.prompter
        if params.get("positions") == "expost":
            from orchestration.eval.config import expost_slots
            from rollout.expost_decoding import ExPosSTBackend, ExPosSTPrompter

            slots = params["source_slots"] or expost_slots(Path(self.model_dir))
            backend = ExPosSTBackend(self.hf_model, self.tokenizer, slots)
            prompter = ExPosSTPrompter(self.tokenizer, ev.system_prompt)
        for start in range(0, len(sources), ev.batch_size):
            if backend is not self.backend:
                backend.reset()          # the caches of the previous batch's sentences
            dec = PrefixDecoder(backend, prompter, policy, sources[start:start + ev.batch_size],
                                top_k=top_k, max_tokens_per_unit=ev.max_tokens_per_unit,
                                max_new_tokens_final=ev.max_new_tokens_final)
            while dec.step():
                yield start + dec.finished, None, {}
            yield start + dec.finished, dec.outputs(), dec.stats

    def _learned_batches(self, params: dict[str, Any], sources: list[Source]
                         ) -> Iterator[tuple[int, list[SimulOutput] | None, dict]]:
        """Greedy episodes in the training layout: the trained policy (``learned``), or the fixed
        wait-k schedule in that layout (``waitk`` with ``layout: episode``)."""
        from rollout.runner import EpisodeFactory, run_episodes
        from rollout.types import Sampling

        if params.get("checkpoint"):
            kind, payload = read_checkpoint(params["checkpoint"])
            load = self.backend.load_adapter if kind == "adapter" else self.backend.load_tensors
            load(payload, 1)
        from rollout.config import EpisodeConfig

        # a pipeline run's policy brings the layout it was trained in (eval.runs)
        episode = EpisodeConfig.model_validate(params["episode"]) if params.get("episode") else self.cfg.rollout.episode
        if params.get("chunk_size") is not None:
            episode = episode.model_copy(update={"chunk_size": params["chunk_size"]})
        schedule_k = params["k"] if params["type"] == "waitk" else None
        factory = EpisodeFactory(self.tokenizer, episode, self.cfg.rollout.engine.max_model_len)
        for start in range(0, len(sources), self.cfg.eval.batch_size):
            batch = sources[start:start + self.cfg.eval.batch_size]
            trajs, stats = run_episodes(self.backend, factory, batch, 1, Sampling(temperature=0.0),
                                        schedule_k=schedule_k)
            # every trajectory active at step t waited for that step's batched call
            clock = [0.0]
            for row in stats.per_step:
                clock.append(clock[-1] + row["seconds"])
            outs = []
            for src, t in zip(batch, trajs):
                # a unit's compute time: the clock after the step whose read its delay records
                reads = [step_delay(step, t.meta["chunk_size"], t.source_length) for step in range(1, t.num_steps + 1)]
                compute = [clock[reads.index(d) + 1] for d in t.delays]
                waits = [not p.strip() for p in t.pieces[:-1]]
                outs.append(SimulOutput(src.index, t.source_length, t.hypothesis, list(t.delays), compute,
                                        [], [], len(t.token_ids),
                                        wait_share=sum(waits) / len(waits) if waits else 0.0))
            yield start + len(batch), outs, stats.as_dict()

    def run_setting(self, setting: dict[str, Any], sources: list[dict[str, Any]], out_dir: str,
                    meta: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Decode ``sources`` with one setting; yields {"done": n} then {"scores": {...}}."""
        srcs = [Source(**s) for s in sources]
        params = setting["params"]
        episode = params["type"] == "learned" or params.get("layout") == "episode"
        run = self._learned_batches if episode else self._prefix_batches
        start = time.perf_counter()
        outputs: list[SimulOutput] = []
        totals: dict[str, float] = {}
        for done, outs, stats in run(params, srcs):
            if outs is not None:
                outputs += outs
                for k, v in stats.items():
                    if isinstance(v, (int, float)):
                        totals[k] = totals.get(k, 0) + v
            yield {"done": done}
        seconds = time.perf_counter() - start
        yield {"scores": self._write(setting, srcs, outputs, Path(out_dir), meta,
                                     dict(totals, wall_s=seconds))}

    # --- outputs ------------------------------------------------------------------------------

    def _write(self, setting: dict[str, Any], srcs: list[Source], outputs: list[SimulOutput],
               out_dir: Path, meta: dict[str, Any], stats: dict[str, float]) -> dict[str, Any]:
        ev = self.cfg.eval
        out_dir.mkdir(parents=True, exist_ok=True)
        unit = unit_of(srcs[0].tgt_lang)
        rows = [instance_record(o, s, ev.source_unit_ms) for o, s in zip(outputs, srcs)]
        path = write_jsonl_atomic(out_dir / "instances.jsonl", rows)
        scores = summarize(read_instances(path, unit), unit)
        forced = [f for o in outputs for f in o.forced_reads]
        scores["forced_reads"] = {"total": len(forced),
                                  "beyond_bound": sum(f["beyond_bound"] for f in forced),
                                  "sentences": sum(1 for o in outputs if o.forced_reads),
                                  "cut_words": int(stats.get("cut_words", 0))}
        if self.comet_settings is not None:
            scores["COMET"] = self._comet_score(srcs, outputs, unit)
        params = setting["params"]
        if params["type"] == "lsg":
            scores["distribution"] = (f"exact (full vocabulary, {self.backend_name})"
                                      if params["distribution"] == "exact"
                                      else f"top-{params['top_k']} approximation")
        result = {"setting": setting["name"], "line": setting["line"], "policy": params["type"],
                  "params": params, **scores, "latency_note":
                  "AL/LAAL/AP/DAL: SimulEval 1.1 on delays; YAAL and degeneracy: OmniSTEval 0.1.10 "
                  "shortform; *_CA: the same on elapsed = delays + compute seconds x 1000 / "
                  f"{ev.source_unit_ms} ms per source unit", **meta, "stats": stats}
        write_json_atomic(out_dir / "scores.json", result)
        return result

    def _comet_score(self, srcs: list[Source], outputs: list[SimulOutput], unit: str) -> float | None:
        """Corpus COMET: the mean segment score (an empty prediction is scored as it is)."""
        from reward.client import RewardClient
        from reward.types import QualityItem

        if self._comet is None:
            self._comet = RewardClient(self.comet_settings)
        items = [QualityItem(s.text, o.prediction, s.reference or "", unit) for s, o in zip(srcs, outputs)]
        batch = self._comet.quality(items)
        return math.fsum(batch.scores) / len(batch.scores) if batch.scores else None

    def shutdown(self) -> None:
        if self._comet is not None:
            self._comet.close()
        if hasattr(self.backend, "shutdown"):
            self.backend.shutdown()


def eval_actor_class():
    """The Ray actor class (built on first use so importing this module needs no Ray)."""
    import ray

    return ray.remote(EvalWorker)

