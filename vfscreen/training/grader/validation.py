"""Vertebra-level validation metrics of the grader (scikit-learn) and the per-vertebra predictions table.

Binary: fracture (G1-G3) vs normal (G0); AUROC on p_fracture = 1 - p(G0), specificity/sensitivity of the predicted
grade (argmax) > 0. Multi-class: macro F1 / precision / recall over the Genant grades present in the reference
(a grade absent from the validation set cannot be scored), plus per-grade F1 and the 4x4 confusion matrix.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import (accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support,
                             roc_auc_score)

from vfscreen import labels
from vfscreen.genant import GRADE_NAMES, NUM_GRADES


def _ratio(numerator: int, denominator: int):
    return float(numerator / denominator) if denominator else None


def grading_metrics(true_grades: np.ndarray, probabilities: np.ndarray) -> dict:
    """true_grades: (N,) int 0-3; probabilities: (N, 4) softmax outputs. Returns a JSON-able dict."""
    true_grades = np.asarray(true_grades, dtype=int)
    probabilities = np.asarray(probabilities, dtype=float)
    predicted = probabilities.argmax(axis=1)
    p_fracture = 1.0 - probabilities[:, 0]
    true_fracture, predicted_fracture = true_grades > 0, predicted > 0
    tn, fp, fn, tp = confusion_matrix(true_fracture, predicted_fracture, labels=[False, True]).ravel()
    both_binary_classes = 0 < true_fracture.sum() < len(true_fracture)
    present = sorted(int(g) for g in np.unique(true_grades))
    precision, recall, f1, _ = precision_recall_fscore_support(true_grades, predicted, labels=present,
                                                               average="macro", zero_division=0)
    per_grade_f1 = f1_score(true_grades, predicted, labels=list(range(NUM_GRADES)), average=None, zero_division=0)
    return {
        "num_vertebrae": int(len(true_grades)),
        "vertebrae_per_grade": np.bincount(true_grades, minlength=NUM_GRADES).tolist(),
        "binary": {
            "auroc": float(roc_auc_score(true_fracture, p_fracture)) if both_binary_classes else None,
            "specificity": _ratio(tn, tn + fp),
            "sensitivity": _ratio(tp, tp + fn),
            "true_negative": int(tn), "false_positive": int(fp), "false_negative": int(fn), "true_positive": int(tp),
        },
        "multiclass": {
            "macro_f1": float(f1), "macro_precision": float(precision), "macro_recall": float(recall),
            "macro_over_grades": [GRADE_NAMES[g] for g in present],
            "accuracy": float(accuracy_score(true_grades, predicted)),
            "f1_per_grade": {GRADE_NAMES[g]: float(per_grade_f1[g]) for g in range(NUM_GRADES)},
            "confusion_matrix": confusion_matrix(true_grades, predicted, labels=list(range(NUM_GRADES))).tolist(),
            "confusion_matrix_axes": "rows: reference grade G0-G3, columns: predicted grade G0-G3",
        },
    }


def predictions_table(rows: pd.DataFrame, probabilities: np.ndarray) -> pd.DataFrame:
    """One row per validation vertebra: case_id, label (VerSe id), name, grade, predicted_grade, p_G0..p_G3,
    p_fracture, truncated."""
    probabilities = np.asarray(probabilities, dtype=float)
    table = pd.DataFrame({
        "case_id": rows["case_id"].to_numpy(),
        "label": rows["label"].astype(int).to_numpy(),
        "name": [labels.name_of(int(v)) for v in rows["label"]],
        "grade": rows["grade"].astype(int).to_numpy(),
        "predicted_grade": probabilities.argmax(axis=1),
    })
    for grade in range(NUM_GRADES):
        table[f"p_{GRADE_NAMES[grade]}"] = probabilities[:, grade].round(6)
    table["p_fracture"] = (1.0 - probabilities[:, 0]).round(6)
    table["truncated"] = rows["truncated"].astype(bool).to_numpy()
    return table
