"""Evaluation of vfscreen: prediction outputs against a reference (test set) or the pooled cross-validation of the
grader folds. Python API:

    evaluate_predictions(reference, prediction_folder) -> dict   # vfscreen_evaluate -ref R -pred P
    evaluate_cross_validation(dataset, configuration) -> dict     # vfscreen_evaluate -d 501 -c 3d --cv
    fit_fusion_for_model(dataset, configuration) -> Path           # ... --cv --fit-fusion

The result dict (written as metrics.json by the CLI) holds the metrics with 95 % patient-bootstrap intervals
(``metrics.classification`` - vertebra and patient level, grader / morphometry / fused -, ``metrics.segmentation``),
which cases were evaluated, missing or extra, and one row per graded reference vertebra (``vertebrae``).
Reference grades are the truth; a graded vertebra without a matched prediction, or of a case without prediction,
counts as predicted G0 with every fracture score 0. Patient level = worst vertebra over the graded vertebrae.
"""
from __future__ import annotations

import datetime
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

import vfscreen
from vfscreen import genant, labels
from vfscreen.dataset import GRADES_FILE, label_path, raw_dataset_folder, read_grades, resolve_dataset_name
from vfscreen.errors import ConfigError, InputError
from vfscreen.evaluation import fusion as fusion_module
from vfscreen.evaluation.bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED, attach_intervals, bootstrap_intervals
from vfscreen.evaluation.inputs import (load_prediction_folder, load_reference, masks_use_class_ids,
                                        read_prediction_segmentation, read_reference_mask,
                                        read_validation_predictions)
from vfscreen.evaluation.matching import MAX_CENTROID_DISTANCE_MM, match_case, segmentation_metrics
from vfscreen.evaluation.metrics import compute_metrics, undefined
from vfscreen.paths import nnUNet_preprocessed, nnUNet_results

SCHEMA_VERSION = 1
DEFAULT_PLANS = "vfscreenPlans"
SEGMENTATION_NOT_EVALUATED = ("cross-validation grades crops of the ground-truth masks; segmentation is evaluated on "
                              "predictions (vfscreen_evaluate -ref -pred) and by nnU-Net's own validation")


def grader_model_folder(dataset_name: str, configuration: str, plans_name: str = DEFAULT_PLANS) -> Path:
    return nnUNet_results / dataset_name / f"vfscreen_grader__{plans_name}__{configuration}"


def fusion_path(dataset: str | int, configuration: str, plans_name: str = DEFAULT_PLANS) -> Path:
    return grader_model_folder(resolve_dataset_name(dataset), configuration, plans_name) / fusion_module.FUSION_FILE


# ---------------------------------------------------------------------------------------------------------------
# the evaluation table (one row per graded reference vertebra; columns documented in metrics.py)
# ---------------------------------------------------------------------------------------------------------------

def grading_row(case_id: str, label: int, grade: int, prediction: dict | None) -> dict:
    """``prediction``: dict with probabilities (4,) (None: matched but not graded), predicted_grade, p_fracture,
    genant_ratio, morph_grade; None = missed. Missed and not-graded vertebrae are scored as predicted G0 with
    P(fracture) 0 (they count against the method); a missed vertebra also has morphometric score 0."""
    row = {"case_id": case_id, "label": int(label), "name": labels.name_of(label), "grade": int(grade),
           "matched": prediction is not None,
           "graded": prediction is not None and prediction.get("probabilities") is not None}
    not_graded = {"predicted_grade": 0, "p_g0": 1.0, "p_g1": 0.0, "p_g2": 0.0, "p_g3": 0.0, "score_grader": 0.0}
    if prediction is None:
        return {**row, **not_graded, "genant_ratio": math.nan, "morph_grade": 0.0, "score_morph": 0.0}
    ratio = float(prediction["genant_ratio"])
    morph_grade = float(prediction["morph_grade"])
    if not math.isfinite(morph_grade) and math.isfinite(ratio):
        morph_grade = float(genant.grade_from_reduction(1.0 - ratio))
    morphometry = {"genant_ratio": ratio, "morph_grade": morph_grade,
                   "score_morph": 1.0 - ratio if math.isfinite(ratio) else math.nan}
    if not row["graded"]:  # matched, but the grader did not grade it: counts as G0 with P(fracture) 0
        return {**row, **not_graded, **morphometry}
    probabilities = np.asarray(prediction["probabilities"], dtype=float)
    return {**row, "predicted_grade": int(prediction["predicted_grade"]),
            **{f"p_g{g}": float(probabilities[g]) for g in range(4)},
            "score_grader": float(prediction["p_fracture"]), **morphometry}


