"""The learner rank: a DeepSpeed engine around the policy, driven by the GRPO step.

``Learner`` is a plain class (one data-parallel rank); ``LearnerWorker`` is it as a Ray actor.
The driver creates ``num_ranks`` of them with the same master address/port and calls every
method on every rank at once (they are collective: ``train_step``, ``sft_step``, ``sft_eval``,
``save_checkpoint``, ``load_checkpoint``, ``shutdown``, and, under ZeRO-3 only, ``export_weights``,
``broadcast_weights`` and ``save_weights``: gathering partitioned weights is a collective).

DeepSpeed facts this relies on (DESIGN §4): the optimizer is a ``torch.optim.AdamW`` passed in
(a DeepSpeed-config optimizer JIT-compiles for ~100 s); the first ``init_distributed`` compiles
a small op once, cached under ``<repo>/.cache/torch_extensions``; gloo on CPU, NCCL on GPU.
Precision: LoRA keeps the adapter and its optimizer in fp32 over a frozen base in
``dtype`` (DeepSpeed runs in fp32 mode); full fine-tuning in bf16 uses DeepSpeed's bf16 mode
(fp32 master weights in the optimizer).
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import ray
import torch

from learner.batch import TrainBatch
from learner.config import LearnerConfig
from learner.export import (adapter_config_json, adapter_files, adapter_layout, adapter_tensors, export_safetensors,
                            export_tensors, trainable_names, weight_layout)
from learner.policy import PolicyLogprobs, load_policy, sequence_logprobs
from learner.sft_step import sft_eval, sft_step
from learner.step import StepSettings, grpo_step

REPO = Path(__file__).resolve().parents[1]
EXTENSIONS_DIR = REPO / ".cache" / "torch_extensions"
CHECKPOINT_TAG = "learner"
# DeepSpeed JIT-builds a small op on a rank's first start, under torch's file lock, and a rank
# waits for that lock with no timeout. A build killed midway (out of memory, SIGKILL) leaves the
# lock behind, and every later rank would wait forever. A build takes about two minutes here,
# so a lock older than this is a dead build's.
STALE_BUILD_LOCK_S = 900.0


def clear_stale_build_locks(root: Path, max_age_s: float = STALE_BUILD_LOCK_S) -> list[Path]:
    """Remove the build locks under ``root`` (``<op>/lock``) older than ``max_age_s``."""
    removed = []
    for lock in Path(root).glob("*/lock"):
        try:
            if time.time() - lock.stat().st_mtime > max_age_s:
                lock.unlink()
                removed.append(lock)
        except FileNotFoundError:   # another rank removed it, or its build just finished
            pass
    return removed


def rank_threads(cfg: LearnerConfig) -> int:
    """Intra-op threads of one rank: configured, or this machine's cores shared by the ranks."""
    return cfg.torch_threads or max(1, (os.cpu_count() or 1) // cfg.num_ranks)


def parse_cores(spec: str) -> set[int]:
    """``"1"``, ``"0-3"`` or ``"0,2-3"`` as a set of core numbers."""
    cores: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        cores.update(range(int(lo), int(hi or lo) + 1))
    return cores


def worker_options(cfg: LearnerConfig) -> dict[str, Any]:
    """Ray ``.options(...)`` for a rank (the driver adds its placement-group strategy)."""
    env = {"OMP_NUM_THREADS": str(rank_threads(cfg)), "TORCH_EXTENSIONS_DIR": str(EXTENSIONS_DIR)}
    return {"num_cpus": cfg.num_cpus_per_rank, "num_gpus": cfg.num_gpus_per_rank,
            "runtime_env": {"env_vars": env}}


def deepspeed_config(cfg: LearnerConfig) -> dict[str, Any]:
    """The DeepSpeed config: no optimizer section (ours is passed in), accumulation by hand."""
    bf16 = cfg.dtype == "bfloat16" and not cfg.lora.enabled
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        # the GRPO step marks accumulation boundaries itself and scales losses to the global batch
        "gradient_accumulation_steps": 1,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage},
        "bf16": {"enabled": bf16},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    if bf16 and cfg.zero_stage >= 1:
        ds["data_types"] = {"grad_accum_dtype": "fp32"}
    return ds


