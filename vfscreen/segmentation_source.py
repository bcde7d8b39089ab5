"""Which segmentation model a dataset's predictions use, when it is not the dataset's own nnU-Net training.

``vfscreen_train D 3d F --pretrained_seg FOLDER`` records FOLDER (a trained nnU-Net v2 model folder, e.g. a
TotalSegmentator or VerSe-trained vertebra model) in ``nnUNet_results/<Dataset>/pretrained_segmentation.json``;
``vfscreen_predict -d D`` then segments with that model (vfscreen.inference.seg_model) and names it in the JSON's
``model`` block. Shared by training (writes) and inference (reads); nothing else is stored there.
"""
from __future__ import annotations

import json
from pathlib import Path

from vfscreen import paths
from vfscreen.core.model_folders import NNUNET_CHECKPOINTS, available_folds
from vfscreen.errors import ConfigError
from vfscreen.labels import parse_structure_name
from vfscreen.utils.atomic import atomic_write_json

RECORD_FILE = "pretrained_segmentation.json"


def trained_folds(folder: Path, checkpoint_file: str) -> list:
    """Folds of a model folder holding ``checkpoint_file``: the numbered ones, then 'all' (nnU-Net's fold_all)."""
    return available_folds(folder, checkpoint_file) + (["all"] if (Path(folder) / "fold_all" / checkpoint_file)
                                                        .is_file() else [])


def check_model_folder(folder, folds=None, checkpoint: str = "final") -> tuple[Path, list]:
    """(resolved folder, folds to use) of a trained nnU-Net v2 model folder whose dataset.json names at least one
    vertebra, or ConfigError saying where it looked. (Checkpoints are loaded - weights only - when predicting.)"""
    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise ConfigError(f"segmentation model folder {folder} does not exist (vfscreen never downloads models; give "
                          "the folder of a trained nnU-Net model, e.g. TotalSegmentator's "
                          "~/.totalsegmentator/nnunet/results/Dataset.../<trainer>__<plans>__<configuration>)")
    for name in ("dataset.json", "plans.json"):
        if not (folder / name).is_file():
            raise ConfigError(f"{folder} is not a trained nnU-Net model folder: {folder / name} is missing")
    checkpoint_file = NNUNET_CHECKPOINTS[checkpoint]
    existing = trained_folds(folder, checkpoint_file)
    folds = existing if folds is None else [fold if str(fold) == "all" else int(fold) for fold in folds]
    missing = [fold for fold in folds if fold not in existing]
    if not folds or missing:
        looked = ", ".join(str(folder / f"fold_{fold}" / checkpoint_file) for fold in (missing or ["X"]))
        raise ConfigError(f"{folder}: no trained fold {missing or ''} (looked for {looked}; trained folds: "
                          f"{existing or 'none'})")
    try:
        names = list(json.loads((folder / "dataset.json").read_text())["labels"])
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"{folder / 'dataset.json'} has no readable 'labels'") from None
    if not any((parse_structure_name(name) or ("",))[0] == "vertebra" for name in names):
        raise ConfigError(f"{folder / 'dataset.json'}: no label is a vertebra (names like 'vertebrae_L1' or 'L1' "
                          f"expected; found {', '.join(names[:8])})")
    return folder, folds


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
        raise ConfigError(f"{path} is unreadable; re-run vfscreen_train {dataset_name} ... --pretrained_seg FOLDER "
                          "or delete it") from None
