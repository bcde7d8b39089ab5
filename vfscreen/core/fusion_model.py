"""The fusion model file (``fusion.json`` next to the grader folds): reading, validating and applying it.

The model (a logistic regression of the grader's P(fracture) and the measured Genant ratio, with validation
thresholds) is fitted by vfscreen.evaluation.fusion, which documents it; prediction applies it
(vfscreen.inference.screening).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

from vfscreen.core.model_folders import FUSION_FILE
from vfscreen.errors import ConfigError

SCHEMA_VERSION = 1
FEATURES = ("logit_p_fracture", "genant_ratio")
PROBABILITY_CLIP = 1e-6
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


def load_fusion(path: str | Path) -> dict:
    """Read and validate a fusion.json (ConfigError naming the file on any problem)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: fusion model missing (fit it with vfscreen_evaluate -d DATASET -c CONFIG --cv "
                          "--fit_fusion)")
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


def load_screening_model(grader_folder: Path) -> dict | None:
    """The grader folder's fusion model (validated; ConfigError if broken), or None when there is none."""
    path = Path(grader_folder) / FUSION_FILE
    return load_fusion(path) if path.is_file() else None
