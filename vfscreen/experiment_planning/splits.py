"""One patient-level k-fold split, stratified by each patient's worst Genant grade, as nnU-Net's splits_final.json.

The same file drives nnU-Net's segmentation folds and the grader's folds, so fold k holds the same patients in both
stages, and the vertebrae of one patient never sit on both sides of a split.
"""
from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import numpy as np
from sklearn.model_selection import KFold, StratifiedKFold

from vfscreen.errors import InputError
from vfscreen.utils.atomic import atomic_write_json

SPLITS_FILE_NAME = "splits_final.json"


def make_patient_splits(case_patients: dict[str, str], patient_worst_grade: dict[str, int], num_folds: int,
                        seed: int) -> list[dict[str, list[str]]]:
    """[{"train": [case ids], "val": [case ids]}] * num_folds.

    ``case_patients``: case id -> patient id; ``patient_worst_grade``: patient id -> worst grade (patients without any
    graded vertebra are stratified as their own group, -1). Stratification uses sklearn's StratifiedKFold; a grade
    with fewer patients than folds is merged into the neighbouring grade (toward G1-G3 for fractures, G0 stays alone
    when possible), and when even that cannot work the split falls back to an unstratified shuffled KFold (warning).
    Deterministic for a given seed.
    """
    patients = sorted(set(case_patients.values()))
    if len(patients) < num_folds:
        raise InputError(f"{len(patients)} patient(s) cannot be split into {num_folds} folds; lower num_folds in the "
                         f"plans or add cases")
    strata = np.array([patient_worst_grade.get(p, -1) for p in patients])
    strata = _merge_small_strata(strata, num_folds)
    if strata is None:
        warnings.warn(f"too few patients per worst grade for a stratified {num_folds}-fold split; using an "
                      "unstratified shuffled split", stacklevel=2)
        folds = KFold(n_splits=num_folds, shuffle=True, random_state=seed).split(patients)
    else:
        folds = StratifiedKFold(n_splits=num_folds, shuffle=True, random_state=seed).split(patients, strata)
    cases_of_patient: dict[str, list[str]] = {}
    for case_id, patient in sorted(case_patients.items()):
        cases_of_patient.setdefault(patient, []).append(case_id)
    splits = []
    for train_index, val_index in folds:
        train = sorted(c for i in train_index for c in cases_of_patient[patients[i]])
        val = sorted(c for i in val_index for c in cases_of_patient[patients[i]])
        splits.append({"train": train, "val": val})
    return splits


def _merge_small_strata(strata: np.ndarray, num_folds: int) -> np.ndarray | None:
    """Merge grades with < num_folds patients into the nearest grade until every stratum is large enough."""
    strata = strata.copy()
    while True:
        counts = Counter(strata.tolist())
        small = [grade for grade, count in counts.items() if count < num_folds]
        if not small:
            return strata
        if len(counts) == 1:
            return None
        grade = min(small, key=lambda g: (counts[g], g))
        others = [g for g in counts if g != grade]
        target = min(others, key=lambda g: (abs(g - grade), -g))  # nearest grade, prefer the more severe one
        strata[strata == grade] = target


def write_splits(splits: list[dict], preprocessed_folder: Path) -> Path:
    path = Path(preprocessed_folder) / SPLITS_FILE_NAME
    atomic_write_json(path, splits)
    return path


def splits_from_fingerprint(fingerprint: dict, num_folds: int, seed: int) -> list[dict]:
    case_patients = {case["case_id"]: case["patient_id"] for case in fingerprint["cases"]}
    worst: dict[str, int] = {}
    for case in fingerprint["cases"]:
        grades = [v["grade"] for v in case["vertebrae"] if v["grade"] is not None]
        if grades:
            worst[case["patient_id"]] = max(worst.get(case["patient_id"], 0), max(grades))
    return make_patient_splits(case_patients, worst, num_folds, seed)
