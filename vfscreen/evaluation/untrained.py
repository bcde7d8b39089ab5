"""Prediction speed of a plan that has no trained model yet (``vfscreen_benchmark speed --untrained_preset NAME``).

Seconds per case do not depend on weight values, so the networks of a plan are timed with random (seeded) weights:

1. **Plans.** A small planning dataset of the phantom preset (default ``full``, the clinical-like Dataset501) is
   generated and the real planner (``vfscreen_plan_and_preprocess --no_preprocess --preset NAME``, in a subprocess
   with its own nnU-Net folders) plans it: nnU-Net's configuration and vfscreen's grader exactly as a user of that
   preset would get them.
2. **Models.** For every fold, the segmentation network (the plan's nnU-Net configuration and trainer class,
   27 outputs) and the grader (``build_grader`` with the plan's network) are built with ``torch.manual_seed`` and
   saved as an nnU-Net model folder and a vfscreen grader folder; prediction loads them with its own loaders
   (``NnunetSegmenter``: ``nnUNetPredictor.manual_initialization``; ``FoldEnsembleGrader``).
3. **Case.** A phantom of the same preset with a thoraco-lumbar field of view and the requested slice thickness
   (default 1.5 mm), or the user's ``-i`` images with ``--labels``.
4. **Ground truth downstream.** An untrained segmenter labels junk, which would make the later stages time a random
   number of fragments. :class:`GroundTruthDownstream` runs (and so times) the segmentation ensemble on the image,
   discards its output and hands the case's ground-truth mask (as a one-hot probability volume, what a confident
   network returns) to label consistency, crops, grading, morphometry and the report.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

import torch

from vfscreen import paths
from vfscreen.core.devices import resolve_device
from vfscreen.core.grader_checkpoint import PLANS_COPY, checkpoint_path, save_checkpoint
from vfscreen.core.grader_network import build_grader
from vfscreen.core.model_folders import GRADER_TRAINER_NAMES
from vfscreen.core.nnunet_models import build_segmentation_network, dataset_json_for_grouping, label_grouping
from vfscreen.core.plans import (CONFIGURATION, PLANS_FILE_NAME, PLANS_NAME, configuration_section, crop_num_channels,
                                 grader_section, segmentation_settings)
from vfscreen.errors import ConfigError
from vfscreen.evaluation.speed import run_speed
from vfscreen.experiment_planning.budget import grader_cost
from vfscreen.inference.grading import FoldEnsembleGrader
from vfscreen.inference.cases import list_cases
from vfscreen.inference.segmentation import Models, NnunetSegmenter
from vfscreen.labels import NUM_CLASSES
from vfscreen.phantom.acquisition import PRESETS
from vfscreen.phantom.anatomy import FOV_KINDS
from vfscreen.phantom.generator import case_anatomy, case_specs, generate_case, generate_dataset
from vfscreen.utils.atomic import atomic_path, atomic_write_image, atomic_write_json
from vfscreen.utils.image_io import check_same_geometry, read_image

paths.export_for_nnunet()  # nnunetv2 reads its folders once, at import
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager  # noqa: E402  (after export_for_nnunet)

PLANNING_DATASET_ID = 999  # inside the benchmark's own temporary nnU-Net folders only
DEFAULT_FOLDS = (0, 1, 2, 3, 4)
WEIGHTS_NOTE = "random, seeded; timing only"
DOWNSTREAM_NOTE = "ground-truth mask"
NNUNET_3D_MIRROR_AXES = (0, 1, 2)  # what nnUNetTrainer stores for 3D configurations


def write_phantom_case(folder: Path, phantom_preset: str = "full", slice_thickness_mm: float | None = 1.5,
                       fov_kind: str = "thoracolumbar", seed: int = 0, max_draws: int = 64) -> dict:
    """First phantom of ``seed`` whose field of view is ``fov_kind``; written as ``images/<case>_0000.nii.gz`` and
    ``labels/<case>.nii.gz`` (nnU-Net class ids). Returns its description (paths, spacing, size, vertebrae)."""
    if phantom_preset not in PRESETS:
        raise ConfigError(f"--phantom_preset {phantom_preset!r} is unknown (choose one of {', '.join(PRESETS)})")
    if fov_kind not in FOV_KINDS:
        raise ConfigError(f"field of view {fov_kind!r} is unknown (choose one of {', '.join(FOV_KINDS)})")
    preset = PRESETS[phantom_preset]
    if slice_thickness_mm is not None:
        if slice_thickness_mm <= 0:
            raise ConfigError(f"--slice_thickness_mm must be > 0, got {slice_thickness_mm}")
        preset = preset.with_changes(slice_thickness_mm=(float(slice_thickness_mm),) * 2)
    spec = next((s for s in case_specs(seed, max_draws, 0, preset) if case_anatomy(s).fov_kind == fov_kind), None)
    if spec is None:
        raise ConfigError(f"no {fov_kind} phantom among the first {max_draws} cases of seed {seed}")
    generated = generate_case(spec)
    image_path = Path(folder) / "images" / f"{spec.case_id}_0000.nii.gz"
    label_path = Path(folder) / "labels" / f"{spec.case_id}.nii.gz"
    atomic_write_image(image_path, generated.ct)
    atomic_write_image(label_path, generated.label)
    anatomy = generated.anatomy
    return {"case_id": spec.case_id, "image": str(image_path), "labels": str(label_path),
            "phantom_preset": phantom_preset, "seed": seed, "field_of_view": anatomy.fov_kind,
            "whole_vertebrae": [anatomy.vertebrae[i].name for i in anatomy.whole],
            "size": list(generated.ct.GetSize()), "spacing_mm": [round(s, 4) for s in generated.ct.GetSpacing()]}


def plan_untrained(work_folder: Path, plans_preset: str | None, phantom_preset: str = "full",
                   num_planning_cases: int = 8, seed: int = 0) -> dict:
    """Plan a generated planning dataset of ``phantom_preset`` with the real planner and ``plans_preset``
    (None: the planner's defaults for the device present). Returns {"plans", "nnunet_plans", "dataset_json",
    "command"}."""
    work_folder = Path(work_folder)
    folders = {name: work_folder / sub for name, sub in (("nnUNet_raw", "raw"), ("nnUNet_preprocessed",
                                                          "preprocessed"), ("nnUNet_results", "results"))}
    raw = generate_dataset(folders["nnUNet_raw"], seed=seed, num_cases=num_planning_cases, num_test_cases=0,
                           preset=phantom_preset, num_processes=1, dataset_id=PLANNING_DATASET_ID, progress=False,
                           overwrite=True)
    command = [sys.executable, "-m", "vfscreen.experiment_planning.cli", "-d", str(PLANNING_DATASET_ID),
               "--no_preprocess", "--overwrite_plans", "-np", "1"]
    if plans_preset:
        command += ["--preset", str(plans_preset)]
    environment = {**os.environ, **{name: str(path) for name, path in folders.items()}, "VFSCREEN_QUIET": "1"}
    completed = subprocess.run(command, env=environment, capture_output=True, text=True, encoding="utf-8",
                               errors="replace", check=False)  # progress bars are UTF-8 whatever the locale
    if completed.returncode != 0:
        message = (completed.stderr.strip() or completed.stdout.strip() or "no output").splitlines()[-1]
        raise ConfigError(f"planning {phantom_preset} phantoms with preset {plans_preset!r} failed: {message}")
    preprocessed = folders["nnUNet_preprocessed"] / raw.name
    plans = json.loads((preprocessed / PLANS_FILE_NAME).read_text())
    segmentation = segmentation_settings(plans, CONFIGURATION).section
    nnunet_plans = json.loads((preprocessed / f"{segmentation['nnunet_plans_identifier']}.json").read_text())
    return {"plans": plans, "nnunet_plans": nnunet_plans,
            "dataset_json": json.loads((raw / "dataset.json").read_text()),
            "command": " ".join(["vfscreen_plan_and_preprocess"] + command[3:])}


def write_untrained_models(results_folder: Path, planned: dict, folds=DEFAULT_FOLDS, seed: int = 0
                           ) -> tuple[Path, Path]:
    """nnU-Net model folder + vfscreen grader folder, one random (seeded) checkpoint per fold, laid out as training
    writes them. Returns (segmentation folder, grader folder)."""


    plans, nnunet_plans = planned["plans"], planned["nnunet_plans"]
    segmentation = segmentation_settings(plans, CONFIGURATION).section
    configuration = segmentation["nnunet_configuration"]
    plans_manager = PlansManager(nnunet_plans)
    configuration_manager = plans_manager.get_configuration(configuration)
    grouping = label_grouping(configuration_manager.configuration)
    dataset_json = dataset_json_for_grouping(planned["dataset_json"], grouping)
    segmentation_folder = Path(results_folder) / (f"{segmentation['trainer']}__"
                                                  f"{segmentation['nnunet_plans_identifier']}__{configuration}")
    atomic_write_json(segmentation_folder / "plans.json", nnunet_plans)
    atomic_write_json(segmentation_folder / "dataset.json", dataset_json)
    for fold in folds:
        torch.manual_seed(seed + fold)
        network = build_segmentation_network(segmentation["trainer"], plans_manager, configuration_manager,
                                             dataset_json)
        checkpoint = {"network_weights": network.state_dict(), "init_args": {"configuration": configuration},
                      "trainer_name": segmentation["trainer"],
                      "inference_allowed_mirroring_axes": NNUNET_3D_MIRROR_AXES}
        with atomic_path(segmentation_folder / f"fold_{fold}" / "checkpoint_final.pth") as temporary:
            torch.save(checkpoint, temporary)

    grader = grader_section(plans, CONFIGURATION)
    input_channels = crop_num_channels(grader["crop"])
    grader_folder = Path(results_folder) / f"{GRADER_TRAINER_NAMES['supcon']}__{PLANS_NAME}__{CONFIGURATION}"
    for fold in folds:
        torch.manual_seed(seed + 1000 + fold)
        network = build_grader(grader["network"], "supcon", input_channels)
        atomic_write_json(grader_folder / f"fold_{fold}" / PLANS_COPY, plans)
        save_checkpoint(checkpoint_path(grader_folder / f"fold_{fold}", "final"), network, None, None,
                        {"dataset_name": plans["dataset_name"], "configuration": CONFIGURATION, "fold": fold,
                         "loss": "supcon", "network_plan": grader["network"], "input_channels": input_channels,
                         "weights": WEIGHTS_NOTE, "seed": seed + 1000 + fold})
    return segmentation_folder, grader_folder


class GroundTruthDownstream:
    """Segmenter for speed runs: times the real ``segmenter`` on the image, discards its junk output and returns the
    case's ground truth: (class map (Z, Y, X) uint8 nnU-Net class ids, one-hot probabilities (27, Z, Y, X) float16).

    ``prepare(case, image)`` (untimed, before each case) reads the case's mask from ``label_paths[case_id]``."""
    def __init__(self, segmenter, label_paths: dict[str, Path]):
        self.segmenter = segmenter
        self.label_paths = {case_id: Path(path) for case_id, path in label_paths.items()}
        self.class_map = self.probabilities = None

    def prepare(self, case, image: sitk.Image) -> None:
        if case.case_id not in self.label_paths:
            raise ConfigError(f"case {case.case_id}: no ground-truth mask (give --labels FILE|FOLDER with "
                              f"{case.case_id}.nii.gz)")
        mask = read_image(self.label_paths[case.case_id], what="ground-truth mask")
        check_same_geometry(image, mask, source=str(self.label_paths[case.case_id]))
        self.class_map = sitk.GetArrayFromImage(mask).astype(np.uint8)  # (Z, Y, X)
        if self.class_map.max() >= NUM_CLASSES:
            raise ConfigError(f"{self.label_paths[case.case_id]}: labels must be nnU-Net class ids "
                              f"0..{NUM_CLASSES - 1}")
        self.probabilities = np.zeros((NUM_CLASSES,) + self.class_map.shape, dtype=np.float16)
        np.put_along_axis(self.probabilities, self.class_map[None].astype(np.intp), 1.0, axis=0)

    def __call__(self, image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
        if self.class_map is None:
            raise RuntimeError("GroundTruthDownstream.prepare(case, image) must run before each case")
        self.segmenter(image)  # timed by predict_case; its labels come from random weights
        class_map, probabilities = self.class_map, self.probabilities
        self.class_map = self.probabilities = None
        return class_map, probabilities


def label_paths_for(cases, labels: str | Path) -> dict[str, Path]:
    """``--labels``: one mask file (one case) or a folder of ``<case>.nii.gz``."""
    labels = Path(labels)
    if labels.is_file():
        if len(cases) != 1:
            raise ConfigError(f"--labels {labels} is one file but the input holds {len(cases)} cases; give a folder")
        return {cases[0].case_id: labels}
    if not labels.is_dir():
        raise ConfigError(f"--labels {labels} does not exist")
    return {case.case_id: labels / f"{case.case_id}.nii.gz" for case in cases}


def run_untrained_speed(plans_preset: str | None, input_path=None, labels=None, work_folder=None,
                        phantom_preset: str = "full", slice_thickness_mm: float | None = 1.5,
                        fov_kind: str = "thoracolumbar", num_planning_cases: int = 8, folds=DEFAULT_FOLDS,
                        seed: int = 0, device: str = "cpu", num_cases: int | None = None,
                        num_threads: int | None = None, tile_step_size: float = 0.5, use_mirroring: bool = True,
                        progress: bool = True) -> dict:
    """Plan, build random (seeded) fold ensembles, then time prediction with vfscreen.evaluation.speed.run_speed
    (segmentation on the image, everything after it on the ground-truth mask). Returns run_speed's JSON plus
    ``weights``, ``downstream_on`` and ``untrained`` (plans, networks, case, planning command)."""
    import tempfile


    folds = [int(fold) for fold in folds]
    if not folds or len(set(folds)) != len(folds) or min(folds) < 0:
        raise ConfigError(f"-f: give distinct fold numbers >= 0, got {folds}")
    if input_path is not None and labels is None:
        raise ConfigError("-i with --untrained_preset needs --labels (the cases' ground-truth masks): the stages "
                          "after segmentation run on them")
    if num_threads:
        torch.set_num_threads(int(num_threads))
    with tempfile.TemporaryDirectory(prefix="vfscreen_untrained_") as scratch:
        work = Path(work_folder) if work_folder is not None else Path(scratch)
        planned = plan_untrained(work / "planning", plans_preset, phantom_preset, num_planning_cases, seed)
        phantom = None
        if input_path is None:
            phantom = write_phantom_case(work / "case", phantom_preset, slice_thickness_mm, fov_kind, seed)
            input_path, labels = Path(phantom["image"]).parent, Path(phantom["labels"]).parent
        cases = list_cases(input_path)[: num_cases or None]
        label_paths = label_paths_for(cases, labels)
        segmentation_folder, grader_folder = write_untrained_models(work / "results", planned, folds, seed)
        segmentation = segmentation_settings(planned["plans"], CONFIGURATION)
        loaded = {}

        def load():
            torch_device = resolve_device(device)
            segmenter = NnunetSegmenter(segmentation_folder, folds, torch_device, "final",
                                        orientation=segmentation.orientation,
                                        tile_step_size=tile_step_size, use_mirroring=use_mirroring)
            grader = FoldEnsembleGrader(grader_folder, folds, torch_device, "final", CONFIGURATION)
            loaded["segmenter"] = GroundTruthDownstream(segmenter, label_paths)
            return Models(segmenter=loaded["segmenter"], grader=grader,
                          info={"weights": WEIGHTS_NOTE, "plans_preset": plans_preset, "folds": folds})

        speed = run_speed(input_path, folds=folds, device=device, num_cases=num_cases, progress=progress,
                          model_loader=load, prepare_case=lambda case, image: loaded["segmenter"].prepare(case, image))
    speed["weights"] = WEIGHTS_NOTE
    speed["downstream_on"] = DOWNSTREAM_NOTE
    speed["untrained"] = describe_untrained(planned, plans_preset, phantom, folds, seed, tile_step_size,
                                            use_mirroring, num_planning_cases, phantom_preset)
    return speed


def describe_untrained(planned: dict, plans_preset, phantom, folds, seed, tile_step_size, use_mirroring,
                       num_planning_cases, phantom_preset) -> dict:
    """What was timed, for the JSON: the plan's two networks, the case and how the models were made."""
    configuration = configuration_section(planned["plans"], CONFIGURATION)
    segmentation, grader = configuration["segmentation"], configuration["grader"]
    return {
        "plans_preset": plans_preset or "none (planner defaults for this machine's device)",
        "planned_for_device": planned["plans"]["device"],
        "planning": {"dataset": f"{num_planning_cases} generated '{phantom_preset}' phantoms",
                     "command": planned["command"]},
        "segmentation": {key: segmentation[key] for key in ("nnunet_configuration", "trainer", "target_spacing_mm",
                                                            "patch_size", "features_per_stage")}
        | {"outputs": NUM_CLASSES, "tile_step_size": tile_step_size, "mirroring": use_mirroring},
        "grader": {"network": grader["network"].get("name", grader["network"]["block"]),
                   "features_per_stage": grader["network"]["features_per_stage"],
                   "patch_size": grader["crop"]["patch_size"], "crop_spacing_mm": grader["crop"]["spacing_mm"],
                   "forward_gflops_per_crop": round(grader_cost(grader).forward_flops / 1e9, 2)},
        "folds": folds, "seed": seed, "case": phantom or "user input (-i) with --labels",
        "how": "segmentation ensemble timed on the image (its random-weight output discarded); label consistency, "
               "crops, grading, morphometry and report run on the ground-truth mask (one-hot probabilities, "
               f"{NUM_CLASSES} x voxels float16, held during segmentation: counted in peak memory)"}
