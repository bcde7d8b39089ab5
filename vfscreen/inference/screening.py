"""The screening decision of prediction: which vertebrae are flagged as suspected fractures.

The 4-grade ``grade`` of a vertebra is the argmax of the fold ensemble's mean probabilities (the paper's rule). Argmax
is a poor screening rule when fractures are rarer than at training time or the grader is under-confident: a
vertebra with P(fracture) = 0.4 is then "G0" although it deserves a look. So prediction flags a vertebra as
*suspected* with the operating point chosen on validation data when the model has one:

1. ``fusion.json`` next to the grader folds (``vfscreen_evaluate -d D -c C --cv --fit_fusion``; the demo fits it) has
   a fused score (logistic model of the grader's P(fracture) and the measured Genant ratio, see
   :mod:`vfscreen.evaluation.fusion`, applied with vfscreen.core.fusion_model) and Youden thresholds: suspected = fused P >= threshold_fused (the grader's P
   against threshold_grader where the ratio was not measured or lies outside the range the model was fitted on -
   then the vertebra's note says so);
2. without it: suspected = argmax grade > 0.

Vertebrae that were not graded (cut by the field of view) are never flagged (``suspected`` = None).
"""
from __future__ import annotations

import numpy as np

from vfscreen.core.fusion_model import fused_probability, ratio_usable

OUT_OF_RANGE_NOTE = ("Genant ratio outside the range the fusion model was fitted on (a measurement failure?): "
                     "screened by the grader alone")
RULE_ARGMAX = "argmax grade > 0 (no fusion.json with validation thresholds next to the grader)"


def describe_rule(fusion: dict | None) -> dict:
    """What the JSON's model.screening says about the rule used."""
    if fusion is None:
        return {"rule": RULE_ARGMAX}
    thresholds = fusion.get("thresholds", {})
    return {"rule": "fused P(fracture) >= threshold_fused (grader P(fracture) >= threshold_grader where the Genant "
                    "ratio is not measured); thresholds by Youden's J on validation predictions",
            "threshold_fused": thresholds.get("fused"), "threshold_grader": thresholds.get("grader"),
            "fitted_on": fusion.get("fitted_on", {})}


def screen(vertebrae: list[dict], fusion: dict | None) -> None:
    """Add ``p_fracture_fused`` and ``suspected`` to every vertebra dict (in place; needs grade, p_fracture and
    genant_ratio). Graded vertebrae only; the others get None for both."""
    graded = [v for v in vertebrae if v["grade"] is not None]
    for vertebra in vertebrae:
        vertebra["p_fracture_fused"] = None
        vertebra["suspected"] = None
    if not graded:
        return
    if fusion is None:
        for vertebra in graded:
            vertebra["suspected"] = vertebra["grade"] > 0
        return
    p_fracture = np.array([v["p_fracture"] for v in graded], dtype=float)  # (N,)
    ratio = np.array([np.nan if v["genant_ratio"] is None else v["genant_ratio"] for v in graded], dtype=float)
    fused = fused_probability(fusion, p_fracture, ratio)  # (N,); the grader's p where the ratio is not usable
    thresholds = fusion.get("thresholds", {})
    usable = ratio_usable(fusion, ratio)  # (N,)
    for vertebra, fused_p, measured, out_of_range in zip(graded, fused, usable, np.isfinite(ratio) & ~usable):
        if out_of_range:
            vertebra["note"] = "; ".join(filter(None, [vertebra["note"], OUT_OF_RANGE_NOTE]))
        score, threshold = (fused_p, thresholds.get("fused")) if measured else \
            (vertebra["p_fracture"], thresholds.get("grader"))
        vertebra["p_fracture_fused"] = round(float(fused_p), 6) if measured else None
        vertebra["suspected"] = bool(score >= threshold) if threshold is not None else vertebra["grade"] > 0