def _apply_fusion_model(table: pd.DataFrame, model: dict | None, missing_reason: str) -> dict[str, str]:
    """Adds score_fused and threshold_* columns from a fusion model; returns reasons for what is unavailable."""
    for column in ("score_fused", "threshold_grader", "threshold_morph", "threshold_fused"):
        table[column] = math.nan
    if model is None:
        return {"fused": missing_reason, **{f"threshold_{m}": missing_reason for m in fusion_module.THRESHOLD_METHODS}}
    if not table.empty:
        graded = table["graded"].to_numpy(dtype=bool)
        fused = fusion_module.fused_probability(model, table["score_grader"], table["genant_ratio"])
        table["score_fused"] = np.where(graded, fused, 0.0)
    reasons = {}
    for method, column in (("grader", "threshold_grader"), ("morphometry", "threshold_morph"),
                           ("fused", "threshold_fused")):
        value = model.get("thresholds", {}).get(method)
        if value is None:
            reasons[f"threshold_{method}"] = f"the fusion model has no validation threshold for {method}"
        else:
            table[column] = float(value)
    return reasons


def _finish(header: dict, tables: dict[str, pd.DataFrame], reasons: dict[str, str], segmentation: bool,
            n_bootstrap: int, seed: int, progress: bool) -> dict:
    def compute(current: dict[str, pd.DataFrame]) -> dict:
        result = {"classification": compute_metrics(current["grading"], reasons)}
        if segmentation:
            result["segmentation"] = segmentation_metrics(current["vertebrae"], current["extra"])
        return result

    point = compute(tables)
    if not segmentation:
        point["segmentation"] = {"identification_rate": undefined(SEGMENTATION_NOT_EVALUATED),
                                 "dice_mean": undefined(SEGMENTATION_NOT_EVALUATED)}
    intervals = bootstrap_intervals(tables, compute, n_resamples=n_bootstrap, seed=seed, progress=progress) \
        if n_bootstrap > 0 else {}
    grading = tables["grading"]
    return {"schema_version": SCHEMA_VERSION, "vfscreen_version": vfscreen.__version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **header,
            "bootstrap": {"n_resamples": n_bootstrap, "seed": seed, "confidence": 0.95, "unit": "patient (case)",
                          "method": "percentile"},
            "metrics": attach_intervals(point, intervals, n_bootstrap),
            "vertebrae": json_records(grading)}


def json_records(table: pd.DataFrame) -> list[dict]:
    """DataFrame rows as JSON-able dicts (NaN -> None, numpy scalars -> Python)."""
    return json.loads(table.to_json(orient="records"))


# ---------------------------------------------------------------------------------------------------------------
# test-set evaluation of prediction outputs
# ---------------------------------------------------------------------------------------------------------------

def _resolve_fusion(fusion, predictions) -> tuple[dict | None, str]:
    if isinstance(fusion, dict):
        return fusion_module.validate_fusion(fusion), "given as a dict"
    if fusion is not None:
        return fusion_module.load_fusion(fusion), str(fusion)
    for case in predictions.values():
        embedded = case.model.get("fusion")
        if isinstance(embedded, dict):
            return fusion_module.validate_fusion(embedded, f"{case.json_path}: model.fusion"), \
                f"{case.json_path} (model.fusion)"
    for case in predictions.values():  # the grader model folder the predictions were made with
        grader = case.model.get("grader")
        if isinstance(grader, dict) and isinstance(grader.get("folder"), str):
            candidate = Path(grader["folder"]) / fusion_module.FUSION_FILE
            if candidate.is_file():
                return fusion_module.load_fusion(candidate), str(candidate)
    return None, ""


