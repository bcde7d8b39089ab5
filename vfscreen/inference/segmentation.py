"""Segmentation + labelling with nnunetv2's ``nnUNetPredictor`` (fold ensemble), and loading all trained models.

The network is rebuilt from the model folder (vfscreen.core.nnunet_models: checkpoints read with
``torch.load(weights_only=True)``) and handed to ``nnUNetPredictor.manual_initialization``. Prediction itself
(preprocessing, sliding window, Gaussian weighting, mirroring, fold averaging, resampling back to the input grid) is
nnU-Net's.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk
import torch

from vfscreen import paths
from vfscreen.core import region_confusion, vertebra_sizes
from vfscreen.core.devices import resolve_device
from vfscreen.core.fusion_model import load_screening_model
from vfscreen.core.model_folders import (GRADER_TRAINER_NAMES, NNUNET_CHECKPOINTS, available_folds,
                                         grader_model_folder, segmentation_model_folder)
from vfscreen.core.nnunet_models import build_segmentation_network, load_nnunet_checkpoint
from vfscreen.core.plans import grader_loss, load_plans, plans_file, segmentation_settings
from vfscreen.dataset import resolve_dataset_name
from vfscreen.errors import ConfigError
from vfscreen.inference.grading import FoldEnsembleGrader, Grader
from vfscreen.inference.label_consistency import DEFAULT_MIN_VOLUME_MM3
from vfscreen.inference.nnunet_region import predict_spine_region
from vfscreen.inference.saliency import grad_cam_image
from vfscreen.inference.spine_labels import SpineLabels
from vfscreen.labels import LANDMARK_CLASSES

paths.export_for_nnunet()  # nnunetv2 (imported on use, below) reads its folders once, at import

# segmenter(image) -> (class map (Z, Y, X) nnU-Net class ids on the image's grid, softmax (C, Z, Y, X) or None)
Segmenter = Callable[[sitk.Image], tuple[np.ndarray, np.ndarray | None]]


@dataclass
class Models:
    segmenter: Segmenter | None  # vfscreen's own network (class ids + chain model); None: masks / named_segmenter
    grader: Grader | None  # None: no learned grade (--no_grader or none trained); morphometry still runs
    info: dict = field(default_factory=dict)  # goes to the JSON's "model"
    saliency: Callable | None = None  # (image, crops, grader) -> sitk.Image Grad-CAM in the image's geometry
    fusion: dict | None = None  # fusion.json of the grader (vfscreen.inference.screening); None: argmax decides
    # another nnU-Net model whose dataset.json names its labels (vfscreen.inference.seg_model): image -> SpineLabels
    named_segmenter: Callable[[sitk.Image], SpineLabels] | None = None


class NnunetSegmenter:
    """Callable: sitk.Image -> SpineSegmentation (class map uint8 and probabilities (C, ...) float16 of the spine's
    region of the image grid).

    ``label_grouping`` says what they hold: 'vertebrae' = class ids 1..26 and the softmax incl. background;
    'spine_regions' = group ids and the sigmoids of the regions vertebra/thoracic/lumbar/rib/sacrum (vfscreen.labels).
    """

    def __init__(self, model_folder: Path, folds, device, checkpoint: str = "final", orientation: str | None = None,
                 tile_step_size: float = 0.5, use_mirroring: bool = True):
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        self.model_folder = Path(model_folder)
        self.orientation = orientation
        for name in ("dataset.json", "plans.json"):
            if not (self.model_folder / name).is_file():
                raise ConfigError(f"{self.model_folder} is not a trained nnU-Net model folder ({name} missing)")
        dataset_json = json.loads((self.model_folder / "dataset.json").read_text())
        plans_manager = PlansManager(json.loads((self.model_folder / "plans.json").read_text()))
        checkpoints = [load_nnunet_checkpoint(self.model_folder / f"fold_{fold}" / NNUNET_CHECKPOINTS[checkpoint])
                       for fold in folds]
        first = checkpoints[0]
        configuration_manager = plans_manager.get_configuration(first["init_args"]["configuration"])
        network = build_segmentation_network(first["trainer_name"], plans_manager, configuration_manager,
                                             dataset_json)
        network.load_state_dict(first["network_weights"])
        device = torch.device(device) if isinstance(device, str) else device
        self.predictor = nnUNetPredictor(tile_step_size=tile_step_size, use_gaussian=True,
                                         use_mirroring=use_mirroring, perform_everything_on_device=device.type == "cuda",
                                         device=device, verbose=False, allow_tqdm=False)
        self.predictor.manual_initialization(network, plans_manager, configuration_manager,
                                             [c["network_weights"] for c in checkpoints], dataset_json,
                                             first["trainer_name"], first.get("inference_allowed_mirroring_axes"))
        self.predictor.network.to(device)
        self.trainer_name = first["trainer_name"]
        # a network trained on coarse regions (vfscreen.labels.SPINE_REGIONS) outputs group ids + region sigmoids
        self.label_grouping = dataset_json.get("vfscreen_label_grouping", "vertebrae")
        # ... and, when trained on label maps with ribs and sacrum, those landmarks (vfscreen.labels.LANDMARK_CLASSES)
        self.has_landmarks = all(name in dataset_json.get("labels", {}) for name in LANDMARK_CLASSES)
        # ... and how far its region calls can be trusted, measured on its folds' validation cases (None: unknown)
        self.region_confusion = region_confusion.read_confusion(self.model_folder, folds) \
            if self.label_grouping == "spine_regions" else None
        # ... and how large its components of each vertebra are (vfscreen.core.vertebra_sizes; None: unknown)
        self.size_model = vertebra_sizes.read_size_model(self.model_folder, folds)

    def __call__(self, image: sitk.Image, check_region=None, with_probabilities: bool = True):
        """The image's :class:`vfscreen.inference.spine_region.SpineSegmentation` (only the spine's region is brought
        back to the input grid; see vfscreen.inference.nnunet_region). check_region(num_voxels, num_channels) may
        refuse the region before it is allocated (memory budget); ``with_probabilities`` False: class map only."""
        network_voxel_mm3 = float(np.prod(self.predictor.configuration_manager.spacing))
        # a network component of less than half the fragment volume cannot hold a kept component
        min_voxels = max(1, int(DEFAULT_MIN_VOLUME_MM3 / 2 / network_voxel_mm3))
        return predict_spine_region(self.predictor, image, self.orientation, min_component_voxels=min_voxels,
                                    check_region=check_region, with_probabilities=with_probabilities)


def _losses_by_preference(dataset_name: str, configuration: str) -> list[str]:
    """Grader losses to look for, the one the plans chose first (both exist after vfscreen_benchmark ablation)."""
    try:
        chosen = grader_loss(load_plans(dataset_name), configuration)
    except ConfigError:  # no (valid) plans here: a model folder is self-contained, take what exists
        chosen = "supcon"
    return sorted(GRADER_TRAINER_NAMES, key=lambda loss: loss != chosen)


def find_grader_folder(dataset_name: str, configuration: str) -> Path | None:
    """The trained grader folder of a dataset (the plans' loss first), None when there is none."""
    return next((folder for folder in (grader_model_folder(dataset_name, configuration, loss)
                                       for loss in _losses_by_preference(dataset_name, configuration))
                 if folder.is_dir()), None)


def load_models(dataset, configuration: str = "3d", folds=None, device: str = "cpu", checkpoint: str = "final",
                saliency: bool = False, use_mirroring: bool | None = None, grader: bool = True,
                segmentation: bool = True) -> Models:
    """Trained segmentation + grader models of ``dataset`` (fold ensembles); ConfigError naming what is missing.
    ``use_mirroring``: nnU-Net's test-time mirroring; None = the plans' ``segmentation.test_time_mirroring`` (CPU plans:
    off; plans without the field: on, nnU-Net's default). ``grader`` / ``segmentation`` False: that stage is not
    loaded (``Models.grader`` / ``Models.segmenter`` None; the segmentation plan then comes from the dataset's plans).
    """
    if not grader:
        return _load_segmentation_only(dataset, configuration, folds, device, checkpoint, use_mirroring, segmentation)
    dataset_name = resolve_dataset_name(dataset)
    torch_device = resolve_device(device)
    grader_folder = find_grader_folder(dataset_name, configuration)
    if grader_folder is None:
        raise ConfigError(f"no trained grader for {dataset_name} configuration {configuration} "
                          f"in {paths.nnUNet_results}; "
                          f"train it with vfscreen_train {dataset_name} {configuration} 0")
    existing = available_folds(grader_folder, f"checkpoint_{checkpoint}.pth")
    folds = existing if folds is None else [int(f) for f in folds]
    missing = [f for f in folds if f not in existing]
    if not folds or missing:
        raise ConfigError(f"{grader_folder}: grader fold(s) {missing or 'any'} not trained (checkpoint_{checkpoint}.pth "
                          f"missing; trained folds: {existing})")
    grader = FoldEnsembleGrader(grader_folder, folds, torch_device, checkpoint, configuration)
    if grader.plans.get("dataset_name") != dataset_name:
        raise ConfigError(f"{grader_folder}: its plans belong to {grader.plans.get('dataset_name')!r}, not "
                          f"{dataset_name!r}")
    segmenter, segmentation_info = (_own_segmenter(dataset_name, configuration,
                                                   segmentation_plans_of_record(dataset_name, grader.plans),
                                                   folds, torch_device, checkpoint, use_mirroring)
                                    if segmentation else (None, None))
    saliency_function = grad_cam_image if saliency else None
    fusion = load_screening_model(grader_folder)
    info = {"dataset": dataset_name, "configuration": configuration, "plans_name": grader.plans.get("plans_name"),
            "segmentation": segmentation_info,
            "grader": {"folder": str(grader_folder), "folds": folds, "checkpoint": f"checkpoint_{checkpoint}.pth"}}
    return Models(segmenter=segmenter, grader=grader, info=info, saliency=saliency_function, fusion=fusion)


def segmentation_plans_of_record(dataset_name: str, grader_plans: dict) -> dict:
    """The plans the segmentation settings come from: the dataset's vfscreenPlans.json (the file of record, which a
    user may edit by hand), else - for a model folder copied without its preprocessed folder - the grader's copy."""
    return load_plans(dataset_name) if plans_file(dataset_name).is_file() else grader_plans


def _own_segmenter(dataset_name: str, configuration: str, plans: dict, folds, torch_device,
                   checkpoint: str, use_mirroring: bool | None) -> tuple[NnunetSegmenter, dict]:
    """The dataset's own trained nnU-Net segmentation (folds ``folds`` where trained, else all) + its JSON info."""
    settings = segmentation_settings(plans, configuration)
    segmentation_folder = segmentation_model_folder(dataset_name, settings.section)
    segmentation_existing = available_folds(segmentation_folder, NNUNET_CHECKPOINTS[checkpoint])
    segmentation_folds = [f for f in (folds or []) if f in segmentation_existing] or segmentation_existing
    if not segmentation_folds:
        raise ConfigError(f"{segmentation_folder}: no trained segmentation fold ({NNUNET_CHECKPOINTS[checkpoint]}); "
                          f"train it with vfscreen_train {dataset_name} {configuration} 0")
    if use_mirroring is None:
        use_mirroring = settings.test_time_mirroring
    segmenter = NnunetSegmenter(segmentation_folder, segmentation_folds, torch_device, checkpoint,
                                orientation=settings.orientation, use_mirroring=use_mirroring)
    return segmenter, {"folder": str(segmentation_folder), "trainer": segmenter.trainer_name,
                       "test_time_mirroring": use_mirroring, "folds": segmentation_folds,
                       "checkpoint": NNUNET_CHECKPOINTS[checkpoint]}


def _load_segmentation_only(dataset, configuration, folds, device, checkpoint, use_mirroring,
                            segmentation: bool) -> Models:
    """No grader: the dataset's own segmentation (plan from its plans) or nothing."""
    dataset_name = resolve_dataset_name(dataset)
    segmenter, segmentation_info = None, None
    if segmentation:
        segmenter, segmentation_info = _own_segmenter(dataset_name, configuration, load_plans(dataset_name), folds,
                                                      resolve_device(device), checkpoint, use_mirroring)
    return Models(segmenter=segmenter, grader=None, info={"dataset": dataset_name, "configuration": configuration,
                                                           "segmentation": segmentation_info, "grader": None})
