"""Cross-validation of the grader: the folds' ``validation/predictions.csv`` (contract 4) pooled against
``grades.csv`` of the validation cases in ``splits_final.json``. Fused score and validation thresholds are
cross-fitted (each fold's from the other folds). Segmentation is not part of it (the grader sees crops of the
ground-truth masks)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from vfscreen import labels, paths
from vfscreen.dataset import GRADES_FILE, label_path, raw_dataset_folder, read_grades, resolve_dataset_name
from vfscreen.errors import ConfigError, InputError
from vfscreen.core import fusion_model
from vfscreen.core.model_folders import grader_model_folder
from vfscreen.core.plans import PLANS_NAME
from vfscreen.evaluation import fusion as fusion_module
from vfscreen.evaluation.bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED
from vfscreen.evaluation.inputs import (masks_use_class_ids, read_reference_mask, read_validation_predictions,
                                        truncated_flags)
from vfscreen.evaluation.results import finish_result, grading_row
from vfscreen.inference.morphometry import measure_vertebrae
from vfscreen.utils.progress import progress_bar


def _grader_folds(model_folder: Path, folds) -> dict[int, Path]:
    if not model_folder.is_dir():
        raise ConfigError(f"{model_folder}: no grader model folder; train first (vfscreen_train DATASET 3d FOLD)")
    available = {}
    for fold_folder in model_folder.glob("fold_*"):
        suffix = fold_folder.name[len("fold_"):]
        if suffix.isdigit() and (fold_folder / "validation" / "predictions.csv").is_file():
            available[int(suffix)] = fold_folder / "validation" / "predictions.csv"
    if folds is None:
        if not available:
            raise ConfigError(f"{model_folder}: no fold has validation/predictions.csv; train a fold first")
        return dict(sorted(available.items()))
    missing = [int(f) for f in folds if int(f) not in available]
    if missing:
        raise ConfigError(f"{model_folder}: fold(s) {missing} have no validation/predictions.csv "
                          f"(available: {sorted(available) or 'none'})")
    return {int(f): available[int(f)] for f in sorted(set(int(f) for f in folds))}


def _validation_cases(dataset_name: str, folds: list[int]) -> dict[str, int]:
    splits_file = paths.nnUNet_preprocessed / dataset_name / "splits_final.json"
    if not splits_file.is_file():
        raise ConfigError(f"{splits_file}: splits missing; run vfscreen_plan_and_preprocess first")
    try:
        splits = json.loads(splits_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{splits_file}: not valid JSON ({error})") from None
    case_fold = {}
    for fold in folds:
        if not isinstance(splits, list) or fold >= len(splits) or "val" not in splits[fold]:
            raise ConfigError(f"{splits_file}: has no fold {fold}")
        for case_id in splits[fold]["val"]:
            case_fold[str(case_id)] = fold
    return case_fold


_MORPHOMETRY_CACHE: dict[tuple, dict] = {}  # (mask path, modification time) -> measurements, for this process


def measure_reference_morphometry(dataset_name: str, case_ids, progress: bool = True) -> dict[tuple, tuple]:
    """(case, VerSe id) -> (genant_ratio, morph_grade) measured by vfscreen.inference.morphometry (the code prediction
    runs) on the reference masks labelsTr/<case>.nii.gz; vertebrae it cannot measure (truncated) are left out."""
    import SimpleITK as sitk


    raw = raw_dataset_folder(dataset_name)
    class_ids = masks_use_class_ids(raw)
    measured = {}
    for case_id in progress_bar(sorted(case_ids), desc="morphometry of reference masks", disable=not progress, leave=False):
        path = label_path(raw, case_id, "Tr")
        if not path.is_file():
            continue
        key = (str(path), path.stat().st_mtime_ns, class_ids)
        if key not in _MORPHOMETRY_CACHE:
            mask = read_reference_mask(path, class_ids)
            _MORPHOMETRY_CACHE[key] = {
                int(label): (float(result.genant_ratio), float(result.morph_grade))
                for label, result in measure_vertebrae(sitk.GetArrayFromImage(mask), mask).items()
                if result.genant_ratio is not None}
        measured.update({(case_id, label): value for label, value in _MORPHOMETRY_CACHE[key].items()})
    return measured


def cross_validation_table(dataset: str | int, configuration: str = "3d", folds=None,
                           plans_name: str = PLANS_NAME, progress: bool = True, loss: str = "supcon",
                           include_truncated: bool = False) -> tuple[pd.DataFrame, dict]:
    """Pooled validation predictions of the grader folds against grades.csv: the evaluation table with a ``fold``
    column (not yet fused) and a description of cases/vertebrae that were missing, extra or excluded."""
    dataset_name = resolve_dataset_name(dataset)
    model_folder = grader_model_folder(dataset_name, configuration, loss, plans_name)
    fold_files = _grader_folds(model_folder, folds)
    case_fold = _validation_cases(dataset_name, list(fold_files))
    grades = read_grades(raw_dataset_folder(dataset_name) / GRADES_FILE)
    reference = grades[grades["case_id"].isin(case_fold.keys())].copy()
    reference["reference_truncated"] = truncated_flags(reference)
    predictions = pd.concat([read_validation_predictions(path, fold) for fold, path in fold_files.items()],
                            ignore_index=True)
    duplicated = predictions.duplicated(["case_id", "label"])
    if duplicated.any():
        first = predictions[duplicated].iloc[0]
        raise InputError(f"vertebra {labels.name_of(first.label)} of case {first.case_id} is predicted by more than "
                         "one fold's validation/predictions.csv; the folds must not overlap")
    morphometry_source = "genant_ratio of the validation predictions"
    if not np.isfinite(predictions["genant_ratio"].to_numpy(dtype=float)).any():
        measured = measure_reference_morphometry(dataset_name, set(predictions["case_id"]), progress)
        keys = list(zip(predictions["case_id"], predictions["label"].astype(int)))
        predictions["genant_ratio"] = [measured.get(key, (math.nan, math.nan))[0] for key in keys]
        predictions["morph_grade"] = [measured.get(key, (math.nan, math.nan))[1] for key in keys]
        morphometry_source = ("measured on the reference masks by vfscreen.inference.morphometry (predictions.csv "
                              f"has no genant_ratio); {len(measured)} vertebrae measured")
    by_key = {(row.case_id, int(row.label)): row for row in predictions.itertuples(index=False)}
    rows, folds_of_rows, excluded_truncated = [], [], []
    for case_id, label, grade, truncated in zip(reference["case_id"], reference["label"], reference["grade"],
                                                reference["reference_truncated"]):
        found = by_key.get((case_id, int(label)))
        if found is None and truncated and not include_truncated:
            excluded_truncated.append(f"{case_id}:{labels.name_of(label)}")
            continue
        if found is not None and math.isfinite(found.file_grade) and int(found.file_grade) != int(grade):
            raise InputError(f"{fold_files[found.fold]}: case {case_id} vertebra {labels.name_of(label)} has grade "
                             f"{int(found.file_grade)} but grades.csv says {int(grade)}")
        prediction = None if found is None else {
            "probabilities": [found.p_g0, found.p_g1, found.p_g2, found.p_g3],
            "predicted_grade": found.predicted_grade, "p_fracture": found.p_fracture,
            "genant_ratio": found.genant_ratio, "morph_grade": found.morph_grade}
        rows.append(grading_row(case_id, label, grade, prediction))
        folds_of_rows.append(case_fold[case_id])
    table = pd.DataFrame(rows, columns=list(grading_row("x", 1, 0, None).keys()))
    table["fold"] = np.asarray(folds_of_rows, dtype=int)
    reference_keys = set(zip(reference["case_id"], reference["label"].astype(int)))
    predicted_cases = set(predictions["case_id"])
    info = {"dataset": dataset_name, "configuration": configuration, "loss": loss, "model_folder": str(model_folder),
            "folds": list(fold_files), "morphometry": morphometry_source,
            "cases": {"num_reference": len(case_fold), "num_evaluated": len(set(case_fold) & predicted_cases),
                      "missing_predictions": sorted(set(case_fold) - predicted_cases),
                      "without_reference": sorted(predicted_cases - set(case_fold)),
                      "missed_vertebrae": [{"case_id": r["case_id"], "name": r["name"]} for r in rows
                                           if not r["matched"]],
                      "ungraded_predictions": int(sum((c, int(lab)) not in reference_keys
                                                      for c, lab in zip(predictions["case_id"],
                                                                        predictions["label"]))),
                      "excluded_truncated_not_graded": excluded_truncated}}
    if not (set(case_fold) & predicted_cases):
        raise ConfigError(f"no case in common between the validation predictions of folds {list(fold_files)} and "
                          f"the validation cases of {dataset_name}'s splits_final.json")
    return table, info


def evaluate_cross_validation(dataset: str | int, configuration: str = "3d", *, folds=None,
                              plans_name: str = PLANS_NAME, n_bootstrap: int = DEFAULT_RESAMPLES,
                              seed: int = DEFAULT_SEED, fit_fusion: bool = False, progress: bool = True,
                              loss: str = "supcon", include_truncated: bool = False) -> dict:
    """Pool the folds' validation predictions; fused score and validation thresholds are cross-fitted (each fold's
    from the other folds), so nothing is tuned on the vertebrae it is evaluated on. ``fit_fusion``: also fit the
    fusion model on all folds and save it as fusion.json in the grader model folder (``fusion.saved`` in the result).
    """
    table, info = cross_validation_table(dataset, configuration, folds, plans_name, progress, loss,
                                         include_truncated)
    saved = _fit_and_save_fusion(table, info, plans_name) if fit_fusion else None
    fitted, reasons = fusion_module.cross_fitted(table["grade"].to_numpy(), table["score_grader"].to_numpy(),
                                                 table["genant_ratio"].to_numpy(), table["fold"].to_numpy())
    for column, values in fitted.items():
        table[column] = values
    table.loc[~table["graded"], "score_fused"] = 0.0
    header = {"mode": "cross_validation", **info,
              "fusion": {"source": "cross-fitted: each fold's fused score and thresholds are fitted on the other "
                                   "folds' validation predictions", "saved": str(saved) if saved else None}}
    return finish_result(header, {"grading": table}, reasons, False, n_bootstrap, seed, progress)


def _fit_and_save_fusion(table: pd.DataFrame, info: dict, plans_name: str) -> Path:
    graded = table[table["graded"]]
    model = fusion_module.fit_fusion(graded["grade"].to_numpy(), graded["score_grader"].to_numpy(),
                                     graded["genant_ratio"].to_numpy(),
                                     fitted_on={"dataset": info["dataset"], "configuration": info["configuration"],
                                                "plans": plans_name, "folds": info["folds"],
                                                "predictions": "validation/predictions.csv of each fold",
                                                "morphometry": info["morphometry"]})
    return fusion_module.save_fusion(model, Path(info["model_folder"]) / fusion_model.FUSION_FILE)


def fit_fusion_for_model(dataset: str | int, configuration: str = "3d", *, folds=None,
                         plans_name: str = PLANS_NAME, progress: bool = True, loss: str = "supcon") -> Path:
    """Fit the fusion model + validation thresholds on all folds' validation predictions and save fusion.json in
    the grader model folder (where prediction can load it)."""
    table, info = cross_validation_table(dataset, configuration, folds, plans_name, progress, loss)
    return _fit_and_save_fusion(table, info, plans_name)