def evaluate_predictions(reference: str | Path, prediction_folder: str | Path, *, split: str | None = None,
                         fusion: str | Path | dict | None = None, n_bootstrap: int = DEFAULT_RESAMPLES,
                         seed: int = DEFAULT_SEED, max_distance_mm: float = MAX_CENTROID_DISTANCE_MM,
                         progress: bool = True) -> dict:
    """Compare ``vfscreen_predict`` outputs with reference masks + grades.csv (see inputs.py for the reference
    layout). ``fusion``: a fusion.json path or dict giving the fused score and the validation thresholds (default:
    ``model.fusion`` of the prediction JSONs, else fusion.json in the grader folder named by their
    ``model.grader.folder``, else those metrics are reported as unavailable)."""
    ref = load_reference(reference, split)
    predictions, failed = load_prediction_folder(prediction_folder)
    common = sorted(set(ref.masks) & set(predictions))
    if not common:
        raise ConfigError(f"no case in common between reference {reference} ({len(ref.masks)} cases, e.g. "
                          f"{', '.join(sorted(ref.masks)[:3])}) and predictions {prediction_folder} "
                          f"({len(predictions)} cases" + (f", e.g. {', '.join(sorted(predictions)[:3])})"
                                                          if predictions else ")"))
    fusion_model, fusion_source = _resolve_fusion(fusion, predictions)
    grades_by_case = {case: group for case, group in ref.grades.groupby("case_id")}
    grading_rows, vertebra_rows, extra_rows, per_case, grades_without_mask = [], [], [], [], []
    for case_id in tqdm(sorted(ref.masks), desc="evaluating cases", disable=not progress, leave=False):
        reference_image = read_reference_mask(ref.masks[case_id], ref.class_ids)
        prediction = predictions.get(case_id)
        if prediction is None:
            match = match_case(case_id, reference_image, max_distance_mm=max_distance_mm)
        elif prediction.segmentation is not None:
            match = match_case(case_id, reference_image, read_prediction_segmentation(prediction.segmentation),
                               max_distance_mm=max_distance_mm)
        else:
            centroids = {label: v["centroid_mm"] for label, v in prediction.vertebrae.items()
                         if v["centroid_mm"] is not None}
            match = match_case(case_id, reference_image, predicted_centroids=centroids,
                               max_distance_mm=max_distance_mm)
        vertebra_rows += match.vertebra_rows()
        extra_rows += match.extra_rows()
        in_mask = set(match.reference_labels)
        case_grades = grades_by_case.get(case_id, pd.DataFrame(columns=["label", "grade"]))
        for label, grade in zip(case_grades["label"], case_grades["grade"]):
            vertebra = None
            if prediction is not None and label in prediction.vertebrae:
                if label in match.identified:
                    vertebra = prediction.vertebrae[label]
                elif label not in in_mask:  # no reference centroid to check: matched by label only
                    vertebra = prediction.vertebrae[label]
            if label not in in_mask:
                grades_without_mask.append({"case_id": case_id, "label": int(label), "name": labels.name_of(label),
                                            "matched_by_label_only": vertebra is not None})
            grading_rows.append(grading_row(case_id, label, grade, vertebra))
        per_case.append({"case_id": case_id, "predicted": prediction is not None,
                         "num_reference_vertebrae": len(match.reference_labels),
                         "identified": [labels.name_of(v) for v in match.identified],
                         "missed": [labels.name_of(v) for v in match.missed],
                         "extra": [labels.name_of(v) for v in match.extra],
                         "dice_mean": float(np.mean(list(match.dice.values()))) if match.dice else None})
    grading = pd.DataFrame(grading_rows, columns=list(grading_row("x", 1, 0, None).keys()))
    reasons = _apply_fusion_model(grading, fusion_model, "no fusion model (give --fusion FILE, or -d/-c of a model "
                                  "with fusion.json; fit one with vfscreen_evaluate -d D -c C --cv --fit-fusion)")
    missing = sorted(set(ref.masks) - set(predictions))
    header = {"mode": "test", "reference": str(reference), "prediction": str(prediction_folder),
              "cases": {"num_reference": len(ref.masks), "num_evaluated": len(common),
                        "missing_predictions": missing,
                        "failed_in_prediction": {c: failed[c] for c in missing if c in failed},
                        "without_reference": sorted(set(predictions) - set(ref.masks)),
                        "grades_without_mask": grades_without_mask,
                        "matched_not_graded": [f"{r['case_id']}:{r['name']}" for r in grading_rows
                                               if r["matched"] and not r["graded"]],
                        "grades_of_cases_without_mask": ref.ignored_grade_cases,
                        "reference_masks": "nnU-Net class ids" if ref.class_ids else "VerSe ids",
                        "grades_file": str(ref.grades_path)},
              "matching": {"max_centroid_distance_mm": max_distance_mm,
                           "rule": "same label and centroid distance <= max (VerSe identification); unmatched "
                                   "reference vertebrae are missed (scored G0, P(fracture) 0), unmatched predicted "
                                   "vertebrae are extra"},
              "fusion": {"source": fusion_source or None, "thresholds": (fusion_model or {}).get("thresholds")},
              "model": next((case.model for case in predictions.values() if case.model), {}),
              "per_case": per_case}
    tables = {"grading": grading,
              "vertebrae": pd.DataFrame(vertebra_rows, columns=["case_id", "label", "name", "identified",
                                                                "centroid_distance_mm", "dice"]),
              "extra": pd.DataFrame(extra_rows, columns=["case_id", "label", "name", "centroid_distance_mm"])}
    return _finish(header, tables, reasons, True, n_bootstrap, seed, progress)


