"""Where vfscreen keeps its data: nnU-Net's own three folders.

vfscreen uses ``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results`` so an existing nnU-Net setup just works.
When a variable is unset, it defaults to ``$VFSCREEN_HOME/{raw,preprocessed,results}`` (``VFSCREEN_HOME`` defaults to
``./vfscreen_data``). This module must be imported before :mod:`nnunetv2` (``vfscreen/__init__.py`` does so), because
nnunetv2 reads the variables once, at import time.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

_FOLDERS = {"nnUNet_raw": "raw", "nnUNet_preprocessed": "preprocessed", "nnUNet_results": "results"}


def _apply_defaults() -> list[str]:
    """Set unset nnU-Net folder variables to vfscreen's defaults; return the names that were set."""
    home = Path(os.environ.get("VFSCREEN_HOME", "vfscreen_data")).expanduser().resolve()
    newly_set = []
    for variable, sub_folder in _FOLDERS.items():
        if not os.environ.get(variable):
            os.environ[variable] = str(home / sub_folder)
            newly_set.append(variable)
    return newly_set


_defaulted = _apply_defaults()
if _defaulted and "nnunetv2" in sys.modules:  # pragma: no cover - a programming error, not a user error
    raise ImportError("vfscreen.paths must be imported before nnunetv2 (nnunetv2 reads its folders at import time)")
if _defaulted and not os.environ.get("VFSCREEN_QUIET"):
    print(f"vfscreen: {', '.join(_defaulted)} not set; data goes to {Path(os.environ['nnUNet_raw']).parent} "
          "(set VFSCREEN_HOME or nnU-Net's variables to change this)", file=sys.stderr)
    os.environ["VFSCREEN_QUIET"] = "1"  # say it once, also for child processes

nnUNet_raw = Path(os.environ["nnUNet_raw"])
nnUNet_preprocessed = Path(os.environ["nnUNet_preprocessed"])
nnUNet_results = Path(os.environ["nnUNet_results"])
