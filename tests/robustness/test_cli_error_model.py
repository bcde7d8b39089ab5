"""Every command follows the error model: decorated with vfscreen.errors.cli_entry (one line per error, documented
exit codes) and offers --verbose for tracebacks."""
from __future__ import annotations

import importlib

import pytest

ENTRY_POINTS = ["vfscreen.phantom.cli", "vfscreen.phantom.preview", "vfscreen.experiment_planning.cli",
                "vfscreen.experiment_planning.benchmark_budget", "vfscreen.training.cli", "vfscreen.inference.cli",
                "vfscreen.evaluation.cli", "vfscreen.evaluation.benchmark", "vfscreen.conversion.verse",
                "vfscreen.conversion.faint_features", "vfscreen.demo"]
SUBCOMMAND = {"vfscreen.evaluation.benchmark": ["speed"]}  # --verbose belongs to its subcommands


@pytest.mark.parametrize("module_name", ENTRY_POINTS)
def test_command_has_verbose_and_uses_the_error_model(module_name, capsys, monkeypatch):
    main = importlib.import_module(module_name).main
    assert getattr(main, "__wrapped__", None) is not None, f"{module_name}.main is not wrapped by cli_entry"
    argv = SUBCOMMAND.get(module_name, []) + ["--help"]
    monkeypatch.setattr("sys.argv", [module_name] + argv)
    with pytest.raises(SystemExit) as raised:
        main(argv)
    assert raised.value.code == 0
    assert "--verbose" in capsys.readouterr().out


def test_console_scripts_are_all_covered():
    import re
    from pathlib import Path

    setup = (Path(__file__).resolve().parents[2] / "setup.py").read_text()
    modules = set(re.findall(r"= *(vfscreen[\w.]+):main", setup))
    assert modules and modules <= set(ENTRY_POINTS), modules - set(ENTRY_POINTS)
