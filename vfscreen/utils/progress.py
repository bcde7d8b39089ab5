"""Progress bars on a terminal only: in a log (stderr redirected) a bar is one line when its stage ends, or nothing
for the short-lived bars (``leave=False``) whose stage logs its own line (an epoch, a bootstrap)."""
from __future__ import annotations

import sys
import time

from tqdm import tqdm


def on_terminal() -> bool:
    return sys.stderr.isatty()


class _StageLine:
    """tqdm's interface (iterate, update, set_postfix, close, with) without a bar: counts and prints one line."""

    def __init__(self, iterable=None, desc: str = "", total: int | None = None, unit: str = "it", leave: bool = True,
                 **_ignored):
        self.iterable, self.desc, self.unit, self.leave = iterable, desc, unit, leave
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.n, self.postfix, self._started, self._closed = 0, "", time.perf_counter(), False

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.n += 1
        finally:
            self.close()

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.leave and self.n:
            counted = f"{self.n}/{self.total}" if self.total else str(self.n)
            postfix = f" ({self.postfix})" if self.postfix else ""
            print(f"{self.desc}: {counted} {self.unit} in {time.perf_counter() - self._started:.1f} s{postfix}",
                  file=sys.stderr, flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress_bar(iterable=None, *, disable: bool = False, **kwargs):
    """``tqdm(iterable, **kwargs)`` on a terminal; elsewhere one line per stage (see the module docstring)."""
    if disable or on_terminal():
        return tqdm(iterable, disable=disable, **kwargs)
    return _StageLine(iterable, **kwargs)
