"""Which segmentation model a dataset's predictions use, when it is not the dataset's own nnU-Net training.

``vfscreen_train D 3d F --pretrained-seg FOLDER`` records FOLDER (a trained nnU-Net v2 model folder, e.g. a
TotalSegmentator or VerSe-trained vertebra model) in ``nnUNet_results/<Dataset>/pretrained_segmentation.json``;
``vfscreen_predict -d D`` then segments with that model (vfscreen.inference.seg_model) and names it in the JSON's
``model`` block. Shared by training (writes) and inference (reads); nothing else is stored there.
"""
from __future__ import annotations

import json
from pathlib import Path

from vfscreen import paths
from vfscreen.errors import ConfigError
from vfscreen.utils.atomic import atomic_write_json

RECORD_FILE = "pretrained_segmentation.json"


def record_path(dataset_name: str) -> Path:
    return paths.nnUNet_results / dataset_name / RECORD_FILE


def record_pretrained_segmentation(dataset_name: str, model_folder: Path, folds: list) -> Path:
    path = record_path(dataset_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"kind": "vfscreen_pretrained_segmentation", "model_folder": str(Path(model_folder)),
                             "folds": list(folds)})
    return path


def recorded_pretrained_segmentation(dataset_name: str) -> dict | None:
    """{"model_folder", "folds"} recorded for the dataset, or None."""
    path = record_path(dataset_name)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        return {"model_folder": str(record["model_folder"]), "folds": list(record["folds"])}
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"{path} is unreadable; re-run vfscreen_train {dataset_name} ... --pretrained-seg FOLDER "
                          "or delete it") from None
