"""Memory and time of prediction: the memory budget, its pre-checks, per-stage peaks, and the worker watchdog.

Budget: the plans' device memory (``device.memory_gb``) or the machine's physical memory, whichever is smaller, minus
headroom for the rest of the system (``HEADROOM_FRACTION``, at least ``MIN_HEADROOM_GB``); ``--memory_budget_gb``
overrides it. A case whose estimated need exceeds it fails with :class:`MemoryBudgetError` before the stage
allocates; a worker process that grows past it anyway is stopped by :class:`RssWatchdog` and reported.

Estimates (bytes per voxel, ``*_BYTES_PER_VOXEL``) are upper bounds of the per-stage peaks measured by
``vfscreen_benchmark speed --size_sweep`` (resident memory of the stage minus that of the loaded models).
"""
from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager

import numpy as np

from vfscreen.errors import VfscreenError, EXIT_CASES_FAILED

GB = 2**30
HEADROOM_FRACTION = 0.15
MIN_HEADROOM_GB = 1.0
# whole-scan stages, per input voxel: reading (image + intensity checks) and nnU-Net's preprocessing (float32 copy,
# float64 resampling with spline prefilter, non-zero mask) of the whole field of view
SCAN_BYTES_PER_VOXEL = 28.0
# spine-region stages, per region voxel and output channel (float16 probabilities + float32 slabs) plus per voxel
# (class map, components, label consistency, morphometry)
REGION_BYTES_PER_VOXEL_AND_CHANNEL = 2.5
REGION_BYTES_PER_VOXEL = 24.0


class MemoryBudgetError(VfscreenError):
    """A case would need more memory than the budget allows (it fails; the run goes on)."""

    exit_code = EXIT_CASES_FAILED


def physical_memory_bytes() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def memory_budget_bytes(device_memory_gb: float | None = None, override_gb: float | None = None) -> int | None:
    """The budget in bytes (None: unknown machine memory and no device memory in the plans, no override)."""
    if override_gb is not None:
        return int(float(override_gb) * GB)
    candidates = [value for value in (physical_memory_bytes(),
                                      None if device_memory_gb is None else int(float(device_memory_gb) * GB))
                  if value]
    if not candidates:
        return None
    total = min(candidates)
    return int(total - max(HEADROOM_FRACTION * total, MIN_HEADROOM_GB * GB))


def scan_estimate_bytes(num_voxels: int) -> int:
    return int(num_voxels * SCAN_BYTES_PER_VOXEL)


def region_estimate_bytes(num_voxels: int, num_channels: int) -> int:
    return int(num_voxels * (REGION_BYTES_PER_VOXEL + num_channels * REGION_BYTES_PER_VOXEL_AND_CHANNEL))


def check_estimate(stage: str, estimate: int, budget: int | None, baseline: int = 0, what: str = "") -> None:
    """Raise MemoryBudgetError when ``baseline`` (what the process holds already) + ``estimate`` exceeds ``budget``."""
    if budget is not None and baseline + estimate > budget:
        raise MemoryBudgetError(
            f"{stage} would need ~{(baseline + estimate) / GB:.1f} GB{' for ' + what if what else ''}, over the memory "
            f"budget of {budget / GB:.1f} GB (--memory_budget_gb; default: machine or plans' device memory minus "
            "headroom)")


def _status_kib(field: str, pid: int | str = "self") -> int | None:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def resident_bytes(pid: int | str = "self") -> int | None:
    kib = _status_kib("VmRSS", pid)
    return None if kib is None else kib * 1024


def reset_peak() -> bool:
    """Linux: reset this process's peak resident memory (VmHWM) to its current value; False elsewhere."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_bytes() -> int | None:
    kib = _status_kib("VmHWM")
    return None if kib is None else kib * 1024


class StageMeter:
    """Seconds and peak resident memory of each stage (``with meter.stage(name): ...``)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.peak_gb: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        measured = reset_peak()
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            peak = peak_bytes() if measured else None
            if peak is not None:
                self.peak_gb[name] = max(self.peak_gb.get(name, 0.0), round(peak / GB, 3))


class RssWatchdog:
    """Stops a worker process whose resident memory passes ``budget`` bytes (checked every ``interval_s``)."""

    def __init__(self, process, budget: int | None, interval_s: float = 0.1):
        self.process, self.budget, self.interval_s = process, budget, interval_s
        self.exceeded_bytes: int | None = None
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _watch(self):
        while not self._stop.is_set() and self.process.is_alive():
            rss = resident_bytes(self.process.pid)
            if rss is not None:
                self.peak_bytes = max(self.peak_bytes, rss)
                if self.budget is not None and rss > self.budget:
                    self.exceeded_bytes = rss
                    self.process.kill()
                    return
            self._stop.wait(self.interval_s)


def voxels(shape) -> int:
    return int(np.prod([int(n) for n in shape]))
