"""Where vfscreen keeps its data: nnU-Net's own three folders.

vfscreen uses ``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results`` so an existing nnU-Net setup just works.
When a variable is unset, it defaults to ``$VFSCREEN_HOME/{raw,preprocessed,results}`` (``VFSCREEN_HOME`` defaults to
``./vfscreen_data``). The folders are read from the environment at every access (``paths.nnUNet_raw`` etc.), so a
changed environment is seen at once; importing this module changes nothing.

nnunetv2 reads the variables once, when it is first imported. Every vfscreen module that imports nnunetv2 therefore
calls :func:`export_for_nnunet` first, which writes vfscreen's defaults into the environment of this process (and
its children) for the variables that are unset.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from vfscreen.utils.cpus import usable_cpu_count

FOLDERS = {"nnUNet_raw": "raw", "nnUNet_preprocessed": "preprocessed", "nnUNet_results": "results"}


def home() -> Path:
    return Path(os.environ.get("VFSCREEN_HOME", "vfscreen_data")).expanduser().resolve()


def folder(variable: str) -> Path:
    """The folder of one of nnU-Net's variables (its value, else vfscreen's default below VFSCREEN_HOME)."""
    value = os.environ.get(variable)
    return Path(value) if value else home() / FOLDERS[variable]


NNUNET_PROCESSES_VARIABLE = "nnUNet_def_n_proc"  # read by nnunetv2.configuration at import
NNUNET_DEFAULT_PROCESSES = 8  # nnunetv2.configuration's default_num_processes


def export_for_nnunet() -> list[str]:
    """Set the unset nnU-Net folder variables to vfscreen's defaults (before nnunetv2 is imported); returns their
    names. Raises RuntimeError when nnunetv2 was imported already without them (it would use no folders at all)."""
    unset = [variable for variable in FOLDERS if not os.environ.get(variable)]
    if unset and "nnunetv2.paths" in sys.modules:
        raise RuntimeError(f"nnunetv2 was imported before vfscreen set {', '.join(unset)}; import vfscreen first or "
                           "set nnU-Net's variables")
    for variable in unset:
        os.environ[variable] = str(folder(variable))
    if not os.environ.get(NNUNET_PROCESSES_VARIABLE):
        # nnU-Net's own default is 8 worker processes (validation export, preprocessing); on fewer cores they only
        # compete (each spawned worker imports torch), so vfscreen caps the default at the usable cores
        os.environ[NNUNET_PROCESSES_VARIABLE] = str(min(NNUNET_DEFAULT_PROCESSES, usable_cpu_count()))
    return unset


def __getattr__(name: str) -> Path:
    if name in FOLDERS:
        return folder(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
