"""The segmentation stage: nnU-Net training of the plan's configuration, through nnunetv2's own training API.

``vfscreenSegTrainer`` is nnU-Net's ``nnUNetTrainer`` with the schedule of the budget-fitted configuration: it reads
``iterations_per_epoch``, ``val_iterations_per_epoch``, ``num_epochs`` and ``label_grouping`` (one class per vertebra,
or the coarse ``spine_regions`` of vfscreen.labels for tiny budgets) from the ``vfscreen`` entry that the planner
writes into the configuration (``3d_vfscreen``) of ``nnUNetPlans.json``; network, patch, batch size, spacing and
everything else are nnU-Net's, read from the same configuration. On a large GPU the plans name the stock
``nnUNetTrainer`` + ``3d_fullres`` instead.

nnunetv2 looks trainer classes up by name inside its own package; vfscreen does not install anything there. Training
therefore instantiates the class itself and then runs nnunetv2's own steps (``maybe_load_checkpoint``,
``run_training``, ``perform_actual_validation``). The architecture is nnU-Net's (``build_network_architecture`` is
inherited unchanged), so prediction rebuilds the network without this module (vfscreen.core.nnunet_models).
"""
from __future__ import annotations

import contextlib
import json
import os
import pickle
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from vfscreen import paths
from vfscreen.core import region_confusion, vertebra_sizes
from vfscreen.core.devices import resolve_device
from vfscreen.core.nnunet_models import (SCHEDULE_KEY, VFSCREEN_SEG_TRAINER, dataset_json_for_grouping,
                                         label_grouping, nnunet_checkpoint_safe_globals, nnunet_trainer_class)
from vfscreen.core.plans import segmentation_settings
from vfscreen.errors import ConfigError
from vfscreen.labels import NUM_VERTEBRA_CLASSES, VERTEBRA_GROUP_IDS

paths.export_for_nnunet()  # nnunetv2 reads its folders once, at import
from nnunetv2.run.run_training import maybe_load_checkpoint  # noqa: E402  (after export_for_nnunet)
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer  # noqa: E402


class vfscreenSegTrainer(nnUNetTrainer):  # noqa: N801  (nnU-Net's trainer naming convention)
    """nnUNetTrainer whose epoch length and number of epochs come from the configuration in nnUNetPlans.json."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        if torch.device(device).type == "cpu" and "nnUNet_n_proc_DA" not in os.environ:
            # nnU-Net would start one augmentation worker per core; on a CPU the network needs those cores. One
            # worker keeps up with the small budget-fitted patches.
            os.environ["nnUNet_n_proc_DA"] = "1"
        grouping = label_grouping(plans.get("configurations", {}).get(configuration, {}))
        super().__init__(plans, configuration, fold, dataset_json_for_grouping(dataset_json, grouping), device)
        schedule = self.configuration_manager.configuration.get(SCHEDULE_KEY, {})
        self.num_iterations_per_epoch = int(schedule.get("iterations_per_epoch", self.num_iterations_per_epoch))
        self.num_val_iterations_per_epoch = int(schedule.get("val_iterations_per_epoch",
                                                             self.num_val_iterations_per_epoch))
        self.num_epochs = int(schedule.get("num_epochs", self.num_epochs))
        if min(self.num_iterations_per_epoch, self.num_val_iterations_per_epoch, self.num_epochs) < 1:
            raise ConfigError(f"configuration {configuration!r} of nnUNetPlans.json: field '{SCHEDULE_KEY}' needs "
                              "iterations_per_epoch, val_iterations_per_epoch and num_epochs >= 1")


def trainer_class(trainer_name: str):
    """The trainer class the plans name: vfscreen's schedule trainer or any nnU-Net trainer."""
    return vfscreenSegTrainer if trainer_name == VFSCREEN_SEG_TRAINER else nnunet_trainer_class(trainer_name)


