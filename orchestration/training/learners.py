"""Learner ranks as the driver sees them: the starting policy, starting the ranks in their
placement slots, waiting on collective calls, and the error that stops a run with a resume hint.
"""
from __future__ import annotations

from typing import Any, Sequence

from orchestration.config import RootConfig


SFT_MODEL_DIR = "model"   # where `launch.py sft` (and `train` with train.export_model) write the policy
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf", ".index.json")


def policy_path(cfg: RootConfig) -> str:
    """The starting policy: ``model.init_from``'s ``model/`` (an SFT run), else ``model.path``
    (a local directory made absolute, or a hub id)."""
    from orchestration.config_loader import repo_path
    from orchestration.errors import UserInputError

    if cfg.model.init_from:
        model = repo_path(cfg.model.init_from) / SFT_MODEL_DIR
        if not (model / "config.json").is_file():
            raise UserInputError(f"model.init_from={cfg.model.init_from}: {model} holds no model; pass the run "
                                 "directory of a finished `launch.py sft` run (it writes model/ there)")
        return str(model.resolve())
    from orchestration.model_path import model_to_load

    return model_to_load(cfg.model.path)


def check_model(cfg: RootConfig) -> None:
    """A local model path must be a HF model directory; anything else is taken as a hub id."""
    from orchestration.model_path import check_model_path

    check_model_path(cfg.model.path)
    policy_path(cfg)   # model.init_from must name a finished SFT run


def build_learners(cfg: RootConfig, reserved=None, plan=None) -> list:
    """One LearnerWorker per data-parallel rank, each in its slot of the placement plan
    (``orchestration.placement``); without one, the learner part of the config's plan is reserved."""
    import ray

    from learner.config import LearnerConfig
    from learner.worker import LearnerWorker, worker_options
    from orchestration.placement import build_plan, reserve

    lc, timeout = cfg.learner, cfg.ray.start_timeout_s
    if reserved is None:
        plan = build_plan(cfg)
        used = {s.group for s in plan.learner}
        plan.groups = [g for g in plan.groups if g.name in used]
        reserved = reserve(plan, timeout)

    def opts(i: int) -> dict[str, Any]:
        o: dict[str, Any] = worker_options(LearnerConfig.model_validate(lc.model_dump()))
        o.update(reserved.options(plan.learner[i]))
        return o

    # DeepSpeed's env:// rendezvous needs MASTER_PORT before any rank's constructor runs, so a
    # free port is probed on rank 0's node and released again. Another process could take it in
    # between; the ranks then fail to start with "address in use" (a retry of the run fixes it).
    # A store that keeps its port would need a second, serial start phase for every rank.
    @ray.remote(num_cpus=0)
    def master_endpoint() -> tuple[str, int]:
        import socket

        with socket.socket() as s:
            s.bind(("", 0))
            return ray.util.get_node_ip_address(), s.getsockname()[1]

    ep_opts = {k: v for k, v in opts(0).items() if k == "scheduling_strategy"}
    addr, port = ray.get(master_endpoint.options(**ep_opts).remote(), timeout=timeout)
    model = policy_path(cfg)
    workers = [LearnerWorker.options(**opts(i)).remote(lc.model_dump(), model, i, lc.num_ranks, addr, port,
                                                       cfg.run.seed)
               for i in range(lc.num_ranks)]
    ray.get([w.trainable_names.remote() for w in workers], timeout=timeout)   # wait until every rank is up
    return workers


def sync_names(cfg: RootConfig, learners: Sequence) -> list[str] | None:
    """Tensors a merged-LoRA sync sends: the adapted modules' weights plus packed siblings."""
    if cfg.rollout.weight_sync != "merged":
        return None
    import ray

    from rollout.weights import expand_packed

    return expand_packed(ray.get(learners[0].trainable_names.remote(), timeout=cfg.ray.call_timeout_s))


class RunStopped(RuntimeError):
    """A part of the run failed in a way a restart of the driver fixes: the message says what
    failed and which checkpoint ``launch.py train --resume`` continues from."""


def resume_hint(run_dir) -> str:
    from orchestration.checkpoint import newest_checkpoint

    ckpt = newest_checkpoint(run_dir)
    if ckpt is None:
        return f"no checkpoint was written yet; start the run again (run directory {run_dir})"
    return f"last checkpoint: {ckpt}; continue with `launch.py train --resume {run_dir}`"


def wait_ranks(refs: Sequence, what: str, timeout_s: float, run_dir) -> list[Any]:
    """The results of one collective call per learner rank, in rank order.

    Waits for whichever rank finishes first, so a dead rank is reported at once even while
    the others block in a collective waiting for it; nothing waits longer than ``timeout_s``."""
    import time

    import ray
    from ray.exceptions import RayActorError

    start, pending = time.monotonic(), list(refs)
    while pending:
        left = timeout_s - (time.monotonic() - start)
        ready, pending = ray.wait(pending, num_returns=1, timeout=max(left, 0.0))
        if not ready:
            late = sorted(refs.index(r) for r in pending)
            raise RunStopped(f"learner rank(s) {late} did not finish {what} within train.call_timeout_s="
                             f"{timeout_s:g} s; the run stopped. {resume_hint(run_dir)}")
        for ref in ready:
            try:
                ray.get(ref, timeout=0)
            except RayActorError as exc:
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise RunStopped(f"learner rank {refs.index(ref)} died during {what} ({reason}); the run stopped. "
                                 f"{resume_hint(run_dir)}") from None
    return ray.get(list(refs), timeout=max(timeout_s - (time.monotonic() - start), 1.0))


def seed_torch(_actor: Any, seed: int) -> None:
    """Run inside a learner actor (``__ray_call__``): reseed torch for this step."""
    import torch

    torch.manual_seed(seed)


def export_model(learners, base_dir, out_dir, note: dict[str, Any], timeout_s: float):
    """``out_dir`` = the base model's config and tokenizer files + the trained weights, atomically.

    Every learner rank takes part (under ZeRO-3 each shard is gathered in turn); rank 0 writes the
    safetensors shards straight into the directory, so no weights pass through the driver."""
    import shutil
    from pathlib import Path

    import ray

    from orchestration.runtime import write_json_atomic

    base_dir, out_dir = Path(base_dir), Path(out_dir)
    tmp, old = out_dir.with_name(f".{out_dir.name}.tmp"), out_dir.with_name(f".{out_dir.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in base_dir.iterdir():
        if f.is_file() and not f.name.endswith(WEIGHT_SUFFIXES):
            shutil.copy2(f, tmp / f.name)
    ray.get([lw.save_weights.remote(str(tmp), "full") for lw in learners], timeout=timeout_s)
    write_json_atomic(tmp / "sft_provenance.json", note)
    shutil.rmtree(old, ignore_errors=True)
    if out_dir.exists():
        out_dir.rename(old)
    tmp.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)
    return out_dir
