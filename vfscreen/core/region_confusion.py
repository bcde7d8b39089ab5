"""How far a region network's cervical / thoracic / lumbar call can be trusted, measured on its validation cases.

A network trained on the ``spine_regions`` grouping (vfscreen.labels) says per voxel "vertebra", "thoracic",
"lumbar". At a CPU budget it may never learn one of them (the demo's model calls every vertebra thoracic); its
sigmoids are then confidently wrong, and naming that takes them at face value counts from the wrong end. So after
training, the fold's validation predictions (nnU-Net's ``validation/<case>.nii.gz``, group ids) are compared with the
reference labels: each reference vertebra's *observed* region is the commonest vertebra group among its voxels
(1 vertebra only = cervical, 2 thoracic, 3 lumbar). The counts, true region x observed region, go into
``fold_X/vfscreen_region_confusion.json``; prediction sums them over its folds and uses
P(observed | true) (add-one smoothed) as the chain model's class evidence (vfscreen.inference.label_consistency),
so a network that calls everything thoracic says almost nothing and the landmarks decide.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vfscreen.errors import ConfigError
from vfscreen.labels import CLASS_TO_VERSE, NUM_VERTEBRA_CLASSES, VERSE_NAMES
from vfscreen.utils.atomic import atomic_write_json

REGION_CONFUSION_FILE = "vfscreen_region_confusion.json"
REGIONS = ("cervical", "thoracic", "lumbar")
GROUP_TO_REGION = {1: 0, 2: 1, 3: 2}  # vfscreen.labels.SPINE_REGION_GROUP_IDS: vertebra only, thoracic, lumbar


def class_regions() -> np.ndarray:
    """(K,) region index (0 cervical, 1 thoracic, 2 lumbar) of each vertebra class 1..K."""
    return np.array([REGIONS.index({"C": "cervical", "T": "thoracic", "L": "lumbar"}[VERSE_NAMES[CLASS_TO_VERSE[c]][0]])
                     for c in range(1, NUM_VERTEBRA_CLASSES + 1)])


def confusion_counts(predicted_groups: np.ndarray, reference_classes: np.ndarray) -> np.ndarray:
    """(3, 3) counts, rows the reference vertebra's region, columns the commonest predicted vertebra group in it;
    reference vertebrae without any predicted vertebra voxel are not counted (a miss says nothing about regions)."""
    regions = class_regions()
    counts = np.zeros((3, 3), dtype=int)
    for class_id in np.unique(reference_classes):
        if not 1 <= class_id <= NUM_VERTEBRA_CLASSES:
            continue
        observed = predicted_groups[reference_classes == class_id]
        votes = [np.count_nonzero(observed == group) for group in GROUP_TO_REGION]
        if max(votes) > 0:
            counts[regions[class_id - 1], int(np.argmax(votes))] += 1
    return counts


def write_confusion(fold_folder: Path, counts: np.ndarray, cases: list[str]) -> Path:
    path = Path(fold_folder) / REGION_CONFUSION_FILE
    atomic_write_json(path, {"regions": list(REGIONS), "rows": "reference region", "columns": "observed region",
                             "counts": np.asarray(counts).astype(int).tolist(), "validation_cases": cases})
    return path


def read_confusion(model_folder: Path, folds) -> np.ndarray | None:
    """Counts summed over the folds that have the file; None when none has it (a model trained elsewhere)."""
    total, found = np.zeros((3, 3), dtype=int), False
    for fold in folds:
        path = Path(model_folder) / f"fold_{fold}" / REGION_CONFUSION_FILE
        if path.is_file():
            try:
                counts = np.array(json.loads(path.read_text())["counts"], dtype=int)
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
                raise ConfigError(f"{path}: not a region-confusion file ({type(error).__name__}: {error}); "
                                  "delete it to name vertebrae from the network's outputs as they are") from None
            if counts.shape != (3, 3) or (counts < 0).any():
                raise ConfigError(f"{path}: 'counts' must be 3 x 3 non-negative counts, not {counts.tolist()}")
            total += counts
            found = True
    return total if found else None


def observation_likelihoods(counts: np.ndarray) -> np.ndarray:
    """(3, 3) P(observed region | true region), add-one smoothed, rows sum to 1."""
    smoothed = np.asarray(counts, dtype=float) + 1.0
    return smoothed / smoothed.sum(axis=1, keepdims=True)
