"""Segmentation + labelling with nnunetv2's ``nnUNetPredictor`` (fold ensemble), and loading all trained models.

nnunetv2 looks trainer classes up by name inside its own package and loads checkpoints with ``weights_only=False``;
vfscreen therefore builds the network itself (the trainer class's ``build_network_architecture``, class found by
vfscreen.training.segmentation.trainer_class: vfscreen's ``vfscreenSegTrainer`` or any nnU-Net trainer) from checkpoints read with ``torch.load(weights_only=True)`` and hands
everything to ``nnUNetPredictor.manual_initialization``. Prediction itself (preprocessing, sliding window, Gaussian
weighting, mirroring, fold averaging, resampling back to the input grid) is nnU-Net's.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from vfscreen.errors import ConfigError
from vfscreen.inference.predict import Models

NNUNET_CHECKPOINTS = {"final": "checkpoint_final.pth", "best": "checkpoint_best.pth", "latest": "checkpoint_latest.pth"}


def nnunet_checkpoint_safe_globals() -> list:
    """What nnU-Net checkpoints hold besides tensors and plain containers: numpy scalars/arrays in the training log."""
    safe = [np.dtype, np.ndarray, type(np.dtype(np.float64)), type(np.dtype(np.float32)), type(np.dtype(np.int64))]
    multiarray = getattr(getattr(np, "_core", np.core), "multiarray")
    return safe + [multiarray.scalar, multiarray._reconstruct]


def load_nnunet_checkpoint(path: Path) -> dict:
    """nnU-Net checkpoint with ``weights_only=True`` (numpy scalars in its training log are allowed explicitly)."""
    import torch

    if not Path(path).is_file():
        raise ConfigError(f"segmentation checkpoint {path} not found (train this fold or choose folds with -f)")
    try:
        with torch.serialization.safe_globals(nnunet_checkpoint_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means the file is unusable
        raise ConfigError(f"segmentation checkpoint {path} cannot be loaded safely "
                          f"({type(error).__name__}: {str(error).splitlines()[0][:200]})") from None


def available_folds(model_folder: Path, checkpoint_file: str) -> list[int]:
    folds = []
    for folder in Path(model_folder).glob("fold_*"):
        suffix = folder.name[len("fold_"):]
        if suffix.isdigit() and (folder / checkpoint_file).is_file():
            folds.append(int(suffix))
    return sorted(folds)


class NnunetSegmenter:
    """Callable: sitk.Image -> (class map (Z, Y, X) uint8 on the image grid, probabilities (C, Z, Y, X) float16).

    ``label_grouping`` says what they hold: 'vertebrae' = class ids 1..26 and the softmax incl. background;
    'spine_regions' = group ids and the sigmoids of the regions vertebra/thoracic/lumbar (vfscreen.labels).
    """

    def __init__(self, model_folder: Path, folds, device, checkpoint: str = "final", orientation: str | None = None,
                 tile_step_size: float = 0.5, use_mirroring: bool = True):
        import torch
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
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
        from vfscreen.training.segmentation import trainer_class as find_trainer_class
        trainer_class = find_trainer_class(first["trainer_name"])
        network = trainer_class.build_network_architecture(
            plans_manager, configuration_manager,
            determine_num_input_channels(plans_manager, configuration_manager, dataset_json),
            plans_manager.get_label_manager(dataset_json).num_segmentation_heads, enable_deep_supervision=False)
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

    def __call__(self, image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
        original_orientation = None
        if self.orientation:
            from vfscreen.utils.image_io import orientation_code
            original_orientation = orientation_code(image)
            image = sitk.DICOMOrient(image, self.orientation)
        data = sitk.GetArrayFromImage(image).astype(np.float32)[None]  # (1, Z, Y, X)
        properties = {"spacing": list(image.GetSpacing())[::-1]}  # nnU-Net's SimpleITK reader convention
        class_map, probabilities = self.predictor.predict_single_npy_array(data, properties, None, None, True)
        class_map = class_map.astype(np.uint8)
        probabilities = probabilities.astype(np.float16)  # (C, Z, Y, X)
        if original_orientation is not None and original_orientation != self.orientation:
            # DICOMOrient only permutes and flips axes: reorient an array of flat voxel indices once, then gather
            flat_index = sitk.GetImageFromArray(np.arange(class_map.size, dtype=np.int64).reshape(class_map.shape))
            flat_index.CopyInformation(image)
            back = sitk.GetArrayFromImage(sitk.DICOMOrient(flat_index, original_orientation))  # original grid
            class_map = class_map.reshape(-1)[back]
            probabilities = probabilities.reshape(probabilities.shape[0], -1)[:, back]
        return class_map, probabilities


def _losses_by_preference(dataset_name: str, configuration: str) -> list[str]:
    """Grader losses to look for, the one the plans chose first (both exist after vfscreen_benchmark ablation)."""
    from vfscreen.experiment_planning.plans import grader_loss, load_plans
    from vfscreen.training.grader.trainer import TRAINER_NAMES

    try:
        chosen = grader_loss(load_plans(dataset_name), configuration)
    except (ConfigError, KeyError):  # no (valid) plans here: a model folder is self-contained, take what exists
        chosen = "supcon"
    return sorted(TRAINER_NAMES, key=lambda loss: loss != chosen)


def find_grader_folder(dataset_name: str, configuration: str) -> Path | None:
    """The trained grader folder of a dataset (the plans' loss first), None when there is none."""
    from vfscreen.training.grader.trainer import grader_model_folder

    return next((folder for folder in (grader_model_folder(dataset_name, "vfscreenPlans", configuration, loss)
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
    from vfscreen.dataset import resolve_dataset_name
    from vfscreen.inference.grading import FoldEnsembleGrader
    from vfscreen.inference.screening import load_screening_model
    from vfscreen.paths import nnUNet_results
    from vfscreen.training.grader.trainer import resolve_device

    dataset_name = resolve_dataset_name(dataset)
    torch_device = resolve_device(device)
    grader_folder = find_grader_folder(dataset_name, configuration)
    if grader_folder is None:
        raise ConfigError(f"no trained grader for {dataset_name} configuration {configuration} in {nnUNet_results}; "
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
    segmentation_plan = grader.plans["configurations"][configuration]["segmentation"]
    segmenter, segmentation_info = (_own_segmenter(dataset_name, configuration, segmentation_plan, folds, torch_device,
                                                   checkpoint, use_mirroring) if segmentation else (None, None))
    saliency_function = None
    if saliency:
        from vfscreen.inference.saliency import grad_cam_image
        saliency_function = grad_cam_image
    fusion = load_screening_model(grader_folder)
    info = {"dataset": dataset_name, "configuration": configuration, "plans_name": grader.plans.get("plans_name"),
            "segmentation": segmentation_info,
            "grader": {"folder": str(grader_folder), "folds": folds, "checkpoint": f"checkpoint_{checkpoint}.pth"}}
    return Models(segmenter=segmenter, grader=grader, info=info, saliency=saliency_function, fusion=fusion)


def _own_segmenter(dataset_name: str, configuration: str, segmentation_plan: dict, folds, torch_device,
                   checkpoint: str, use_mirroring: bool | None) -> tuple[NnunetSegmenter, dict]:
    """The dataset's own trained nnU-Net segmentation (folds ``folds`` where trained, else all) + its JSON info."""
    from vfscreen.training.segmentation import segmentation_model_folder

    segmentation_folder = segmentation_model_folder(dataset_name, segmentation_plan)
    segmentation_existing = available_folds(segmentation_folder, NNUNET_CHECKPOINTS[checkpoint])
    segmentation_folds = [f for f in (folds or []) if f in segmentation_existing] or segmentation_existing
    if not segmentation_folds:
        raise ConfigError(f"{segmentation_folder}: no trained segmentation fold ({NNUNET_CHECKPOINTS[checkpoint]}); "
                          f"train it with vfscreen_train {dataset_name} {configuration} 0")
    if use_mirroring is None:
        use_mirroring = bool(segmentation_plan.get("test_time_mirroring", True))
    segmenter = NnunetSegmenter(segmentation_folder, segmentation_folds, torch_device, checkpoint,
                                orientation=segmentation_plan.get("orientation"), use_mirroring=use_mirroring)
    return segmenter, {"folder": str(segmentation_folder), "trainer": segmenter.trainer_name,
                       "test_time_mirroring": use_mirroring, "folds": segmentation_folds,
                       "checkpoint": NNUNET_CHECKPOINTS[checkpoint]}


def _load_segmentation_only(dataset, configuration, folds, device, checkpoint, use_mirroring,
                            segmentation: bool) -> Models:
    """No grader: the dataset's own segmentation (plan from its plans) or nothing."""
    from vfscreen.dataset import resolve_dataset_name
    from vfscreen.experiment_planning.plans import load_plans
    from vfscreen.training.grader.trainer import resolve_device

    dataset_name = resolve_dataset_name(dataset)
    segmenter, segmentation_info = None, None
    if segmentation:
        plans = load_plans(dataset_name)
        segmentation_plan = plans.get("configurations", {}).get(configuration, {}).get("segmentation")
        if segmentation_plan is None:
            raise ConfigError(f"the plans of {dataset_name} have no segmentation stage for {configuration!r}")
        segmenter, segmentation_info = _own_segmenter(dataset_name, configuration, segmentation_plan, folds,
                                                      resolve_device(device), checkpoint, use_mirroring)
    return Models(segmenter=segmenter, grader=None, info={"dataset": dataset_name, "configuration": configuration,
                                                           "segmentation": segmentation_info, "grader": None})
