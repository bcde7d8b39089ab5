"""One command-line style (nnU-Net's) for every vfscreen command: long flags spelled with underscores; a hyphenated
spelling is only an alias of an underscore one, accepted but not shown by ``--help``."""
from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vfscreen"
COMMAND_MODULES = sorted(
    ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    for path in PACKAGE.rglob("*.py") if re.search(r"^def build_parser\(", path.read_text(), re.M))


def parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from parsers(sub)


def test_every_command_module_is_checked():
    assert {"vfscreen.inference.cli", "vfscreen.training.cli", "vfscreen.evaluation.benchmark",
            "vfscreen.conversion.verse", "vfscreen.phantom.cli"} <= set(COMMAND_MODULES)


@pytest.mark.parametrize("module_name", COMMAND_MODULES)
def test_long_flags_use_underscores_and_hide_hyphenated_aliases(module_name):
    for parser in parsers(importlib.import_module(module_name).build_parser()):
        help_text = parser.format_help()
        for action in parser._actions:
            for option in action.option_strings:
                if option.startswith("--") and "-" in option[2:]:
                    underscored = "--" + option[2:].replace("-", "_")
                    assert underscored in action.option_strings, f"{parser.prog}: {option} has no {underscored}"
                    assert not re.search(re.escape(option) + r"(?![\w-])", help_text), \
                        f"{parser.prog} --help shows the alias {option}"


def test_hyphenated_alias_parses_like_the_underscore_flag():
    parser = importlib.import_module("vfscreen.phantom.cli").build_parser()
    assert parser.parse_args(["--num-cases", "3"]).num_cases == parser.parse_args(["--num_cases", "3"]).num_cases == 3
    benchmark = importlib.import_module("vfscreen.evaluation.benchmark").build_parser()
    assert benchmark.parse_args(["speed", "--disable-tta"]).disable_tta is True
    assert "--disable_tta" in benchmark._subparsers._group_actions[0].choices["speed"].format_help()
