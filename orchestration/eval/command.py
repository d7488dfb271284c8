"""``launch.py eval``: put policies on the quality-latency plane of one test set.

Resolves and validates the config, the test set (``data.test``, its first ``data.limit`` lines)
and every checkpoint before anything heavy starts; then runs the settings one EvalActor at a
time (one engine per backend; a learned setting with a checkpoint gets a fresh engine), with a
progress bar per setting. The run directory holds ``config.yaml``, ``settings/NAME/
{instances.jsonl,scores.json}``, ``curves.png`` and ``summary.json``. Re-running the same command
(same ``run.dir``) skips every setting whose ``scores.json`` was written with the same inputs.

With ``eval.curve_k`` the run gains the wait-k settings of those k it does not list; a wait-k
setting finished by any earlier run of the same model, data and decoder inputs is copied from
``eval.curve_cache`` instead of decoded again (:mod:`orchestration.eval.curve_cache`), and every
other setting is scored against the wait-k curve (``scoreboard.json``, ``summary.json``).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from orchestration.config_loader import repo_path, resolve_run_dir, write_resolved_config
from orchestration.data import Dataset, load_pairs
from orchestration.errors import UserInputError
from orchestration.model_path import check_model_path, model_to_load
from orchestration.eval.config import EvalRootConfig, RunSetting, expand_settings, expost_slots, load_eval_config
from orchestration.eval.curve import format_scoreboard, is_curve_params
from orchestration.eval.curve_cache import CurveCache, curve_key
from orchestration.eval.curve_run import run_scoreboard, with_curve_settings
from orchestration.eval.plot import plot_quality_latency, summary_table
from orchestration.runtime import start_ray, write_json_atomic
from rollout.units import unit_of


def check_inputs(cfg: EvalRootConfig, settings: list[RunSetting]) -> None:
    """Model and checkpoint paths exist (a hub id is allowed for the model)."""
    check_model_path(cfg.model.path)
    for s in settings:
        if s.backend == "expost" and s.params["source_slots"] is None and \
                expost_slots(repo_path(cfg.model.path)) is None:
            raise UserInputError(f"eval.settings: {s.name}: positions=expost needs source_slots: "
                                 f"{cfg.model.path} has no sft_provenance.json naming them (a model from "
                                 "`launch.py sft` with sft.layout=simulmask has); set source_slots")
        if s.params.get("distribution") == "topk" and s.backend == "hf":
            raise UserInputError(f"eval.settings: {s.name}: distribution=topk needs the vllm backend "
                                 "(eval.backend=auto or vllm); transformers gives exact distributions")
        if s.params.get("model") is not None:
            check_model_path(s.params["model"], key=f"eval.settings: {s.name}: model")
        ckpt = s.params.get("checkpoint")
        if ckpt is None:
            continue
        p = repo_path(ckpt)
        ok = (p / "adapter").is_dir() or (p / "adapter_config.json").is_file() or \
            (p / "weights" / "model.safetensors").is_file()
        if not ok:
            raise UserInputError(f"eval.settings: checkpoint {ckpt}: {p} is neither a train checkpoint "
                                 "(adapter/ or weights/model.safetensors) nor a peft adapter directory")
        if s.backend != "vllm":
            raise UserInputError(f"eval.settings: checkpoint {ckpt} needs the vllm backend (eval.backend=auto or vllm)")


def pipeline_settings(runs: list[str]) -> list[RunSetting]:
    """The learned settings of ``eval.runs``: each pipeline run's SFT and GRPO policies, on their
    own models (``RUN/sft/model``, ``RUN/grpo/model``)."""
    out = []
    for run in runs:
        root = repo_path(run)
        found = [(stage, root / stage / "model") for stage in ("sft", "grpo")
                 if (root / stage / "model" / "config.json").is_file()]
        if not found:
            raise UserInputError(f"eval.runs: {run}: neither {root / 'sft' / 'model'} nor {root / 'grpo' / 'model'} "
                                 "holds a model; pass the directory of a `launch.py pipeline` run that finished "
                                 "a stage")
        episode = _run_episode(root)
        for stage, model in found:
            label = "SFT" if stage == "sft" else ("SFT+GRPO" if len(found) == 2 else "GRPO")
            out.append(RunSetting(f"learned-{root.name}-{stage}", f"{label} ({root.name})", "vllm",
                                  {"type": "learned", "checkpoint": None, "chunk_size": None, "model": str(model),
                                   "episode": episode}))
    return out


def _run_episode(root: Path) -> dict[str, Any]:
    """The episode layout a pipeline run trained in (its config.yaml): its policies are decoded
    in that layout, whatever this eval config's rollout.episode says."""
    from orchestration.config_loader import read_yaml
    from rollout.config import EpisodeConfig

    try:
        episode = (read_yaml(root / "config.yaml").get("rollout") or {}).get("episode") or {}
        return EpisodeConfig.model_validate(episode).model_dump()
    except (OSError, ValueError) as exc:
        raise UserInputError(f"eval.runs: {root}: no readable config.yaml with its rollout.episode ({exc})") from None


