"""vfscreen's error model: a few exception types with messages a user can act on, and documented exit codes.

Exit codes of every vfscreen command:
    0  success
    1  the run finished, but some cases failed (listed in errors.csv / the log)
    2  usage or configuration error (bad arguments, missing/invalid plans, dataset or model) - nothing was done
    3  bad input data that stops the run (e.g. an invalid dataset for planning or conversion)
  130  interrupted (Ctrl-C); nothing half-written is left behind
Messages name the file, case or field and say what to do. Tracebacks appear only with ``--verbose`` or
``VFSCREEN_VERBOSE=1``.
"""
from __future__ import annotations

import functools
import os
import sys

EXIT_OK = 0
EXIT_CASES_FAILED = 1
EXIT_USAGE = 2
EXIT_BAD_INPUT = 3
EXIT_INTERRUPTED = 130


class VfscreenError(Exception):
    """Base class of all user-facing errors."""

    exit_code = EXIT_USAGE


class ConfigError(VfscreenError):
    """Bad arguments, plans, presets, model folders or checkpoints."""

    exit_code = EXIT_USAGE


class InputError(VfscreenError):
    """A bad input file, case or dataset (unreadable, wrong dimensionality, geometry mismatch, unknown labels...)."""

    exit_code = EXIT_BAD_INPUT


def verbose_requested(argv: list[str] | None = None) -> bool:
    argv = sys.argv if argv is None else argv
    return "--verbose" in argv or os.environ.get("VFSCREEN_VERBOSE", "") not in ("", "0")


def cli_entry(main):
    """Decorator for console entry points: one line per error, documented exit codes, traceback only if verbose."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            result = main(*args, **kwargs)
        except VfscreenError as error:
            if verbose_requested():
                raise
            print(f"vfscreen: error: {error}", file=sys.stderr)
            sys.exit(error.exit_code)
        except KeyboardInterrupt:
            print("vfscreen: interrupted", file=sys.stderr)
            sys.exit(EXIT_INTERRUPTED)
        sys.exit(int(result or 0))

    return wrapper
