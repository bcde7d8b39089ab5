"""Genant's semi-quantitative grade from vertebral body heights. The one implementation used everywhere
(phantom ground truth, morphometry at prediction time, evaluation).

Height reduction = 1 - min(heights) / max(heights) over the anterior, middle and posterior body heights:
< 20 % -> G0 (normal), 20-25 % -> G1 (mild), 25-40 % -> G2 (moderate), >= 40 % -> G3 (severe)
(Genant et al. 1993; Pisov et al. 2020 use the same thresholds on G = min/max: mild <= 0.8, moderate <= 0.75,
severe <= 0.6).
"""
from __future__ import annotations

import math

GRADE_NAMES = ("G0", "G1", "G2", "G3")
# Where the heights are taken (Genant et al. 1993; the six points of quantitative morphometry sit at the corners of
# the body): anterior and posterior at the walls, middle at mid-depth, in the mid-sagittal plane. Corners are rounded,
# so each endplate is fitted by a quadratic along the depth across this central part of the body (fractions of the
# AP depth from the posterior wall) and the fit is evaluated at the walls. Phantom ground truth and morphometry
# share this definition.
ENDPLATE_FIT_DEPTH_FRACTIONS = (0.15, 0.85)
NUM_GRADES = 4
# Lower bounds of height reduction for G1, G2, G3.
REDUCTION_THRESHOLDS = (0.20, 0.25, 0.40)


def genant_ratio(anterior_mm: float, middle_mm: float, posterior_mm: float) -> float:
    """min / max of the three heights (1 = no deformity)."""
    heights = (float(anterior_mm), float(middle_mm), float(posterior_mm))
    if not all(math.isfinite(h) for h in heights) or min(heights) < 0 or max(heights) <= 0:
        raise ValueError(f"heights must be finite, non-negative and not all zero, got {heights}")
    return min(heights) / max(heights)


def grade_from_reduction(height_reduction: float) -> int:
    """Genant grade (0-3) from a height reduction in [0, 1]."""
    grade = 0
    for threshold in REDUCTION_THRESHOLDS:
        # round() guards against 0.2 becoming 0.19999999999999996 through 1 - 0.8
        if round(height_reduction, 12) >= threshold:
            grade += 1
    return grade


def grade_from_heights(anterior_mm: float, middle_mm: float, posterior_mm: float) -> int:
    return grade_from_reduction(1.0 - genant_ratio(anterior_mm, middle_mm, posterior_mm))


def morphology_from_heights(anterior_mm: float, middle_mm: float, posterior_mm: float) -> str:
    """'normal', 'wedge' (anterior lowest), 'biconcave' (middle lowest) or 'crush' (posterior lowest / all low)."""
    if grade_from_heights(anterior_mm, middle_mm, posterior_mm) == 0:
        return "normal"
    lowest = min((anterior_mm, "wedge"), (middle_mm, "biconcave"), (posterior_mm, "crush"))
    return lowest[1]
