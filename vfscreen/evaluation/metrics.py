"""Classification metrics of vfscreen's evaluation: the paper's Table I (binary G0 vs G1-G3 and 4-grade macro
scores), for the grader, the morphometric grade and the fused score, at vertebra and at patient level.

Every metric is a leaf ``{"value": float}`` or, when it is undefined on the data (e.g. AUROC with a single class
present), ``{"value": None, "reason": "..."}`` - never a crash and never a made-up number. scikit-learn computes
every metric it has (AUROC, recall = sensitivity/specificity, precision/recall/F1, confusion matrix, ROC curve).

Input of :func:`compute_metrics` is the *evaluation table*, one row per graded reference vertebra:

    case_id          patient / case (the bootstrap resamples these)
    grade            reference Genant grade 0-3
    matched          True when a predicted vertebra was matched to it; a missed vertebra is scored as predicted G0
                     with every fracture score 0 (it counts against the method)
    graded           True when the matched vertebra was graded by the grader (not graded, e.g. cut by the field of
                     view: scored as predicted G0 with P(fracture) 0 as well)
    predicted_grade  grader's argmax grade 0-3
    morph_grade      morphometric Genant grade 0-3 (NaN: not measured, e.g. truncated -> counted as G0)
    score_grader     grader's P(fracture) = 1 - P(G0)
    score_morph      morphometric height reduction 1 - genant_ratio (NaN: not measured -> 0)
    score_fused      fused P(fracture) (see vfscreen.evaluation.fusion; NaN: not available)
    threshold_grader, threshold_morph, threshold_fused
                     decision thresholds chosen on validation data (score >= threshold -> fracture); NaN: none
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score, roc_curve

GRADES = (0, 1, 2, 3)
# method -> (score column, threshold column)
METHODS = {
    "grader": ("score_grader", "threshold_grader"),
    "morphometry": ("score_morph", "threshold_morph"),
    "fused": ("score_fused", "threshold_fused"),
}
# Name of each method's own operating point (no validation data needed).
OWN_OPERATING_POINT = {"grader": "argmax", "morphometry": "genant_rule", "fused": "probability_0.5"}
FUSED_DEFAULT_THRESHOLD = 0.5


def defined(value: float) -> dict:
    return {"value": float(value)}


def undefined(reason: str) -> dict:
    return {"value": None, "reason": reason}


def is_metric(node) -> bool:
    return isinstance(node, dict) and "value" in node


def flatten_metrics(tree: dict, prefix: str = "") -> dict[str, dict]:
    """{'a.b.auroc': leaf, ...} for every metric leaf of a nested result (other entries are skipped)."""
    flat = {}
    for key, node in tree.items():
        name = f"{prefix}{key}"
        if is_metric(node):
            flat[name] = node
        elif isinstance(node, dict):
            flat.update(flatten_metrics(node, name + "."))
    return flat


# ---------------------------------------------------------------------------------------------------------------
# binary: fractured (G1-G3) vs not (G0)
# ---------------------------------------------------------------------------------------------------------------

def _class_counts(is_fractured: np.ndarray) -> tuple[int, int]:
    positives = int(np.count_nonzero(is_fractured))
    return positives, int(is_fractured.size) - positives


def auroc(is_fractured: np.ndarray, score: np.ndarray) -> dict:
    """Area under the ROC curve of ``score`` (higher = more likely fractured); undefined with one class present."""
    is_fractured = np.asarray(is_fractured, dtype=bool)
    score = np.asarray(score, dtype=float)
    positives, negatives = _class_counts(is_fractured)
    if is_fractured.size == 0:
        return undefined("no vertebrae to evaluate")
    if positives == 0 or negatives == 0:
        return undefined(f"AUROC is undefined with a single class present ({positives} fractured, "
                         f"{negatives} not fractured)")
    if not np.all(np.isfinite(score)):
        return undefined(f"score missing for {int(np.count_nonzero(~np.isfinite(score)))} vertebrae")
    return defined(roc_auc_score(is_fractured, score))


def sensitivity_specificity(is_fractured: np.ndarray, predicted_fractured: np.ndarray) -> dict:
    """{"sensitivity", "specificity", "counts": {tp, fp, tn, fn}} of a binary decision, from scikit-learn's
    confusion matrix: sensitivity = tp / (tp + fn) (recall of G1-G3), specificity = tn / (tn + fp) (recall of G0)."""
    is_fractured = np.asarray(is_fractured, dtype=bool)
    predicted_fractured = np.asarray(predicted_fractured, dtype=bool)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(is_fractured, predicted_fractured,
                                                       labels=[False, True]).ravel())
    return {
        "sensitivity": defined(tp / (tp + fn)) if tp + fn
        else undefined("sensitivity is undefined: no fractured (G1-G3) vertebra in the reference"),
        "specificity": defined(tn / (tn + fp)) if tn + fp
        else undefined("specificity is undefined: no G0 vertebra in the reference"),
        "counts": {"tp": tp, "fp": fp, "tn": tn, "fn": fn},
    }


def youden_threshold(is_fractured: np.ndarray, score: np.ndarray) -> float | None:
    """Threshold maximising Youden's J = sensitivity + specificity - 1 on the ROC curve (decision: score >=
    threshold). None when one class is absent or a score is missing. Ties: the highest such threshold."""
    is_fractured = np.asarray(is_fractured, dtype=bool)
    score = np.asarray(score, dtype=float)
    positives, negatives = _class_counts(is_fractured)
    if positives == 0 or negatives == 0 or not np.all(np.isfinite(score)):
        return None
    false_positive_rate, true_positive_rate, thresholds = roc_curve(is_fractured, score)
    youden = true_positive_rate - false_positive_rate
    candidates = np.flatnonzero(np.isfinite(thresholds))  # the first threshold is +inf (nothing positive)
    best = candidates[np.argmax(youden[candidates])]
    return float(thresholds[best])


# ---------------------------------------------------------------------------------------------------------------
# 4 grades
# ---------------------------------------------------------------------------------------------------------------

def four_grade_metrics(true_grades: np.ndarray, predicted_grades: np.ndarray) -> dict:
    """Macro F1 / precision / recall over the grades present in reference or prediction (scikit-learn's
    default label set; a grade never predicted has precision 0, a grade predicted but absent has recall 0), the
    4x4 confusion matrix (rows = reference grade, columns = predicted grade) and per-grade scores."""
    true_grades = np.asarray(true_grades, dtype=int)
    predicted_grades = np.asarray(predicted_grades, dtype=int)
    if true_grades.size == 0:
        return {name: undefined("no vertebrae to evaluate") for name in ("macro_f1", "macro_precision",
                                                                          "macro_recall")}
    present = sorted(set(true_grades.tolist()) | set(predicted_grades.tolist()))
    per_precision, per_recall, per_f1, support = precision_recall_fscore_support(
        true_grades, predicted_grades, labels=list(GRADES), average=None, zero_division=0.0)
    averaged = np.asarray(present)  # macro = unweighted mean over the averaged grades (scikit-learn's "macro")
    return {
        "macro_f1": defined(per_f1[averaged].mean()),
        "macro_precision": defined(per_precision[averaged].mean()),
        "macro_recall": defined(per_recall[averaged].mean()),
        "grades_averaged": present,
        "confusion_matrix": confusion_matrix(true_grades, predicted_grades, labels=list(GRADES)).tolist(),
        "per_grade": {f"G{grade}": {"precision": float(per_precision[i]), "recall": float(per_recall[i]),
                                    "f1": float(per_f1[i]), "support": int(support[i])}
                      for i, grade in enumerate(GRADES)},
    }


# ---------------------------------------------------------------------------------------------------------------
# the whole evaluation table
# ---------------------------------------------------------------------------------------------------------------

def _method_columns(table: pd.DataFrame, method: str) -> tuple[np.ndarray | None, str | None]:
    """The method's score per row with unmeasured matched rows set to 0, or (None, reason) if unavailable."""
    score_column, _ = METHODS[method]
    if score_column not in table.columns:
        return None, f"no {method} score in the predictions"
    score = table[score_column].to_numpy(dtype=float)
    matched = table["matched"].to_numpy(dtype=bool)
    if matched.any() and not np.isfinite(score[matched]).any():
        return None, f"no {method} score in the predictions"
    return np.where(np.isfinite(score), score, 0.0), None


