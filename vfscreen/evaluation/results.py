"""The pieces both evaluation modes share: the evaluation table's rows, the fused score, metrics + bootstrap + the
result dict, and where a grader model lives."""
from __future__ import annotations

import datetime
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

import vfscreen
from vfscreen import genant, labels
from vfscreen.dataset import resolve_dataset_name
from vfscreen.core import fusion_model
from vfscreen.core.model_folders import FUSION_FILE, grader_model_folder
from vfscreen.core.plans import PLANS_NAME
from vfscreen.evaluation import fusion as fusion_module
from vfscreen.evaluation.bootstrap import attach_intervals, bootstrap_intervals
from vfscreen.evaluation.matching import segmentation_metrics
from vfscreen.evaluation.metrics import compute_metrics, undefined

SCHEMA_VERSION = 1
SEGMENTATION_NOT_EVALUATED = ("cross-validation grades crops of the ground-truth masks; segmentation is evaluated on "
                              "predictions (vfscreen_evaluate -ref -pred) and by nnU-Net's own validation")


def fusion_path(dataset: str | int, configuration: str, plans_name: str = PLANS_NAME, loss: str = "supcon") -> Path:
    return grader_model_folder(resolve_dataset_name(dataset), configuration, loss, plans_name) / FUSION_FILE


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


def apply_fusion_model(table: pd.DataFrame, model: dict | None, missing_reason: str) -> dict[str, str]:
    """Adds score_fused and threshold_* columns from a fusion model; returns reasons for what is unavailable."""
    for column in ("score_fused", "threshold_grader", "threshold_morph", "threshold_fused"):
        table[column] = math.nan
    if model is None:
        return {"fused": missing_reason, **{f"threshold_{m}": missing_reason for m in fusion_module.THRESHOLD_METHODS}}
    if not table.empty:
        graded = table["graded"].to_numpy(dtype=bool)
        fused = fusion_model.fused_probability(model, table["score_grader"], table["genant_ratio"])
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


def finish_result(header: dict, tables: dict[str, pd.DataFrame], reasons: dict[str, str], segmentation: bool,
            n_bootstrap: int, seed: int, progress: bool) -> dict:
    def compute(current: dict[str, pd.DataFrame]) -> dict:
        result = {"classification": compute_metrics(current["grading"], reasons)}
        if segmentation:
            result["segmentation"] = segmentation_metrics(current["vertebrae"], current["extra"], current.get("naming"))
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
