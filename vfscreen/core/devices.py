"""Device names of the plans and the command lines ('cpu' | 'cuda' | 'mps') -> torch devices."""
from __future__ import annotations

import os

import torch

from vfscreen.errors import ConfigError

DEVICE_TYPES = ("cpu", "cuda", "mps")


def usable_cpu_count() -> int:
    """The CPU cores this process may run on (its affinity on Linux; all cores where the OS has no affinity call,
    e.g. macOS and Windows)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def resolve_device(name, local_rank: int = 0) -> torch.device:
    """'cpu' | 'cuda' | 'mps' (or a torch.device) -> torch.device; ConfigError if this machine does not have it.
    ``local_rank`` picks the GPU of a distributed worker."""
    if isinstance(name, torch.device):
        if name.type == "cuda" and name.index is not None:
            if not torch.cuda.is_available():
                raise ConfigError("device 'cuda' requested but no CUDA GPU is available here (use -device cpu)")
            return name
        name = name.type
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device 'cuda' requested but no CUDA GPU is available here (use -device cpu)")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if name == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ConfigError("device 'mps' requested but Apple MPS is not available here (use -device cpu)")
        return torch.device("mps")
    raise ConfigError(f"unknown device {name!r} (choose {', '.join(DEVICE_TYPES)})")