def fingerprint(cfg: EvalRootConfig, setting: RunSetting, ds: Dataset) -> dict[str, Any]:
    """Everything a setting's result depends on; a finished setting is redone if it changes."""
    ev = cfg.eval.model_dump(exclude={"settings", "plot_quality", "batch_size", "hf_batch_size",
                                      "curve_k", "curve_cache", "curve_replicates", "runs"})
    in_episodes = setting.params["type"] == "learned" or setting.params.get("layout") == "episode"
    layout = cfg.rollout.episode.model_dump() if in_episodes else None
    return {"params": setting.params, "backend": setting.backend, "model": cfg.model.model_dump(),
            "data": {"set": ds.spec.name, "lines": len(ds)}, "eval": ev, "episode": layout}


def finished_scores(path: Path, want: dict[str, Any]) -> dict[str, Any] | None:
    """The setting's scores.json when it was written with the same inputs, else None."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if data.get("fingerprint") == json.loads(json.dumps(want)) else None


def _groups(settings: list[RunSetting]) -> list[tuple[str, str | None, str | None, list[RunSetting]]]:
    """Settings sharing an engine: (backend, checkpoint, own model) in first-seen order."""
    groups: dict[tuple[str, str | None, str | None], list[RunSetting]] = {}
    for s in settings:
        groups.setdefault((s.backend, s.params.get("checkpoint"), s.params.get("model")), []).append(s)
    return [(b, c, m, ss) for (b, c, m), ss in groups.items()]


def _comet_settings(cfg: EvalRootConfig) -> Any:
    if cfg.eval.comet_model is None:
        return None
    from reward.config import RewardConfig

    return RewardConfig(quality="comet", comet_model=cfg.eval.comet_model,
                        comet_batch_size=cfg.eval.comet_batch_size, comet_python=cfg.eval.comet_python).settings()


def run_group(cfg: EvalRootConfig, backend: str, needs_lora: bool, todo: list[tuple[RunSetting, dict]],
              sources: list[dict[str, Any]], run_dir: Path, meta: dict[str, Any],
              model: str | None = None) -> list[dict[str, Any]]:
    """One EvalActor runs ``todo`` in order on ``model`` (default ``model.path``); returns their scores."""
    import ray
    from tqdm import tqdm

    from orchestration.eval.actor import eval_actor_class

    actor_cfg = cfg.model_copy(deep=True)
    if needs_lora:
        actor_cfg.rollout.engine.enable_lora = True
    actor = eval_actor_class().options(
        num_cpus=cfg.rollout.num_cpus_per_worker, num_gpus=cfg.rollout.num_gpus_per_worker,
    ).remote(model_to_load(model or cfg.model.path),
             cfg.model.dtype, backend, actor_cfg.model_dump(mode="json"), cfg.run.seed, _comet_settings(cfg))
    results = []
    try:
        for setting, fp in todo:
            bar = tqdm(total=len(sources), desc=setting.name, unit="sent", leave=True)
            gen = actor.run_setting.options(num_returns="streaming").remote(
                {"name": setting.name, "line": setting.line, "params": setting.params}, sources,
                str(run_dir / "settings" / setting.name), dict(meta, backend=backend, fingerprint=fp))
            scores = None
            for ref in gen:
                msg = ray.get(ref, timeout=cfg.ray.call_timeout_s)   # a hung engine stops the sweep
                if "done" in msg:
                    bar.update(msg["done"] - bar.n)
                else:
                    scores = msg["scores"]
            bar.close()
            results.append(scores)
    finally:
        try:
            ray.get(actor.shutdown.remote(), timeout=120)
        except Exception:  # the actor is gone already; nothing to release
            pass
        ray.kill(actor)
    return results


class _Curves:
    """The curve cache of this run's wait-k curve settings, one key per backend (none without
    eval.curve_k or eval.curve_cache)."""

    def __init__(self, cfg: EvalRootConfig, dataset: str, sources: list[dict[str, Any]]):
        self.cfg, self.dataset, self.sources = cfg, dataset, sources
        self.caches: dict[str, CurveCache] = {}

    def cache(self, s: RunSetting) -> CurveCache | None:
        """The cache a setting belongs to, or None when it is no cached curve point."""
        ev = self.cfg.eval
        if not (ev.curve_k and ev.curve_cache and is_curve_params(s.params)):
            return None
        if s.backend not in self.caches:
            key = curve_key(self.cfg, s.backend, self.dataset, self.sources)
            self.caches[s.backend] = CurveCache(repo_path(ev.curve_cache), key)
        return self.caches[s.backend]

    def store(self, settings: list[RunSetting], run_dir: Path) -> None:
        """Keep these finished curve settings in the cache (those not there yet)."""
        for s in settings:
            cache = self.cache(s)
            if cache is not None and cache.store(s.params["k"], run_dir / "settings" / s.name):
                print(f"{s.name}: kept in the curve cache ({cache.entry(s.params['k'])})")


def _scoreboard(cfg: EvalRootConfig, run_dir: Path, settings: list[RunSetting], unit: str) -> dict[str, Any] | None:
    """Every non-curve setting against the run's wait-k curve (None when the curve is off or
    has fewer than two k)."""
    ks = {s.params["k"] for s in settings if is_curve_params(s.params)}
    if not cfg.eval.curve_k:
        return None
    if len(ks) < 2:
        print(f"scoreboard: skipped, the wait-k curve needs two k values (this run has {sorted(ks)})")
        return None
    board = run_scoreboard(run_dir, unit, names=[s.name for s in settings],
                           replicates=cfg.eval.curve_replicates, seed=cfg.run.seed)
    write_json_atomic(run_dir / "scoreboard.json", board)
    return board


def run_eval(cfg: EvalRootConfig, run_dir: Path, extra_settings: list[RunSetting] = ()
             ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Run (or resume) the sweep (the config's settings, ``eval.runs``' policies and
    ``extra_settings``); returns every setting's scores and the scoreboard."""
    settings = with_curve_settings(cfg.eval, expand_settings(cfg.eval) + pipeline_settings(cfg.eval.runs)
                                   + list(extra_settings))
    check_inputs(cfg, settings)
    ds = load_pairs(cfg.data.test, cfg.data, seed=cfg.run.seed, purpose="test", limit=cfg.data.limit, shuffle=False)
    write_resolved_config(cfg, run_dir)  # type: ignore[arg-type]
    sources = [{"index": p.index, "text": p.source, "src_lang": ds.src_lang, "tgt_lang": ds.tgt_lang,
                "reference": p.reference} for p in ds]
    meta = {"dataset": ds.spec.name, "lines": len(ds), "model": cfg.model.path,
            "latency_unit": unit_of(ds.tgt_lang)}
    curves = _Curves(cfg, ds.spec.name, sources)
    done: dict[str, dict[str, Any]] = {}
    pending: list[tuple[RunSetting, dict]] = []
    for s in settings:
        fp = fingerprint(cfg, s, ds)
        where = run_dir / "settings" / s.name
        prior = finished_scores(where / "scores.json", fp)
        cache = curves.cache(s)
        if prior is not None:
            print(f"{s.name}: finished earlier, kept ({where})")
            done[s.name] = prior
        elif cache is not None and (hit := cache.restore(s.params["k"], where, dict(
                meta, backend=s.backend, fingerprint=fp, setting=s.name, line=s.line))) is not None:
            print(f"{s.name}: reused from the curve cache ({cache.entry(s.params['k'])})")
            done[s.name] = hit
        else:
            pending.append((s, fp))
    if pending:
        started = start_ray(cfg.ray.address, cfg.ray.num_cpus, log_to_driver=False)
        try:
            for backend, ckpt, model, group in _groups([s for s, _ in pending]):
                todo = [(s, fp) for s, fp in pending if s in group]
                lora = ckpt is not None and not (repo_path(ckpt) / "weights" / "model.safetensors").is_file()
                for s, scores in zip(group, run_group(cfg, backend, lora, todo, sources, run_dir, meta, model)):
                    done[s.name] = scores
        finally:
            # what this command decoded, also when a later group failed (a setting kept from an
            # earlier run stays out: its model files may have changed since, unlike the key's)
            curves.store([s for s, fp in pending if finished_scores(run_dir / "settings" / s.name / "scores.json",
                                                                     fp) is not None], run_dir)
            if started:
                import ray

                ray.shutdown()
    board = _scoreboard(cfg, run_dir, settings, meta["latency_unit"])
    distance = {p["setting"]: p for p in (board or {}).get("points", [])}
    rows = [dict(done[s.name], **({"scoreboard": {k: distance[s.name][k] for k in ("distance", "curve_ks")}}
                                  if s.name in distance else {})) for s in settings]
    title = f"{cfg.model.path} · {ds.spec.name} · {len(ds)} lines"
    plot_quality_latency(rows, run_dir / "curves.png", cfg.eval.plot_quality, title, board=board)
    summary = {"dataset": ds.spec.name, "lines": len(ds), "rows": [
        {k: v for k, v in r.items() if k not in ("fingerprint", "stats")} for r in rows]}
    if board is not None:
        summary["scoreboard"] = board
    write_json_atomic(run_dir / "summary.json", summary)
    return rows, board


def main(args: argparse.Namespace) -> int:
    """``launch.py eval``: run the sweep, print its table and the scoreboard."""
    cfg = load_eval_config(args.config, args.overrides)
    run_dir = resolve_run_dir(cfg)  # type: ignore[arg-type]
    rows, board = run_eval(cfg, run_dir)
    print(summary_table(rows))
    if board is not None:
        print(format_scoreboard(board))
    extra = ", scoreboard.json" if board is not None else ""
    print(f"run directory: {run_dir} (curves.png, summary.json{extra}, settings/*/instances.jsonl, scores.json)")
    return 0