# ---------------------------------------------------------------------------------------------------------------
# cross-validation of the grader folds
# ---------------------------------------------------------------------------------------------------------------

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
    splits_file = nnUNet_preprocessed / dataset_name / "splits_final.json"
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


def _uses_truncated(model_folder: Path, fold_files: dict[int, Path], configuration: str) -> bool:
    for predictions_file in fold_files.values():
        plans_file = predictions_file.parent.parent / "plans.json"
        if plans_file.is_file():
            try:
                plans = json.loads(plans_file.read_text())
                return bool(plans["configurations"][configuration]["grader"]["crop"].get("use_truncated", True))
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
                return True
    return True


def measure_reference_morphometry(dataset_name: str, case_ids, progress: bool = True) -> dict[tuple, tuple]:
    """(case, VerSe id) -> (genant_ratio, morph_grade) measured by vfscreen.inference.morphometry (the code prediction
    runs) on the reference masks labelsTr/<case>.nii.gz; vertebrae it cannot measure (truncated) are left out."""
    import SimpleITK as sitk

    from vfscreen.inference.morphometry import measure_vertebrae

    raw = raw_dataset_folder(dataset_name)
    class_ids = masks_use_class_ids(raw)
    measured = {}
    for case_id in tqdm(sorted(case_ids), desc="morphometry of reference masks", disable=not progress, leave=False):
        path = label_path(raw, case_id, "Tr")
        if not path.is_file():
            continue
        mask = read_reference_mask(path, class_ids)
        for label, result in measure_vertebrae(sitk.GetArrayFromImage(mask), mask).items():
            if result.genant_ratio is not None:
                measured[(case_id, int(label))] = (float(result.genant_ratio), float(result.morph_grade))
    return measured


