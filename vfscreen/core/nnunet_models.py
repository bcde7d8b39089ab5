"""nnU-Net model files as prediction reads them: checkpoints loaded with ``torch.load(weights_only=True)``, the network
rebuilt from the model folder's plans, and the dataset.json of a label grouping.

nnunetv2 looks trainer classes up by name inside its own package and loads checkpoints with ``weights_only=False``;
vfscreen therefore builds the network itself (the trainer class's ``build_network_architecture``) and hands it to
``nnUNetPredictor.manual_initialization``. vfscreen's own ``vfscreenSegTrainer`` (vfscreen.training.segmentation)
changes only the training schedule, not the architecture, so its networks are built by nnU-Net's ``nnUNetTrainer``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vfscreen import paths
from vfscreen.errors import ConfigError
from vfscreen.labels import grouped_labels_dict

paths.export_for_nnunet()  # nnunetv2 (imported on use, below) reads its folders once, at import

VFSCREEN_SEG_TRAINER = "vfscreenSegTrainer"
SCHEDULE_KEY = "vfscreen"  # the planner's entry inside an nnU-Net configuration


def label_grouping(nnunet_configuration: dict) -> str:
    """The label grouping an nnU-Net configuration trains ('vertebrae' unless the planner chose coarse regions)."""
    return nnunet_configuration.get(SCHEDULE_KEY, {}).get("label_grouping", "vertebrae")


def dataset_json_for_grouping(dataset_json: dict, grouping: str) -> dict:
    """The dataset.json nnU-Net trains with: one class per vertebra, or coarse regions (vfscreen.labels.SPINE_REGIONS).

    nnU-Net converts the stored class ids into the regions on the fly and copies this dataset.json into the model
    folder, so prediction knows the model's outputs are regions (sigmoid) rather than classes (softmax).
    """
    try:
        labels, regions_class_order = grouped_labels_dict(grouping)
    except ValueError as error:
        raise ConfigError(f"nnUNetPlans.json: {error}") from None
    if regions_class_order is None:
        return dataset_json
    return {**dataset_json, "labels": labels, "regions_class_order": regions_class_order,
            "vfscreen_label_grouping": grouping}


def nnunet_checkpoint_safe_globals() -> list:
    """What nnU-Net checkpoints hold besides tensors and plain containers: numpy scalars/arrays in the training log."""
    safe = [np.dtype, np.ndarray, type(np.dtype(np.float64)), type(np.dtype(np.float32)), type(np.dtype(np.int64))]
    multiarray = getattr(getattr(np, "_core", np.core), "multiarray")
    return safe + [multiarray.scalar, multiarray._reconstruct]


def load_nnunet_checkpoint(path: Path) -> dict:
    """nnU-Net checkpoint with ``weights_only=True`` (numpy scalars in its training log are allowed explicitly)."""
    if not Path(path).is_file():
        raise ConfigError(f"segmentation checkpoint {path} not found (train this fold or choose folds with -f)")
    try:
        with torch.serialization.safe_globals(nnunet_checkpoint_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means the file is unusable
        raise ConfigError(f"segmentation checkpoint {path} cannot be loaded safely "
                          f"({type(error).__name__}: {str(error).splitlines()[0][:200]})") from None


def nnunet_trainer_class(trainer_name: str):
    """An nnU-Net trainer class by name (nnunetv2's own look-up); ConfigError for an unknown name."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    try:
        return recursive_find_trainer_class_by_name(trainer_name)
    except RuntimeError:
        raise ConfigError(f"segmentation trainer {trainer_name!r} is neither vfscreen's nor nnU-Net's") from None


def build_segmentation_network(trainer_name: str, plans_manager, configuration_manager, dataset_json: dict,
                               deep_supervision: bool = False) -> torch.nn.Module:
    """The (untrained) network a trainer of ``trainer_name`` builds for this nnU-Net configuration."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    trainer_class = nnUNetTrainer if trainer_name == VFSCREEN_SEG_TRAINER else nnunet_trainer_class(trainer_name)
    return trainer_class.build_network_architecture(
        plans_manager, configuration_manager,
        determine_num_input_channels(plans_manager, configuration_manager, dataset_json),
        plans_manager.get_label_manager(dataset_json).num_segmentation_heads, enable_deep_supervision=deep_supervision)
