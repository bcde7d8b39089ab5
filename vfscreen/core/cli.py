"""The command-line style shared by every vfscreen command (nnU-Net's): long flags are spelled with underscores
(``--disable_tta``, ``--num_cases``); the hyphenated spelling of older releases (``--disable_tta``) stays accepted as
an alias that ``--help`` does not show. Every command (and sub-command) takes ``--verbose`` (tracebacks on errors,
see :mod:`vfscreen.errors`).
"""
from __future__ import annotations

import argparse
import copy
import functools
from typing import Callable

from vfscreen.errors import cli_entry


def _shown(option_strings: list[str]) -> list[str]:
    """The spellings ``--help`` shows: a hyphenated long flag is hidden when its underscore spelling exists."""
    return [s for s in option_strings
            if not (s.startswith("--") and "-" in s[2:] and "--" + s[2:].replace("-", "_") in option_strings)]


class _HidesHyphenAliases:
    def _format_action_invocation(self, action):
        if not action.option_strings:
            return super()._format_action_invocation(action)
        shown = copy.copy(action)
        shown.option_strings = _shown(action.option_strings)
        return super()._format_action_invocation(shown)


class HelpFormatter(_HidesHyphenAliases, argparse.HelpFormatter):
    pass


class RawDescriptionHelpFormatter(_HidesHyphenAliases, argparse.RawDescriptionHelpFormatter):
    pass


class CommandParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` in vfscreen's style; sub-command parsers (``add_subparsers``) are of this class too."""

    def __init__(self, prog=None, description=None, *, verbose_help: str = "show tracebacks", **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(prog=prog, description=description, **kwargs)
        self.add_argument("--verbose", action="store_true", help=verbose_help)


def command(build_parser: Callable[[], argparse.ArgumentParser]):
    """Decorator of a console entry point ``run(args) -> exit code``: the result is ``main(argv=None)``, which parses
    ``argv`` (default: the command line) with ``build_parser()`` and runs under :func:`vfscreen.errors.cli_entry`."""

    def decorate(run: Callable[[argparse.Namespace], int | None]):
        @cli_entry
        @functools.wraps(run)
        def main(argv: list[str] | None = None):
            return run(build_parser().parse_args(argv))

        return main

    return decorate