class Learner:
    """One data-parallel learner rank (see the module docstring)."""

    def __init__(self, cfg: LearnerConfig | dict, model_path: str, rank: int = 0, world_size: int = 1,
                 master_addr: str = "127.0.0.1", master_port: int = 29500, seed: int = 0):
        self.cfg = cfg if isinstance(cfg, LearnerConfig) else LearnerConfig.model_validate(cfg)
        self.rank, self.world_size = rank, world_size
        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(rank),
                          WORLD_SIZE=str(world_size),
                          # Ray gives each GPU actor its own device as cuda:0
                          LOCAL_RANK="0")
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(EXTENSIONS_DIR))
        clear_stale_build_locks(Path(os.environ["TORCH_EXTENSIONS_DIR"]))
        if self.cfg.cpu_cores is not None:   # e.g. learner and rollout on disjoint cores (bench train)
            os.sched_setaffinity(0, parse_cores(self.cfg.cpu_cores))
        torch.set_num_threads(rank_threads(self.cfg))
        import deepspeed

        self._dist = deepspeed.comm
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo",
                                   auto_mpi_discovery=False, verbose=False)
        self.policy, self.reference = self._load_policy(model_path, seed)
        params = [p for p in self.policy.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.cfg.lr, betas=(self.cfg.adam_beta1, self.cfg.adam_beta2),
                                      eps=self.cfg.adam_eps, weight_decay=self.cfg.weight_decay)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=PolicyLogprobs(self.policy), optimizer=optimizer, config=deepspeed_config(self.cfg))
        self.device = self.engine.device
        if self.reference is not None:
            self.reference.to(self.device)
        self.settings = StepSettings.from_config(self.cfg)
        self._manual_grad_norm = self.cfg.zero_stage == 0 and not self.engine.bfloat16_enabled()
        self._closed = False

    def _load_policy(self, model_path: str, seed: int):
        """Under ZeRO-3 the policy is built inside ``deepspeed.zero.Init`` (transformers does it
        while an ``HfDeepSpeedConfig`` is alive): each rank loads only its partition, never the
        whole model. The frozen reference of full fine-tuning is not trained: it is loaded whole,
        outside zero.Init, as the policy module docstring says."""
        if self.cfg.zero_stage != 3:
            return load_policy(model_path, self.cfg, seed)
        from transformers.integrations import HfDeepSpeedConfig

        from learner.policy import load_causal_lm

        hf_ds = HfDeepSpeedConfig(deepspeed_config(self.cfg))   # alive => from_pretrained uses zero.Init
        try:
            policy, _ = load_policy(model_path, self.cfg.model_copy(update={"kl_beta": 0.0}), seed)
        finally:
            from transformers.integrations.deepspeed import unset_hf_deepspeed_config

            unset_hf_deepspeed_config()
            del hf_ds
        reference = None
        if not self.cfg.lora.enabled and self.cfg.kl_beta > 0:
            reference = load_causal_lm(model_path, self.cfg.dtype).eval().requires_grad_(False)
        return policy, reference

    # --- the RankOps interface of learner.step --------------------------------------------

    def logprobs(self, inputs: dict[str, torch.Tensor], *, reference: bool, grad: bool) -> torch.Tensor:
        ids = inputs["input_ids"].to(self.device)
        attn = inputs["attention_mask"].to(self.device)
        mask = inputs["action_mask"].to(self.device)
        dist = {k: inputs[k].to(self.device) for k in ("temperature", "top_p", "top_k", "position_ids")
                if k in inputs}
        if reference and self.reference is not None:
            with torch.no_grad():
                return sequence_logprobs(self.reference, ids, attn, mask, **dist)
        self.engine.train(grad)   # train mode only for the gradient pass (dropout, checkpointing)
        with torch.set_grad_enabled(grad):
            return self.engine(ids, attn, mask, reference=reference, **dist)

    def backward(self, loss: torch.Tensor, boundary: bool) -> None:
        self.engine.set_gradient_accumulation_boundary(boundary)
        self.engine.backward(loss, scale_wrt_gas=False)

    def step(self) -> float:
        norm = None
        if self._manual_grad_norm:
            # plain data parallel in fp32: DeepSpeed clips but does not report the norm
            grads = [p.grad.detach().float() for p in self.policy.parameters() if p.grad is not None]
            norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))) \
                if grads else 0.0
        self.engine.step()
        if norm is None:
            reported = self.engine.get_global_grad_norm()
            norm = float(reported) if reported is not None else float("nan")
        return norm

    def all_reduce(self, values: torch.Tensor, op: str) -> torch.Tensor:
        out = values.to(self.device, copy=True)
        ops = {"sum": self._dist.ReduceOp.SUM, "max": self._dist.ReduceOp.MAX}
        self._dist.all_reduce(out, op=ops[op])
        return out.cpu()

    # --- the driver's API -----------------------------------------------------------------

    def train_step(self, batch_shard: TrainBatch, global_counts: dict[str, int] | None = None) -> dict[str, float]:
        """All GRPO updates of one rollout batch on this rank's shard; global metrics (equal on every rank)."""
        return grpo_step(self, batch_shard, self.settings, global_counts)

    def sft_step(self, batch_shard: TrainBatch, global_tokens: int | None = None) -> dict[str, float]:
        """One cross-entropy update on the action tokens of this rank's shard (SFT warm start)."""
        return sft_step(self, batch_shard, self.cfg.micro_batch_size, global_tokens)

    def sft_eval(self, batch_shard: TrainBatch) -> dict[str, float]:
        """Mean cross-entropy per action token over all ranks' shards (no update)."""
        return sft_eval(self, batch_shard, self.cfg.micro_batch_size)

    def trainable_names(self) -> list[str]:
        """HF checkpoint names of the weights training changes."""
        return trainable_names(self.policy)

    def export_weights(self, mode: str = "merged", names: list[str] | None = None) -> bytes | dict[str, bytes]:
        """Current weights for the rollout engines.

        ``merged``: safetensors bytes of ``names`` (default: the LoRA-targeted weights) with the
        LoRA delta merged in; ``full``: safetensors bytes of ``names`` (default: every weight);
        ``adapter``: the peft adapter files as {file name: bytes}.
        """
        if mode == "adapter":
            return adapter_files(self.policy)
        if mode == "merged":
            if not self.cfg.lora.enabled:
                raise ValueError("weight_sync merged needs LoRA; use full for full fine-tuning")
            return export_safetensors(self.policy, names if names is not None else self.trainable_names())
        if mode == "full":
            return export_safetensors(self.policy, names)
        raise ValueError(f"unknown export mode {mode!r}; use merged, adapter or full")

    # --- direct weight broadcast into the rollout engines (learner.weight_broadcast) ----------

    def _partitioned(self) -> bool:
        return self.cfg.zero_stage == 3 and self.world_size > 1

    def weight_endpoint(self) -> tuple[str, int]:
        """Address where rank 0 will host the weight group's store."""
        from learner.weight_broadcast import free_port

        return ray.util.get_node_ip_address(), free_port()

    def join_weight_group(self, host: str, port: int, world_size: int, backend: str, timeout_s: float,
                          generation: int) -> int:
        """Rank 0 becomes rank 0 of the weight group (blocks until every engine worker joined)."""
        from learner.weight_broadcast import WeightSender

        if self.rank != 0:
            return -1
        self.leave_weight_group()
        self._sender = WeightSender(host, port, world_size, backend, timeout_s, generation)
        return 0

    def leave_weight_group(self) -> None:
        sender = getattr(self, "_sender", None)
        if sender is not None:
            sender.close()
        self._sender = None

    def weight_layout(self, mode: str, names: list[str] | None = None) -> dict[str, Any]:
        """What a sync of ``mode`` sends: [(name, dtype, shape)] and, for adapters, the adapter config."""
        from learner.weight_broadcast import tensor_layout

        if mode == "adapter":
            return {"tensors": tensor_layout(adapter_layout(self.policy)),
                    "adapter_config": adapter_config_json(self.policy)}
        if mode == "merged":
            if not self.cfg.lora.enabled:
                raise ValueError("weight_sync merged needs LoRA; use full for full fine-tuning")
            names = names if names is not None else self.trainable_names()
        return {"tensors": tensor_layout(weight_layout(self.policy, names)), "adapter_config": None}

    def broadcast_weights(self, mode: str, buckets: list[dict]) -> dict[str, Any]:
        """Send every bucket to the engines. Collective under ZeRO-3 (all ranks gather each bucket
        in turn, rank 0 sends it); other ranks return at once otherwise."""
        import time

        if self.rank != 0 and not self._partitioned():
            return {"rank": self.rank}
        sender = getattr(self, "_sender", None)
        if self.rank == 0 and sender is None:
            raise RuntimeError("broadcast_weights before join_weight_group")
        device = sender.device if sender is not None else "cpu"
        start, sent, sums = time.perf_counter(), 0, []
        for bucket in buckets:
            names = [t[0] for t in bucket["tensors"]]
            tensors = (adapter_tensors(self.policy, names, device) if mode == "adapter"
                       else export_tensors(self.policy, names, device))
            if sender is not None:
                nbytes, checksum = sender.send(bucket, tensors)
                sent += nbytes
                sums.append(checksum)
            del tensors
        return {"rank": self.rank, "bytes": sent, "checksums": sums, "seconds": time.perf_counter() - start}

    def save_weights(self, directory: str, mode: str, shard_mb: int = 2048) -> list[str]:
        """Rank 0 writes the policy into ``directory``: ``adapter`` (peft files) or ``full`` (HF
        safetensors shards of at most ``shard_mb``, with an index when there are several). Under
        ZeRO-3 every rank must call it (each shard is gathered in turn)."""
        import json

        from safetensors.torch import save_file

        if self.rank != 0 and not self._partitioned():
            return []
        out = Path(directory)
        if mode == "adapter":
            files = adapter_files(self.policy)   # gathers the (small) LoRA tensors on every rank
            if self.rank == 0:
                out.mkdir(parents=True, exist_ok=True)
                for name, data in files.items():
                    (out / name).write_bytes(data)
            return sorted(files) if self.rank == 0 else []
        if mode != "full":
            raise ValueError(f"save_weights mode {mode!r}: use adapter or full")
        layout = weight_layout(self.policy)
        shards: list[list[str]] = [[]]
        size, limit = 0, shard_mb * 2**20
        for name, dtype, shape in layout:
            nbytes = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
            if shards[-1] and size + nbytes > limit:
                shards.append([])
                size = 0
            shards[-1].append(name)
            size += nbytes
        if self.rank == 0:
            out.mkdir(parents=True, exist_ok=True)
        written, weight_map = [], {}
        for k, names in enumerate(shards):
            tensors = export_tensors(self.policy, names)
            if self.rank == 0:
                fname = "model.safetensors" if len(shards) == 1 else f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
                save_file(tensors, str(out / fname), metadata={"format": "pt"})
                written.append(fname)
                weight_map.update({n: fname for n in names})
            del tensors
        if self.rank == 0 and len(shards) > 1:
            (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
            written.append("model.safetensors.index.json")
        return written

    def save_checkpoint(self, directory: str) -> str:
        """Engine state (trainable weights, optimizer) into ``directory``, replaced atomically.

        Every rank writes into ``<directory>.tmp`` (a shared file system across nodes); rank 0
        renames it into place once all are done. With LoRA the frozen base is not saved: it is
        reloaded from the model path.
        """
        final = Path(directory).resolve()
        tmp, old = final.with_name(final.name + ".tmp"), final.with_name(final.name + ".old")
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.parent.mkdir(parents=True, exist_ok=True)
        self._dist.barrier()
        self.engine.save_checkpoint(str(tmp), tag=CHECKPOINT_TAG, save_latest=True,
                                    exclude_frozen_parameters=self.cfg.lora.enabled)
        self._dist.barrier()
        if self.rank == 0:
            shutil.rmtree(old, ignore_errors=True)
            if final.exists():
                final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        self._dist.barrier()
        return str(final)

    def load_checkpoint(self, directory: str) -> None:
        """Restore what ``save_checkpoint`` wrote (same config and number of ranks)."""
        path = Path(directory).resolve()
        if not (path / CHECKPOINT_TAG).is_dir():
            raise FileNotFoundError(f"no learner checkpoint in {path}")
        loaded, _ = self.engine.load_checkpoint(str(path), tag=CHECKPOINT_TAG,
                                                load_module_strict=not self.cfg.lora.enabled)
        if loaded is None:
            raise RuntimeError(f"DeepSpeed could not load the learner checkpoint in {path}")

    def shutdown(self) -> None:
        """Leave the process group cleanly (barrier first, DESIGN §4)."""
        if self._closed:
            return
        self._closed = True
        if self._dist.is_initialized():
            self._dist.barrier()
            torch.distributed.destroy_process_group()


LearnerWorker = ray.remote(Learner)