def build_trainer(dataset_name: str, segmentation_plan: dict, fold, device,
                  continue_training: bool = False) -> nnUNetTrainer:
    """The nnU-Net trainer object for one fold (nothing trained yet)."""
    preprocessed = paths.nnUNet_preprocessed / dataset_name
    nnunet_plans_file = preprocessed / f"{segmentation_plan['nnunet_plans_identifier']}.json"
    for required, what in ((nnunet_plans_file, "nnU-Net plans"), (preprocessed / "dataset.json", "dataset.json"),
                           (preprocessed / "splits_final.json", "splits")):
        if not required.is_file():
            raise ConfigError(f"{required}: {what} missing; run vfscreen_plan_and_preprocess -d {dataset_name} first")
    nnunet_plans = json.loads(nnunet_plans_file.read_text())
    nnunet_plans["continue_training"] = bool(continue_training)  # nnunetv2 >= 2.6 reads (and pops) this flag
    configuration = segmentation_plan["nnunet_configuration"]
    if configuration not in nnunet_plans["configurations"]:
        raise ConfigError(f"{nnunet_plans_file}: configuration {configuration!r} missing; re-run "
                          "vfscreen_plan_and_preprocess --overwrite_plans")
    dataset_json = json.loads((preprocessed / "dataset.json").read_text())
    fold = fold if fold == "all" else int(fold)
    return trainer_class(segmentation_plan["trainer"])(plans=nnunet_plans, configuration=configuration, fold=fold,
                                                       dataset_json=dataset_json, device=resolve_device(device))


def train_segmentation(dataset_name: str, vfscreen_plans: dict, configuration: str = "3d", fold=0,
                       device="cpu", continue_training: bool = False, pretrained_weights: str | None = None,
                       export_validation_probabilities: bool = False) -> Path:
    """Train (or continue) the segmentation network of one fold with nnunetv2; returns the fold's output folder.

    ``vfscreen_plans``: the validated vfscreenPlans.json. ``fold``: int or 'all'.
    The fold's patients are those of ``splits_final.json`` written by the planner. nnU-Net writes its usual files
    (checkpoints, progress.png, training log, validation/) into the model folder.
    """
    settings = segmentation_settings(vfscreen_plans, configuration)
    segmentation_plan = settings.section
    if continue_training and pretrained_weights:
        raise ConfigError("choose either --c (continue) or pretrained weights, not both")
    if pretrained_weights and not Path(pretrained_weights).is_file():
        raise ConfigError(f"{pretrained_weights}: pretrained segmentation weights not found")
    trainer = build_trainer(dataset_name, segmentation_plan, fold, device, continue_training)
    try:
        with weights_only_loading():
            maybe_load_checkpoint(trainer, continue_training, False, pretrained_weights)
    except (RuntimeError, KeyError, pickle.UnpicklingError) as error:
        raise ConfigError(f"cannot continue/initialise segmentation training in {trainer.output_folder}: "
                          f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300]}") from None
    trainer.run_training()
    with validation_mirroring(trainer, settings.test_time_mirroring):
        trainer.perform_actual_validation(export_validation_probabilities)
    grouping = label_grouping(trainer.configuration_manager.configuration)
    if grouping == "spine_regions":
        record_region_confusion(Path(trainer.output_folder), Path(trainer.preprocessed_dataset_folder_base))
    record_vertebra_sizes(Path(trainer.output_folder), Path(trainer.preprocessed_dataset_folder_base), grouping)
    return Path(trainer.output_folder)


