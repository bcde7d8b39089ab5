"""CPU cores this process may use (light: imported by vfscreen.paths before nnunetv2 and torch)."""
from __future__ import annotations

import os


def usable_cpu_count() -> int:
    """The CPU cores this process may run on (its affinity on Linux; all cores where the OS has no affinity call,
    e.g. macOS and Windows)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)