def _own_decision(table: pd.DataFrame, method: str, score: np.ndarray) -> np.ndarray:
    if method == "grader":
        return table["predicted_grade"].to_numpy(dtype=int) > 0
    if method == "morphometry":
        return np.nan_to_num(table["morph_grade"].to_numpy(dtype=float), nan=0.0) > 0
    return score >= FUSED_DEFAULT_THRESHOLD


def _threshold_decision(table: pd.DataFrame, method: str, score: np.ndarray) -> tuple[np.ndarray | None, str]:
    _, threshold_column = METHODS[method]
    if threshold_column not in table.columns:
        return None, f"no validation threshold for the {method} score"
    thresholds = table[threshold_column].to_numpy(dtype=float)
    if not np.all(np.isfinite(thresholds)):
        return None, f"no validation threshold for the {method} score of {int(np.sum(~np.isfinite(thresholds)))} " \
                     "vertebrae"
    return score >= thresholds, ""


def _binary_block(is_fractured, score, own_decision, threshold_decision, own_name, threshold_reason) -> dict:
    block = {"auroc": auroc(is_fractured, score), own_name: sensitivity_specificity(is_fractured, own_decision)}
    if threshold_decision is None:
        block["validation_threshold"] = {"sensitivity": undefined(threshold_reason),
                                         "specificity": undefined(threshold_reason)}
    else:
        block["validation_threshold"] = sensitivity_specificity(is_fractured, threshold_decision)
    return block