def record_region_confusion(fold_folder: Path, preprocessed_folder: Path) -> Path | None:
    """How the region network's validation predictions call each reference vertebra's region
    (vfscreen.core.region_confusion), written into the fold folder for prediction; None without validation cases."""
    counts, cases = np.zeros((3, 3), dtype=int), []
    for prediction in sorted((fold_folder / "validation").glob("*.nii.gz")):
        reference = preprocessed_folder / "gt_segmentations" / prediction.name
        if not reference.is_file():
            continue
        predicted = sitk.GetArrayFromImage(sitk.ReadImage(str(prediction)))
        truth = sitk.GetArrayFromImage(sitk.ReadImage(str(reference)))
        if predicted.shape != truth.shape:
            continue
        counts += region_confusion.confusion_counts(predicted, truth)
        cases.append(prediction.name[: -len(".nii.gz")])
    return region_confusion.write_confusion(fold_folder, counts, cases) if cases else None


def record_vertebra_sizes(fold_folder: Path, preprocessed_folder: Path, grouping: str) -> Path | None:
    """The vertebra size model (vfscreen.core.vertebra_sizes): reference sizes from the fold's training cases'
    label maps, the network's view of them from its validation predictions; written into the fold folder for
    prediction. None (nothing written) with too few validation vertebrae."""
    validation = {path.name: path for path in sorted((fold_folder / "validation").glob("*.nii.gz"))}
    reference_volumes, pairs, cases = [], [], []
    for reference_path in sorted((preprocessed_folder / "gt_segmentations").glob("*.nii.gz")):
        reference = sitk.ReadImage(str(reference_path))
        truth = sitk.GetArrayFromImage(reference)
        voxel_mm3 = float(np.prod(reference.GetSpacing()))
        volumes = vertebra_sizes.vertebra_volumes(truth, voxel_mm3, vertebra_sizes.cranio_caudal_axis(reference))
        if reference_path.name not in validation:
            reference_volumes.append(volumes)
            continue
        predicted = sitk.GetArrayFromImage(sitk.ReadImage(str(validation[reference_path.name])))
        if predicted.shape != truth.shape:
            continue
        vertebra_ids = VERTEBRA_GROUP_IDS if grouping == "spine_regions" else range(1, NUM_VERTEBRA_CLASSES + 1)
        observed = vertebra_sizes.observed_volumes(np.isin(predicted, vertebra_ids), truth,
                                                   reference.GetSpacing()[::-1], voxel_mm3, volumes)
        pairs += [(volumes[class_id], observed[class_id]) for class_id in volumes if class_id in observed]
        cases.append(reference_path.name[: -len(".nii.gz")])
    if not reference_volumes:
        return None
    model = vertebra_sizes.fit_size_model(reference_volumes, pairs)
    return vertebra_sizes.write_size_model(fold_folder, model, cases) if model is not None else None


@contextlib.contextmanager
def validation_mirroring(trainer: nnUNetTrainer, mirroring: bool):
    """nnU-Net's final validation predicts every validation case with test-time mirroring (8 passes per window in
    3D). Where the plans predict without it (``test_time_mirroring`` false: CPU plans), validate the same way:
    validation then shows what prediction will do (the region confusion is measured on it) at an eighth of the cost,
    which the planner's epoch budget does not count. The checkpoints keep nnU-Net's mirroring axes, so a GPU can
    still predict with mirroring."""
    saved = trainer.inference_allowed_mirroring_axes
    if not mirroring:
        trainer.inference_allowed_mirroring_axes = None  # nnUNetPredictor: no axes = no mirroring
    try:
        yield
    finally:
        trainer.inference_allowed_mirroring_axes = saved


@contextlib.contextmanager
def weights_only_loading():
    """nnunetv2 reads checkpoints (``--c``) and pretrained weights with ``torch.load(weights_only=False)``, which runs
    any code pickled into the file. Inside this block torch's safe loader is forced (TORCH_FORCE_WEIGHTS_ONLY_LOAD),
    allowing only the numpy types of nnU-Net's training log besides tensors."""
    saved = {name: os.environ.pop(name, None) for name in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD",
                                                            "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with torch.serialization.safe_globals(nnunet_checkpoint_safe_globals()):
            yield
    finally:
        os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        os.environ.update({name: value for name, value in saved.items() if value is not None})
