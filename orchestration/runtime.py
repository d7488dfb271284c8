"""Process-level helpers of the driver: atomic file writes and connecting to Ray."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from orchestration.errors import UserInputError


def write_json_atomic(path: Path, data: Any) -> Path:
    """Write JSON to a temp file and rename it: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def save_figure_atomic(fig, out: Path, dpi: int = 110) -> Path:
    """Save a matplotlib figure under a temp name, close it, and rename: no half-written PNG."""
    import matplotlib.pyplot as plt

    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    tmp.replace(out)
    return out


def close_all(closers, started_ray: bool) -> None:
    """Run every shutdown step even if one fails (each failure is printed), then stop the Ray
    instance this process started, if it did."""
    for closer in closers:
        try:
            closer()
        except Exception as exc:  # noqa: BLE001 - keep closing the rest
            print(f"warning: shutdown: {exc}")
    if started_ray:
        import ray

        ray.shutdown()


def read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file (no final empty line); bad UTF-8 is a UserInputError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserInputError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    return lines


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX). Without it torch's bf16
    matmuls are emulated: ~100x slower than fp32 on an AVX2-only EPYC (README, "dtype")."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: str, on_gpu: bool) -> str:
    """``auto`` -> ``bfloat16`` on a GPU or a bf16-capable CPU, else ``float32``; others unchanged."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if on_gpu or cpu_has_native_bf16() else "float32"


def start_ray(address: str | None, num_cpus: int | None, log_to_driver: bool = True) -> bool:
    """Join ``address`` (or $RAY_ADDRESS) or start a local Ray; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")   # a local instance needs no token
    try:
        ray.init(address=address, num_cpus=None if address else num_cpus,
                 include_dashboard=False, log_to_driver=log_to_driver)
    except ConnectionError as exc:
        raise UserInputError(f"ray.address={address}: cannot reach a Ray cluster there ({exc}); "
                             "start one with `ray start --head` or unset ray.address") from None
    return True