def cross_validation_table(dataset: str | int, configuration: str = "3d", folds=None,
                           plans_name: str = DEFAULT_PLANS, progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """Pooled validation predictions of the grader folds against grades.csv: the evaluation table with a ``fold``
    column (not yet fused) and a description of cases/vertebrae that were missing, extra or excluded."""
    dataset_name = resolve_dataset_name(dataset)
    model_folder = grader_model_folder(dataset_name, configuration, plans_name)
    fold_files = _grader_folds(model_folder, folds)
    case_fold = _validation_cases(dataset_name, list(fold_files))
    grades = read_grades(raw_dataset_folder(dataset_name) / GRADES_FILE)
    reference = grades[grades["case_id"].isin(case_fold.keys())].copy()
    excluded_truncated = 0
    if "truncated" in reference.columns and not _uses_truncated(model_folder, fold_files, configuration):
        truncated = reference["truncated"].astype(str).str.lower().isin(("1", "true", "yes"))
        excluded_truncated = int(truncated.sum())
        reference = reference[~truncated]
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
    rows, folds_of_rows = [], []
    for case_id, label, grade in zip(reference["case_id"], reference["label"], reference["grade"]):
        found = by_key.get((case_id, int(label)))
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
    info = {"dataset": dataset_name, "configuration": configuration, "model_folder": str(model_folder),
            "folds": list(fold_files), "morphometry": morphometry_source,
            "cases": {"num_reference": len(case_fold), "num_evaluated": len(set(case_fold) & predicted_cases),
                      "missing_predictions": sorted(set(case_fold) - predicted_cases),
                      "without_reference": sorted(predicted_cases - set(case_fold)),
                      "missed_vertebrae": [{"case_id": r["case_id"], "name": r["name"]} for r in rows
                                           if not r["matched"]],
                      "ungraded_predictions": int(sum((c, int(lab)) not in reference_keys
                                                      for c, lab in zip(predictions["case_id"],
                                                                        predictions["label"]))),
                      "excluded_truncated_vertebrae": excluded_truncated}}
    if not (set(case_fold) & predicted_cases):
        raise ConfigError(f"no case in common between the validation predictions of folds {list(fold_files)} and "
                          f"the validation cases of {dataset_name}'s splits_final.json")
    return table, info


def evaluate_cross_validation(dataset: str | int, configuration: str = "3d", *, folds=None,
                              plans_name: str = DEFAULT_PLANS, n_bootstrap: int = DEFAULT_RESAMPLES,
                              seed: int = DEFAULT_SEED, fit_fusion: bool = False, progress: bool = True) -> dict:
    """Pool the folds' validation predictions; fused score and validation thresholds are cross-fitted (each fold's
    from the other folds), so nothing is tuned on the vertebrae it is evaluated on. ``fit_fusion``: also fit the
    fusion model on all folds and save it as fusion.json in the grader model folder (``fusion.saved`` in the result).
    """
    table, info = cross_validation_table(dataset, configuration, folds, plans_name, progress)
    saved = _fit_and_save_fusion(table, info, plans_name) if fit_fusion else None
    fitted, reasons = fusion_module.cross_fitted(table["grade"].to_numpy(), table["score_grader"].to_numpy(),
                                                 table["genant_ratio"].to_numpy(), table["fold"].to_numpy())
    for column, values in fitted.items():
        table[column] = values
    table.loc[~table["graded"], "score_fused"] = 0.0
    header = {"mode": "cross_validation", **info,
              "fusion": {"source": "cross-fitted: each fold's fused score and thresholds are fitted on the other "
                                   "folds' validation predictions", "saved": str(saved) if saved else None}}
    return _finish(header, {"grading": table}, reasons, False, n_bootstrap, seed, progress)


def _fit_and_save_fusion(table: pd.DataFrame, info: dict, plans_name: str) -> Path:
    graded = table[table["graded"]]
    model = fusion_module.fit_fusion(graded["grade"].to_numpy(), graded["score_grader"].to_numpy(),
                                     graded["genant_ratio"].to_numpy(),
                                     fitted_on={"dataset": info["dataset"], "configuration": info["configuration"],
                                                "plans": plans_name, "folds": info["folds"],
                                                "predictions": "validation/predictions.csv of each fold",
                                                "morphometry": info["morphometry"]})
    return fusion_module.save_fusion(model, Path(info["model_folder"]) / fusion_module.FUSION_FILE)


def fit_fusion_for_model(dataset: str | int, configuration: str = "3d", *, folds=None,
                         plans_name: str = DEFAULT_PLANS, progress: bool = True) -> Path:
    """Fit the fusion model + validation thresholds on all folds' validation predictions and save fusion.json in
    the grader model folder (where prediction can load it)."""
    table, info = cross_validation_table(dataset, configuration, folds, plans_name, progress)
    return _fit_and_save_fusion(table, info, plans_name)
