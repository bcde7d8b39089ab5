"""Where trained models live: nnU-Net's layout ``nnUNet_results/<Dataset>/<trainer>__<plans>__<configuration>/fold_<k>``.

One definition for every writer (training) and reader (inference, evaluation, demo).
"""
from __future__ import annotations

import json
from pathlib import Path

from vfscreen import paths
from vfscreen.core.plans import PLANS_NAME

GRADER_TRAINER_NAMES = {"supcon": "vfscreen_grader", "ce": "vfscreen_graderCE"}  # loss -> grader folder prefix
NNUNET_CHECKPOINTS = {"final": "checkpoint_final.pth", "best": "checkpoint_best.pth", "latest": "checkpoint_latest.pth"}
GRADER_PLANS_COPY = "plans.json"  # the plans a grader fold was trained with, inside its fold folder
FUSION_FILE = "fusion.json"  # the fusion model, next to the grader folds


def grader_model_folder(dataset_name: str, configuration: str, loss: str = "supcon",
                        plans_name: str = PLANS_NAME) -> Path:
    """``nnUNet_results/<Dataset>/vfscreen_grader[CE]__<plans>__<configuration>`` (``loss``: 'supcon' or 'ce')."""
    if loss not in GRADER_TRAINER_NAMES:
        raise ValueError(f"loss {loss!r}: expected one of {sorted(GRADER_TRAINER_NAMES)}")
    return paths.nnUNet_results / dataset_name / f"{GRADER_TRAINER_NAMES[loss]}__{plans_name}__{configuration}"


def loss_of_grader_folder(folder: str | Path) -> str | None:
    """'supcon' / 'ce' from a grader model folder's name, None for another name."""
    prefix = Path(folder).name.split("__")[0]
    return next((loss for loss, name in GRADER_TRAINER_NAMES.items() if name == prefix), None)


def segmentation_model_folder(dataset_name: str, segmentation: dict) -> Path:
    """nnU-Net's model folder ``nnUNet_results/<Dataset>/<trainer>__<nnU-Net plans>__<nnU-Net configuration>`` of a
    plans' segmentation section."""
    return paths.nnUNet_results / dataset_name / (f"{segmentation['trainer']}__"
                                                  f"{segmentation['nnunet_plans_identifier']}__"
                                                  f"{segmentation['nnunet_configuration']}")


def available_folds(model_folder: Path, checkpoint_file: str) -> list[int]:
    """The folds of a model folder that hold ``checkpoint_file``."""
    folds = []
    for folder in Path(model_folder).glob("fold_*"):
        suffix = folder.name[len("fold_"):]
        if suffix.isdigit() and (folder / checkpoint_file).is_file():
            folds.append(int(suffix))
    return sorted(folds)


def grader_fold_plans(model_folder: Path) -> dict | None:
    """The plans the first fold of a grader model folder was trained with (None when there is none or it is broken)."""
    for plans_path in sorted(Path(model_folder).glob(f"fold_*/{GRADER_PLANS_COPY}")):
        try:
            return json.loads(plans_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
    return None