def _unavailable_block(reason: str, own_name: str) -> dict:
    pair = {"sensitivity": undefined(reason), "specificity": undefined(reason)}
    return {"auroc": undefined(reason), own_name: dict(pair), "validation_threshold": dict(pair)}


def compute_metrics(table: pd.DataFrame, reasons: dict[str, str] | None = None) -> dict:
    """All classification metrics of an evaluation table (see the module docstring).

    ``reasons`` may map a method name to the reason it is unavailable, or ``"threshold_<method>"`` to the reason its
    validation threshold is missing; they replace the generic reasons in the output.
    """
    reasons = reasons or {}
    if table.empty:
        return {"vertebra": {m: _unavailable_block("no graded vertebrae", OWN_OPERATING_POINT[m]) for m in METHODS},
                "patient": {m: _unavailable_block("no graded vertebrae", OWN_OPERATING_POINT[m]) for m in METHODS},
                "num_vertebrae": 0, "num_patients": 0}
    true_grades = table["grade"].to_numpy(dtype=int)
    vertebra_fractured = true_grades > 0
    case_codes, _ = pd.factorize(table["case_id"])
    num_patients = int(case_codes.max()) + 1
    patient_fractured = np.zeros(num_patients, dtype=bool)
    np.logical_or.at(patient_fractured, case_codes, vertebra_fractured)

    def per_patient_max(values: np.ndarray) -> np.ndarray:
        out = np.full(num_patients, -np.inf)
        np.maximum.at(out, case_codes, values.astype(float))
        return out

    result = {"vertebra": {}, "patient": {}, "num_vertebrae": int(len(table)), "num_patients": num_patients,
              "num_fractured_vertebrae": int(vertebra_fractured.sum()),
              "num_fractured_patients": int(patient_fractured.sum())}
    for method in METHODS:
        own_name = OWN_OPERATING_POINT[method]
        score, reason = _method_columns(table, method)
        if score is None:
            reason = reasons.get(method, reason)
            result["vertebra"][method] = _unavailable_block(reason, own_name)
            result["patient"][method] = _unavailable_block(reason, own_name)
            continue
        own = _own_decision(table, method, score)
        at_threshold, threshold_reason = _threshold_decision(table, method, score)
        threshold_reason = reasons.get(f"threshold_{method}", threshold_reason)
        result["vertebra"][method] = _binary_block(vertebra_fractured, score, own, at_threshold, own_name,
                                                   threshold_reason)
        # patient level = worst vertebra: highest score, fractured if any vertebra is called fractured
        result["patient"][method] = _binary_block(
            patient_fractured, per_patient_max(score), per_patient_max(own) > 0,
            None if at_threshold is None else per_patient_max(at_threshold) > 0, own_name, threshold_reason)
    result["vertebra"]["grader"]["four_grades"] = four_grade_metrics(true_grades, table["predicted_grade"])
    if "morph_grade" in table.columns and _method_columns(table, "morphometry")[0] is not None:
        morph = np.nan_to_num(table["morph_grade"].to_numpy(dtype=float), nan=0.0).astype(int)
        result["vertebra"]["morphometry"]["four_grades"] = four_grade_metrics(true_grades, morph)
    return result


def metric_value(node: dict) -> float | None:
    value = node.get("value") if is_metric(node) else None
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value
