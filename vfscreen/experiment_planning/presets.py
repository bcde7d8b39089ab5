"""Planning presets: partial plans plus planning knobs, deep-merged over the computed plan (see vfscreen.core.plans).

A preset is a JSON file of the ``vfscreen.presets`` package data (``vfscreen/presets/<name>.json``) or any path::

    {"name": "cpu_demo", "description": "...",
     "device": {"type": "cpu", "memory_gb": 8, "num_threads": 2},          # optional, CLI flags win
     "budget": {"seg_minutes": 20, "grader_minutes": 8, ...},              # optional, see budget.PlanningTargets
     "configurations": {"3d": {"grader": {...}, "segmentation": {...}}}}   # optional: fixed plan values
"""
from __future__ import annotations

import copy
from pathlib import Path

from vfscreen.core.plans import CONFIGURATION, read_json
from vfscreen.errors import ConfigError

PRESETS_FOLDER = Path(__file__).resolve().parents[1] / "presets"  # package data (setup.py)


def deep_merge(base: dict, overlay: dict) -> dict:
    """A copy of ``base`` with ``overlay``'s values put in, recursively for nested objects (lists are replaced)."""
    merged = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_FOLDER.glob("*.json"))


def load_preset(name_or_path: str | Path) -> dict:
    """A preset by name (``vfscreen/presets/<name>.json``) or by path. Raises ConfigError for unknown names/bad files."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".json" or candidate.is_file() or "/" in str(name_or_path):
        path = candidate
    else:
        path = PRESETS_FOLDER / f"{name_or_path}.json"
    if not path.is_file():
        raise ConfigError(f"preset {name_or_path!r} not found (looked for {path}); available presets: "
                          f"{', '.join(available_presets()) or 'none'}")
    preset = read_json(path, "preset")
    allowed = {"name", "description", "device", "budget", "configurations"}
    unknown = sorted(set(preset) - allowed)
    if unknown:
        raise ConfigError(f"{path}: unknown preset field(s) {unknown}; allowed: {sorted(allowed)}")
    configurations = preset.get("configurations", {})
    if not isinstance(configurations, dict) or set(configurations) - {CONFIGURATION}:
        raise ConfigError(f"{path}: field 'configurations' may only hold {CONFIGURATION!r}")
    preset.setdefault("name", path.stem)
    return preset
