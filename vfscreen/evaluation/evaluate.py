"""Evaluation of vfscreen: prediction outputs against a reference (test set) or the pooled cross-validation of the
grader folds. Python API:

    evaluate_predictions(reference, prediction_folder) -> dict   # vfscreen_evaluate -ref R -pred P
    evaluate_cross_validation(dataset, configuration) -> dict     # vfscreen_evaluate -d 501 -c 3d --cv
    fit_fusion_for_model(dataset, configuration) -> Path           # ... --cv --fit_fusion

The result dict (written as metrics.json by the CLI) holds the metrics with 95 % patient-bootstrap intervals
(``metrics.classification`` - vertebra and patient level, grader / morphometry / fused -, ``metrics.segmentation``),
which cases were evaluated, missing or extra, and one row per graded reference vertebra (``vertebrae``).
Reference grades are the truth; a graded vertebra without a matched prediction, or of a case without prediction,
counts as predicted G0 with every fracture score 0. Patient level = worst vertebra over the graded vertebrae.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from vfscreen import labels
from vfscreen.errors import ConfigError
from vfscreen.core import fusion_model
from vfscreen.evaluation.bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED
from vfscreen.evaluation.cross_validation import (cross_validation_table, evaluate_cross_validation,
                                                  fit_fusion_for_model)
from vfscreen.evaluation.inputs import (load_prediction_folder, load_reference, read_prediction_segmentation,
                                        read_reference_mask)
from vfscreen.evaluation.matching import MAX_CENTROID_DISTANCE_MM, match_case
from vfscreen.evaluation.results import apply_fusion_model, finish_result, grading_row
from vfscreen.utils.progress import progress_bar

__all__ = ["evaluate_predictions", "evaluate_cross_validation", "fit_fusion_for_model", "cross_validation_table"]


def _resolve_fusion(fusion, predictions) -> tuple[dict | None, str]:
    if isinstance(fusion, dict):
        return fusion_model.validate_fusion(fusion), "given as a dict"
    if fusion is not None:
        return fusion_model.load_fusion(fusion), str(fusion)
    for case in predictions.values():
        embedded = case.model.get("fusion")
        if isinstance(embedded, dict):
            return fusion_model.validate_fusion(embedded, f"{case.json_path}: model.fusion"), \
                f"{case.json_path} (model.fusion)"
    for case in predictions.values():  # the grader model folder the predictions were made with
        grader = case.model.get("grader")
        if isinstance(grader, dict) and isinstance(grader.get("folder"), str):
            model = fusion_model.load_screening_model(Path(grader["folder"]))
            if model is not None:
                return model, str(Path(grader["folder"]) / fusion_model.FUSION_FILE)
    return None, ""


def evaluate_predictions(reference: str | Path, prediction_folder: str | Path, *, split: str | None = None,
                         fusion: str | Path | dict | None = None, n_bootstrap: int = DEFAULT_RESAMPLES,
                         seed: int = DEFAULT_SEED, max_distance_mm: float = MAX_CENTROID_DISTANCE_MM,
                         include_truncated: bool = False, progress: bool = True, matching: str = "label") -> dict:
    """Compare ``vfscreen_predict`` outputs with reference masks + grades.csv (see inputs.py for the reference
    layout). ``fusion``: a fusion.json path or dict giving the fused score and the validation thresholds (default:
    ``model.fusion`` of the prediction JSONs, else fusion.json in the grader folder named by their
    ``model.grader.folder``, else those metrics are reported as unavailable). ``matching``: 'label' (identification,
    the primary result) or 'position' (detection, names ignored; see matching.py). Truncated reference vertebrae the
    method did not grade are excluded from the grading metrics and listed unless ``include_truncated``."""
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
    grading_rows, vertebra_rows, extra_rows, per_case, grades_without_mask, excluded_truncated = [], [], [], [], [], []
    naming_rows = []
    for case_id in progress_bar(sorted(ref.masks), desc="evaluating cases", disable=not progress, leave=False):
        reference_image = read_reference_mask(ref.masks[case_id], ref.class_ids)
        prediction = predictions.get(case_id)
        if prediction is None:
            match = match_case(case_id, reference_image, max_distance_mm=max_distance_mm, rule=matching)
        elif prediction.segmentation is not None:
            match = match_case(case_id, reference_image, read_prediction_segmentation(prediction.segmentation),
                               max_distance_mm=max_distance_mm, rule=matching)
        else:
            centroids = {label: v["centroid_mm"] for label, v in prediction.vertebrae.items()
                         if v["centroid_mm"] is not None}
            match = match_case(case_id, reference_image, predicted_centroids=centroids,
                               max_distance_mm=max_distance_mm, rule=matching)
        vertebra_rows += match.vertebra_rows()
        extra_rows += match.extra_rows()
        if prediction is not None:
            naming_rows += [{"case_id": case_id, "label": label, "level_uncertain": vertebra["level_uncertain"],
                             "named_right": label in match.identified} for label, vertebra in prediction.vertebrae.items()]
        in_mask = set(match.reference_labels)
        case_grades = grades_by_case.get(case_id, pd.DataFrame(columns=["label", "grade", "reference_truncated"]))
        for label, grade, truncated in zip(case_grades["label"], case_grades["grade"],
                                           case_grades["reference_truncated"]):
            vertebra = None
            if prediction is not None and match.partner.get(label) in prediction.vertebrae:
                vertebra = prediction.vertebrae[match.partner[label]]
            elif prediction is not None and label in prediction.vertebrae and matching == "label":
                if label not in in_mask:  # no reference centroid to check: matched by label only
                    vertebra = prediction.vertebrae[label]
            if label not in in_mask:
                grades_without_mask.append({"case_id": case_id, "label": int(label), "name": labels.name_of(label),
                                            "matched_by_label_only": vertebra is not None})
            if truncated and not include_truncated and (vertebra is None or not vertebra["graded"]):
                excluded_truncated.append(f"{case_id}:{labels.name_of(label)}")
                continue
            grading_rows.append(grading_row(case_id, label, grade, vertebra))
        per_case.append({"case_id": case_id, "predicted": prediction is not None,
                         "num_reference_vertebrae": len(match.reference_labels),
                         "identified": [labels.name_of(v) for v in match.identified],
                         "missed": [labels.name_of(v) for v in match.missed],
                         "extra": [labels.name_of(v) for v in match.extra],
                         "dice_mean": float(np.mean(list(match.dice.values()))) if match.dice else None})
    grading = pd.DataFrame(grading_rows, columns=list(grading_row("x", 1, 0, None).keys()))
    reasons = apply_fusion_model(grading, fusion_model, "no fusion model (give --fusion FILE, or -d/-c of a model "
                                  "with fusion.json; fit one with vfscreen_evaluate -d D -c C --cv --fit_fusion)")
    missing = sorted(set(ref.masks) - set(predictions))
    header = {"mode": "test", "reference": str(reference), "prediction": str(prediction_folder),
              "cases": {"num_reference": len(ref.masks), "num_evaluated": len(common),
                        "missing_predictions": missing,
                        "failed_in_prediction": {c: failed[c] for c in missing if c in failed},
                        "without_reference": sorted(set(predictions) - set(ref.masks)),
                        "grades_without_mask": grades_without_mask,
                        "matched_not_graded": [f"{r['case_id']}:{r['name']}" for r in grading_rows
                                               if r["matched"] and not r["graded"]],
                        "excluded_truncated_not_graded": excluded_truncated,
                        "grades_of_cases_without_mask": ref.ignored_grade_cases,
                        "reference_masks": "nnU-Net class ids" if ref.class_ids else "VerSe ids",
                        "grades_file": str(ref.grades_path)},
              "matching": {"max_centroid_distance_mm": max_distance_mm, "name": matching,
                           "rule": ("same label and centroid distance <= max (VerSe identification)" if matching ==
                                    "label" else "nearest centroids one-to-one within max, labels ignored (detection)")
                                   + "; unmatched reference vertebrae are missed (scored G0, P(fracture) 0), unmatched "
                                     "predicted vertebrae are extra"},
              "fusion": {"source": fusion_source or None, "thresholds": (fusion_model or {}).get("thresholds")},
              "model": next((case.model for case in predictions.values() if case.model), {}),
              "per_case": per_case}
    tables = {"grading": grading,
              "vertebrae": pd.DataFrame(vertebra_rows, columns=["case_id", "label", "name", "identified",
                                                                "centroid_distance_mm", "dice"]),
              "extra": pd.DataFrame(extra_rows, columns=["case_id", "label", "name", "centroid_distance_mm"])}
    if matching == "label":
        tables["naming"] = pd.DataFrame(naming_rows, columns=["case_id", "label", "level_uncertain", "named_right"])
    return finish_result(header, tables, reasons, True, n_bootstrap, seed, progress)
