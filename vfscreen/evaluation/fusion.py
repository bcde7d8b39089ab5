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
:func:`load_fusion` and applies :func:`fused_probability`; evaluation reports the fused score separately.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import sklearn
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from vfscreen.errors import ConfigError
from vfscreen.evaluation.metrics import youden_threshold
from vfscreen.utils.atomic import atomic_write_json

FUSION_FILE = "fusion.json"
SCHEMA_VERSION = 1
FEATURES = ("logit_p_fracture", "genant_ratio")
PROBABILITY_CLIP = 1e-6
REGULARIZATION_C = 1.0
THRESHOLD_METHODS = ("grader", "morphometry", "fused")
RATIO_RANGE_MARGIN = 0.05


def fusion_features(p_fracture: np.ndarray, genant_ratio: np.ndarray) -> np.ndarray:
    """(N, 2) feature matrix x = [logit(p), ratio] of N vertebrae (before standardisation)."""
    p_fracture = np.clip(np.asarray(p_fracture, dtype=float), PROBABILITY_CLIP, 1.0 - PROBABILITY_CLIP)
    return np.column_stack([np.log(p_fracture / (1.0 - p_fracture)), np.asarray(genant_ratio, dtype=float)])


def _classifier(model: dict) -> LogisticRegression:
    classifier = LogisticRegression()
    classifier.coef_ = np.asarray([model["coefficients"]], dtype=float)
    classifier.intercept_ = np.asarray([model["intercept"]], dtype=float)
    classifier.classes_ = np.asarray([0, 1])
    classifier.n_features_in_ = len(FEATURES)
    return classifier


def ratio_usable(model: dict, genant_ratio: np.ndarray) -> np.ndarray:
    """(N,) bool: the ratio is measured and within the fitted range (+- RATIO_RANGE_MARGIN; models without a stored
    range accept any measured ratio)."""
    genant_ratio = np.asarray(genant_ratio, dtype=float)
    usable = np.isfinite(genant_ratio)
    if model.get("genant_ratio_range") is not None:
        low, high = model["genant_ratio_range"]
        with np.errstate(invalid="ignore"):
            usable &= (genant_ratio >= low - RATIO_RANGE_MARGIN) & (genant_ratio <= high + RATIO_RANGE_MARGIN)
    return usable


def fused_probability(model: dict, p_fracture: np.ndarray, genant_ratio: np.ndarray) -> np.ndarray:
    """Fused P(fracture) of N vertebrae; the grader's p where the ratio is missing (NaN) or outside the fitted
    range (:func:`ratio_usable`)."""
    p_fracture = np.asarray(p_fracture, dtype=float)
    genant_ratio = np.asarray(genant_ratio, dtype=float)
    fused = p_fracture.copy()
    measured = ratio_usable(model, genant_ratio) & np.isfinite(p_fracture)
    if measured.any():
        features = fusion_features(p_fracture[measured], genant_ratio[measured])
        standardised = (features - np.asarray(model["feature_mean"])) / np.asarray(model["feature_scale"])
        fused[measured] = _classifier(model).predict_proba(standardised)[:, 1]
    return fused


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


def load_fusion(path: str | Path) -> dict:
    """Read and validate a fusion.json (ConfigError naming the file on any problem)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: fusion model missing (fit it with vfscreen_evaluate -d DATASET -c CONFIG --cv "
                          "--fit-fusion)")
    try:
        model = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not valid JSON ({error})") from None
    return validate_fusion(model, path)


def validate_fusion(model, source="fusion model") -> dict:
    if not isinstance(model, dict) or model.get("kind") != "vfscreen_fusion":
        raise ConfigError(f"{source}: not a vfscreen fusion model (\"kind\" must be \"vfscreen_fusion\")")
    if model.get("schema_version") != SCHEMA_VERSION:
        raise ConfigError(f"{source}: schema_version {model.get('schema_version')!r}, expected {SCHEMA_VERSION}")
    def numbers(key):
        values = model.get(key)
        return isinstance(values, list) and len(values) == len(FEATURES) and \
            all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)

    if (not all(numbers(key) for key in ("coefficients", "feature_mean", "feature_scale"))
            or not all(v > 0 for v in model["feature_scale"])
            or not isinstance(model.get("intercept"), (int, float)) or model.get("features") != list(FEATURES)):
        raise ConfigError(f"{source}: needs features {list(FEATURES)} and {len(FEATURES)} numbers each for "
                          "coefficients, feature_mean and feature_scale (> 0), and a numeric intercept")
    ratio_range = model.get("genant_ratio_range")
    if ratio_range is not None and not (isinstance(ratio_range, list) and len(ratio_range) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in ratio_range)
                                        and ratio_range[0] <= ratio_range[1]):
        raise ConfigError(f"{source}: \"genant_ratio_range\" must be [low, high] with low <= high")
    thresholds = model.get("thresholds", {})
    if not isinstance(thresholds, dict) or not all(v is None or isinstance(v, (int, float))
                                                    for v in thresholds.values()):
        raise ConfigError(f"{source}: \"thresholds\" must map method names to numbers or null")
    return model


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
