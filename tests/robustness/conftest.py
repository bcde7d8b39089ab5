"""Shared builders of the robustness suite: fabricated trained-model folders (random tiny networks saved in the exact
checkpoint formats training writes), tiny preprocessed grader datasets, bad-input files, and in-process CLI runs."""
from __future__ import annotations

import contextlib
import json
import shutil
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk
import torch

from vfscreen import paths

PREDICT_DATASET = "Dataset940_RobustPredict"  # a good fabricated model
EVIL_DATASET = "Dataset941_RobustEvil"  # its checkpoints get replaced by hostile pickles
NETWORK_DATASET = "Dataset946_RobustOffline"


def run_cli(main, argv: list[str], capsys, monkeypatch) -> tuple[int, str, str]:
    """Run a console entry point in-process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["vfscreen"] + [str(a) for a in argv])
    capsys.readouterr()
    with pytest.raises(SystemExit) as raised:
        main([str(a) for a in argv])
    captured = capsys.readouterr()
    return raised.value.code, captured.out, captured.err


def error_lines(text: str) -> list[str]:
    """Lines of a CLI's error output (tqdm's progress bars on stderr are not messages)."""
    return [line for line in text.replace("\r", "\n").splitlines() if "vfscreen: error:" in line]


def write_segmentation_model(results_dataset: Path, folds=(0, 1)) -> Path:
    """nnU-Net model folder (nnU-Net's checkpoint format, numpy scalars in its log) with a random 2-stage U-Net."""
    from nnunet_fakes import write_tiny_nnunet_model

    return write_tiny_nnunet_model(results_dataset, folds)


def write_trained_models(dataset_name: str, folds=(0, 1)) -> Path:
    """nnUNet_results/<dataset_name>/ with a segmentation and a grader fold ensemble (random weights)."""
    from test_predict_models import write_grader_folds

    folder = paths.nnUNet_results / dataset_name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    write_segmentation_model(folder, folds)
    write_grader_folds(folder, dataset_name, folds)
    return folder


@pytest.fixture(scope="session")
def trained_models():
    torch.set_num_threads(1)
    return write_trained_models(PREDICT_DATASET)


def make_ct(path: Path, **kwargs) -> sitk.Image:
    from test_predict_outputs import make_ct as make_tiny_ct

    return make_tiny_ct(path, **kwargs)


def write_preprocessed_grader_dataset(dataset_name: str, num_epochs: int = 2, seed: int = 0) -> dict:
    """nnUNet_preprocessed/<dataset_name>/ with valid tiny plans, splits and fake crops; no old results."""
    from grader_fakes import tiny_plans, write_dataset

    plans = tiny_plans(dataset_name, num_epochs=num_epochs)
    shutil.rmtree(paths.nnUNet_preprocessed / dataset_name, ignore_errors=True)
    shutil.rmtree(paths.nnUNet_results / dataset_name, ignore_errors=True)
    write_dataset(paths.nnUNet_preprocessed, dataset_name, plans, seed=seed)
    return plans


def final_weights(dataset_name: str, fold: int = 0) -> dict:
    path = (paths.nnUNet_results / dataset_name / "vfscreen_grader__vfscreenPlans__3d" / f"fold_{fold}"
            / "checkpoint_final.pth")
    return torch.load(path, map_location="cpu", weights_only=True)["network_weights"]


def assert_same_weights(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for name, tensor in first.items():
        assert torch.equal(tensor, second[name]), name


@contextlib.contextmanager
def no_network():
    """Every attempt to create a socket (any family: TCP, UDP, unix) raises."""
    import socket

    def refuse(*args, **kwargs):
        raise OSError("network access attempted at run time (sockets are disabled in this test)")

    original_socket, original_create_connection = socket.socket, socket.create_connection
    socket.socket = refuse  # type: ignore[misc]
    socket.create_connection = refuse  # type: ignore[assignment]
    try:
        yield
    finally:
        socket.socket, socket.create_connection = original_socket, original_create_connection


PLANNED_DATASET_ID = 947
TINY_PRESET = {"name": "robustness_tiny", "description": "tiny grader for the robustness tests",
               "device": {"type": "cpu", "memory_gb": 4, "num_threads": 1},
               "configurations": {"3d": {"grader": {
                   "num_epochs": 1, "num_workers": 0, "sampler": {"samples_per_class": 1, "views": 2},
                   "crop": {"patch_size": [16, 16, 16]},
                   "network": {"block": "BasicBlockD", "features_per_stage": [4, 8], "n_blocks_per_stage": [1, 1],
                               "strides": [1, 2], "kernel_sizes": [3, 3]}}}}}


def plan_tiny_dataset(preset_path: Path, seed: int = 12345, preprocess: bool = True) -> tuple[str, dict[str, bytes]]:
    """Generate a tiny raw dataset, run vfscreen_plan_and_preprocess (planning, nnU-Net preprocessing, crops) with
    sockets disabled; returns (dataset name, {relative path: bytes} of plans, splits and crops)."""
    from planning_dataset import make_dataset

    from vfscreen.experiment_planning.cli import run as plan_run

    name = make_dataset(paths.nnUNet_raw, PLANNED_DATASET_ID, "RobustPlanned", num_cases=6, size=(24, 24, 24))
    shutil.rmtree(paths.nnUNet_preprocessed / name, ignore_errors=True)
    with no_network():
        assert plan_run(["-d", str(PLANNED_DATASET_ID), "--device", "cpu", "-np", "1", "--preset", str(preset_path),
                         "--seed", str(seed)] + ([] if preprocess else ["--no-preprocess"])) == 0
    folder = paths.nnUNet_preprocessed / name
    if not preprocess:
        return name, {relative: (folder / relative).read_bytes() for relative in ("vfscreenPlans.json",
                                                                                  "splits_final.json")}
    keep = ["vfscreenPlans.json", "splits_final.json", "nnUNetPlans.json"] + \
        [str(p.relative_to(folder)) for p in sorted((folder / "vfscreen_crops_3d").iterdir())
         if not p.name.endswith(".record.json")]  # incremental-state records hold the raw files' mtimes
    return name, {relative: (folder / relative).read_bytes() for relative in keep}


@pytest.fixture(scope="session")
def tiny_preset(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("preset") / "robustness_tiny.json"
    path.write_text(json.dumps(TINY_PRESET))
    return path


@pytest.fixture(scope="session")
def planned_tiny_dataset(tiny_preset):
    torch.set_num_threads(1)
    return plan_tiny_dataset(tiny_preset)
