"""Fusion of the learned grade probabilities with the morphometric Genant ratio, and validation thresholds.

Model (documented, deliberately small): a logistic regression (scikit-learn ``LogisticRegression``, L2, C = 1) on
standardised features (scikit-learn ``StandardScaler``; the mean and scale are stored with the coefficients)

    P_fused(fracture) = sigmoid(w1 * z1 + w2 * z2 + b),   z = (x - feature_mean) / feature_scale,
    x = (logit(p), r)

with p = the grader's P(fracture) = 1 - P(G0) (clipped to [1e-6, 1 - 1e-6]) and r = genant_ratio = min/max of the
anterior/middle/posterior body heights measured by vfscreen's morphometry. Standardising makes the L2 penalty treat
both inputs alike (r varies over a few tenths, logit(p) over several units). It is fitted on the grader's
*validation* predictions of the training folds (cross-validation, never on test cases) for the binary target
G1-G3 vs G0. Where the ratio is not measured (a truncated vertebra), or lies more than ``RATIO_RANGE_MARGIN`` outside
the range of the ratios the model was fitted on (``genant_ratio_range``; a failed segmentation can measure 0.08 where
no vertebra is that flat, and a logistic model must not extrapolate there), the fused probability is the grader's p.

The same fit stores decision thresholds chosen on the same validation predictions by Youden's J (maximum of
sensitivity + specificity - 1) for the grader's p, for the morphometric height reduction 1 - r and for the fused
probability (decision: score >= threshold).

Stored as JSON (coefficients, not a pickle) next to the grader folds:
``nnUNet_results/<Dataset>/vfscreen_grader__<plans>__<configuration>/fusion.json``; prediction loads it with
vfscreen.core.fusion_model.load_fusion and applies its fused_probability; evaluation reports the fused score separately.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import sklearn
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from vfscreen.core.fusion_model import FEATURES, PROBABILITY_CLIP, SCHEMA_VERSION, fused_probability, fusion_features
from vfscreen.errors import ConfigError
from vfscreen.evaluation.metrics import youden_threshold
from vfscreen.utils.atomic import atomic_write_json

REGULARIZATION_C = 1.0
THRESHOLD_METHODS = ("grader", "morphometry", "fused")


def fit_fusion(true_grades: np.ndarray, p_fracture: np.ndarray, genant_ratio: np.ndarray,
               fitted_on: dict | None = None) -> dict:
    """Fit the fusion model and the Youden thresholds on validation predictions; returns the JSON-able model.

    Raises ConfigError when the validation predictions cannot support a fit (no measured ratio, one class only).
    """
    is_fractured = np.asarray(true_grades, dtype=int) > 0
    p_fracture = np.asarray(p_fracture, dtype=float)
    genant_ratio = np.asarray(genant_ratio, dtype=float)
    measured = np.isfinite(genant_ratio) & np.isfinite(p_fracture)
    positives = int(is_fractured[measured].sum())
    negatives = int(measured.sum()) - positives
    if positives == 0 or negatives == 0:
        raise ConfigError(f"cannot fit the fusion model: the validation predictions have {positives} fractured and "
                          f"{negatives} non-fractured vertebrae with a measured Genant ratio (both are needed)")
    features = fusion_features(p_fracture[measured], genant_ratio[measured])
    scaler = StandardScaler().fit(features)
    classifier = LogisticRegression(C=REGULARIZATION_C)
    classifier.fit(scaler.transform(features), is_fractured[measured])
    model = {"schema_version": SCHEMA_VERSION, "kind": "vfscreen_fusion", "model": "logistic_regression",
             "features": list(FEATURES), "feature_mean": [float(v) for v in scaler.mean_],
             "feature_scale": [float(v) for v in scaler.scale_],
             "coefficients": [float(c) for c in classifier.coef_[0]],
             "intercept": float(classifier.intercept_[0]), "regularization_C": REGULARIZATION_C,
             "probability_clip": PROBABILITY_CLIP, "sklearn_version": sklearn.__version__,
             "num_vertebrae": int(measured.sum()), "num_fractured": positives,
             "genant_ratio_range": [float(genant_ratio[measured].min()), float(genant_ratio[measured].max())]}
    fused = fused_probability(model, p_fracture, genant_ratio)
    scores = {"grader": p_fracture, "morphometry": 1.0 - np.where(np.isfinite(genant_ratio), genant_ratio, 1.0),
              "fused": fused}
    model["thresholds"] = {method: youden_threshold(is_fractured, scores[method]) for method in THRESHOLD_METHODS}
    model["threshold_rule"] = "Youden's J on the validation predictions; fracture when score >= threshold " \
                              "(grader: P(fracture); morphometry: 1 - genant_ratio; fused: fused P(fracture))"
    model["fitted_on"] = dict(fitted_on or {})
    return model


def save_fusion(model: dict, path: str | Path) -> Path:
    path = Path(path)
    atomic_write_json(path, model)
    return path


def cross_fitted(true_grades: np.ndarray, p_fracture: np.ndarray, genant_ratio: np.ndarray,
                 folds: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Cross-validation without leakage: for the vertebrae of each fold, the fusion model and the thresholds are
    fitted on the OTHER folds' validation predictions. Returns ({"score_fused", "threshold_grader",
    "threshold_morph", "threshold_fused"} -> (N,) arrays; a column is all NaN when it could not be fitted for
    every fold) and {method or "threshold_<method>": reason} for what is unavailable."""
    true_grades = np.asarray(true_grades, dtype=int)
    p_fracture = np.asarray(p_fracture, dtype=float)
    genant_ratio = np.asarray(genant_ratio, dtype=float)
    folds = np.asarray(folds)
    columns = {"threshold_grader": "threshold_grader", "threshold_morph": "threshold_morphometry",
               "threshold_fused": "threshold_fused", "score_fused": "fused"}
    out = {name: np.full(len(folds), np.nan) for name in columns}
    unique_folds = sorted(set(folds.tolist()))
    if len(unique_folds) < 2:
        reason = "needs validation predictions of at least 2 folds (fitted on the other folds, applied to each)"
        return out, {reason_key: reason for reason_key in columns.values()}
    failures: dict[str, list[str]] = {name: [] for name in columns}
    for fold in unique_folds:
        this_fold, other = folds == fold, folds != fold
        is_fractured = true_grades[other] > 0
        ratio_other = genant_ratio[other]
        values = {"threshold_grader": youden_threshold(is_fractured, p_fracture[other])}
        if np.isfinite(ratio_other).any():
            values["threshold_morph"] = youden_threshold(is_fractured,
                                                         1.0 - np.where(np.isfinite(ratio_other), ratio_other, 1.0))
        try:
            model = fit_fusion(true_grades[other], p_fracture[other], ratio_other)
            values["score_fused"] = fused_probability(model, p_fracture[this_fold], genant_ratio[this_fold])
            values["threshold_fused"] = model["thresholds"]["fused"]
        except ConfigError as error:
            failures["score_fused"].append(f"fold {fold}: {str(error).split(': ', 1)[-1]}")
        for name in columns:
            if values.get(name) is None:
                if name != "score_fused":
                    failures[name].append(f"fold {fold}: one class only or no score in the other folds")
                continue
            out[name][this_fold] = values[name]
    reasons = {}
    for name, messages in failures.items():
        if messages:
            out[name][:] = np.nan
            reasons[columns[name]] = "cross-fitting failed for " + "; ".join(messages)
    if "fused" in reasons:
        reasons.setdefault("threshold_fused", reasons["fused"])
    return out, reasons
