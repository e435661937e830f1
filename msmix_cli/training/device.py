"""Where a run computes: the device, mixed precision, CPU threads, host-to-GPU copies and optional compilation."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Callable, ContextManager

import torch
from torch import Tensor

from msmix_cli.errors import BadInput
from msmix_cli.types import Batch

# torch's own default, read before msmix changes it: physical cores, or OMP_NUM_THREADS when set (torchrun sets 1).
TORCH_DEFAULT_THREADS = torch.get_num_threads()


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; asking for CUDA without one is a user error, not a silent CPU run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise BadInput(f"--device {name}: no CUDA device is available here; use --device cpu or auto")
        try:
            device = torch.device(name)
        except RuntimeError:
            raise BadInput(f"--device {name!r} is not a valid CUDA device name (e.g. cuda, cuda:0)") from None
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise BadInput(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
        return device
    raise BadInput(f"unknown device {name!r}; choose one of: auto, cpu, cuda, cuda:N")


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """bf16 where the GPU computes it natively, else fp16 (which needs a gradient scaler); None means full precision.

    Emulated bf16 (pre-Ampere GPUs) is slower than fp16, hence `including_emulation=False`.
    """
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> ContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(batch: Batch, device: torch.device) -> Batch:
    """The batch on `device`; CUDA copies go through pinned memory so they run asynchronously."""
    if device.type == "cuda":
        batch = map_tensors(batch, Tensor.pin_memory)
    return batch.to(device, non_blocking=True)


def map_tensors(value: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """Apply `fn` to every tensor inside nested dataclasses and dicts (a Batch and its Multimodal inputs)."""
    if isinstance(value, Tensor):
        return fn(value)
    if isinstance(value, dict):
        return {key: map_tensors(item, fn) for key, item in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: map_tensors(getattr(value, f.name), fn) for f in dataclasses.fields(value) if f.init}
        return dataclasses.replace(value, **fields)
    return value


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a container's cgroup CPU quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return max(1, min(cores, quota) if quota else cores)


def cgroup_cpu_quota() -> int | None:
    """The CPU limit of a cgroup (v2 `cpu.max`, else v1 `cfs_quota_us`), rounded up; None when unlimited or unknown."""
    v2 = _read_text("/sys/fs/cgroup/cpu.max")  # "200000 100000", or "max 100000" when unlimited
    quota, period = v2.split()[:2] if v2 else (_read_text("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"),
                                               _read_text("/sys/fs/cgroup/cpu/cpu.cfs_period_us"))
    try:
        quota, period = int(quota), int(period)
    except (TypeError, ValueError):
        return None
    return math.ceil(quota / period) if quota > 0 and period > 0 else None


def _read_text(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def configure_threads(requested: int | None, processes_per_node: int = 1) -> int:
    """Set torch's intra-op threads: `requested`, else torch's default capped by the cores this process may
    use, shared among the training processes of this machine; returns the number set.

    msmix slices batches in the training process (no DataLoader workers), so the compute threads may have
    every core; more threads than cores (containers report the host's cores) only add contention.
    """
    threads = requested or max(1, min(TORCH_DEFAULT_THREADS, available_cores() // max(1, processes_per_node)))
    torch.set_num_threads(threads)
    return threads


# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
KEPT_FREE_BYTES = 2**31 - 1  # the most mallopt takes: freed memory up to 2 GiB stays with the process


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for the next allocation instead of handing it back to the OS.

    A training step allocates and frees the same large tensors every time (TFN's 36 MB fusion-layer gradient,
    MulT's [B, H, T, S] attention weights). glibc serves blocks over 32 MB with mmap and returns them on free,
    so each step faults every page in again, zero-filled by the kernel: a quarter of a TFN step's CPU time on
    one thread. Served from the heap and not trimmed, the next step reuses them. The price: memory freed
    during training stays counted in the process's resident set until it exits. Returns False where the C
    library is not glibc (nothing changes there).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, KEPT_FREE_BYTES))
    except (OSError, AttributeError):
        return False


def compile_backbone(model: torch.nn.Module) -> None:
    """torch.compile the backbone's `encode` and `head` (the mixer stays eager: it picks pairs on the host).

    Shapes change between the training step (B + K rows in the head) and evaluation, so the compiler
    treats the batch size as dynamic after the first recompilation.
    """
    model.encode = torch.compile(model.encode)  # type: ignore[method-assign]
    model.head = torch.compile(model.head)  # type: ignore[method-assign]
