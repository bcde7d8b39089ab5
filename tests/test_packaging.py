"""The package as users install it: a wheel built from the sources, installed non-editable into a folder of its own,
runs ``vfscreen_plan_and_preprocess --preset cpu_demo`` on a tiny dataset (the presets are package data).

The installed copy runs with ``python -S`` (no site-packages processing, so the editable install of the development
venv cannot be picked up) and this interpreter's site-packages appended for the dependencies; nothing is downloaded
(``--no-deps``, ``--no-index``, ``--no-build-isolation``)."""
import configparser
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from planning_dataset import make_dataset

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _pip(*args, cwd):
    result = subprocess.run([sys.executable, "-m", "pip", *args, "--no-deps", "--no-index", "--quiet",
                             "--disable-pip-version-check"], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow  # builds and installs a wheel, then plans and preprocesses a tiny dataset in a subprocess
def test_wheel_installs_and_plans_with_a_packaged_preset(tmp_path):
    source = tmp_path / "source"  # a copy: building must not leave build/ or *.egg-info in the checkout
    shutil.copytree(PROJECT_ROOT / "vfscreen", source / "vfscreen", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.py", "README.md", "LICENSE"):
        shutil.copy(PROJECT_ROOT / name, source / name)
    _pip("wheel", "--no-build-isolation", "-w", str(tmp_path / "wheel"), str(source), cwd=tmp_path)
    wheels = list((tmp_path / "wheel").glob("vfscreen-*.whl"))
    assert len(wheels) == 1
    target = tmp_path / "site"
    _pip("install", "--target", str(target), str(wheels[0]), cwd=tmp_path)
    assert (target / "vfscreen" / "presets" / "cpu_demo.json").is_file()

    entry_points = configparser.ConfigParser()
    entry_points.read(next(target.glob("vfscreen-*.dist-info")) / "entry_points.txt")
    module, function = entry_points["console_scripts"]["vfscreen_plan_and_preprocess"].split(":")
    data = tmp_path / "data"
    for sub in ("raw", "preprocessed", "results"):
        (data / sub).mkdir(parents=True)
    name = make_dataset(data / "raw", 981, "WheelPlan", num_cases=5, grades=lambda case, index: (case + index) % 4)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")},
           "PYTHONPATH": os.pathsep.join([str(target), sysconfig.get_paths()["purelib"],
                                          sysconfig.get_paths()["platlib"]]),
           "nnUNet_raw": str(data / "raw"), "nnUNet_preprocessed": str(data / "preprocessed"),
           "nnUNet_results": str(data / "results")}
    code = (f"import sys, vfscreen; print('vfscreen from', vfscreen.__file__); from {module} import {function} as entry; "
            "sys.argv[0] = 'vfscreen_plan_and_preprocess'; sys.exit(entry())")
    result = subprocess.run([sys.executable, "-S", "-c", code, "-d", "981", "--preset", "cpu_demo", "--device", "cpu",
                             "-np", "1"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"vfscreen from {target / 'vfscreen' / '__init__.py'}" in result.stdout  # the installed copy, not the checkout
    plans = json.loads((data / "preprocessed" / name / "vfscreenPlans.json").read_text())
    assert plans["preset"] == "cpu_demo"
    assert (data / "preprocessed" / name / "vfscreen_crops_3d" / "crops.csv").is_file()
