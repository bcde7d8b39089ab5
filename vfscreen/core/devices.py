"""Device names of the plans and the command lines ('cpu' | 'cuda' | 'mps') -> torch devices."""
from __future__ import annotations

import os

import torch

from vfscreen.errors import ConfigError
from vfscreen.utils.cpus import usable_cpu_count

__all__ = ["DEVICE_TYPES", "resolve_device", "usable_cpu_count"]

DEVICE_TYPES = ("cpu", "cuda", "mps")


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
