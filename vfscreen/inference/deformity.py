"""What the measured heights mean: Genant grade with its uncertainty, the neighbour rule, and trabecular density.

- **Within the vertebra** (wedge, biconcave): height reduction 1 - min/max of its own anterior, middle and posterior
  heights (:mod:`vfscreen.genant`).
- **Against its neighbours** (crush: all three heights down together, invisible to min/max): 1 - max(own heights) /
  the height expected from the intact vertebrae directly above and below (the mean of their largest heights, which
  follows the normal caudal growth of the bodies linearly). Genant's semi-quantitative method reads each body
  against its neighbours (Genant et al., J Bone Miner Res 1993). Needs intact (within-grade G0) measured neighbours
  on both sides; otherwise the rule is not applicable and says so.
- The morphometric grade uses the larger reduction and names the rule that decided.
- **Uncertainty**: each height's standard deviation (vfscreen.inference.morphometry) gives a 95 % interval
  (+-1.96 sd); the ratio interval is min/max evaluated at the interval ends; a grade whose interval reaches into a
  neighbouring Genant band is ``borderline``.
- **Trabecular density**: median HU of the body eroded away from the cortex (vfscreen.inference.morphometry), flagged
  at L1 (else the nearest measured lumbar level, then T12) when at or below the L1 threshold of Pickhardt et al.
  (Ann Intern Med 2013;158:588-595) for identifying osteoporosis at routine abdominal CT.
"""
from __future__ import annotations

import numpy as np

from vfscreen.genant import grade_from_reduction, morphology_from_heights
from vfscreen.labels import NAME_TO_VERSE, spine_position

Z_95 = 1.96
LOW_DENSITY_L1_HU = 160.0  # Pickhardt et al. 2013: L1 trabecular attenuation threshold (<= 160 HU)
DENSITY_LEVELS = ("L1", "L2", "T12", "L3", "L4", "T11", "L5")  # L1, else the nearest measured level
MAX_TRABECULAR_HU = 1500.0  # a trabecular median above this is metal / contrast / not bone: not reported


def ratio_interval(heights: dict, sds: dict) -> tuple[float, float]:
    """95 % interval of min/max from the heights' 95 % intervals (the ratio at the interval ends)."""
    values = np.array([heights[name] for name in ("anterior", "middle", "posterior")], dtype=float)
    margins = Z_95 * np.array([sds[name] for name in ("anterior", "middle", "posterior")], dtype=float)
    low = np.maximum(values - margins, 0.0)
    high = values + margins
    ratio_low = float(low.min() / high.max())
    ratio_high = float(min(1.0, high.min() / max(low.max(), 1e-6)))
    return round(ratio_low, 4), round(ratio_high, 4)


def neighbour_reduction(label: int, measured: dict) -> tuple[float | None, str]:
    """(1 - max(own) / expected, '') or (None, why the rule does not apply). ``measured``: VerSe id ->
    VertebraMorphometry (heights_mm set where measured)."""
    own = measured[label]
    above = [other for other in measured if spine_position(other) == spine_position(label) - 1]
    below = [other for other in measured if spine_position(other) == spine_position(label) + 1]
    intact = []
    for side in (above, below):
        neighbour = measured[side[0]] if side else None
        if neighbour is None or neighbour.heights_mm is None:
            return None, "neighbour rule not applicable: needs measured vertebrae directly above and below"
        if grade_from_reduction(1.0 - neighbour.genant_ratio) > 0:
            return None, "neighbour rule not applicable: a neighbour is itself deformed"
        intact.append(max(neighbour.heights_mm.values()))
    expected = float(np.mean(intact))
    return round(max(0.0, 1.0 - max(own.heights_mm.values()) / expected), 4), ""


def assess(measured: dict) -> None:
    """Fill ``deformity``, ``ratio_interval``, ``borderline`` and the final ``morph_grade`` of every measured
    vertebra (in place), and return nothing."""
    for label, vertebra in measured.items():
        if vertebra.heights_mm is None:
            continue
        heights = vertebra.heights_mm
        within = round(1.0 - vertebra.genant_ratio, 4)
        versus, why_not = neighbour_reduction(label, measured)
        rule = "vs_neighbours" if versus is not None and versus > within else "within"
        reduction = versus if rule == "vs_neighbours" else within
        grade = grade_from_reduction(reduction)
        if grade == 0:
            kind = "normal"
        elif rule == "vs_neighbours":
            kind = "crush"
        else:
            kind = morphology_from_heights(heights["anterior"], heights["middle"], heights["posterior"])
        low, high = ratio_interval(heights, vertebra.height_sd_mm)
        grade_range = sorted({grade_from_reduction(1.0 - high), grade_from_reduction(1.0 - low), grade})
        vertebra.ratio_interval = (low, high)
        vertebra.borderline = grade_range[0] != grade_range[-1]
        vertebra.morph_grade = grade
        vertebra.deformity = {"within": within, "vs_neighbours": versus, "rule": rule, "type": kind,
                              "grade_range": [grade_range[0], grade_range[-1]],
                              "note": why_not}


def undecidable_g1_note(measured: dict) -> str:
    """One case-level sentence when the voxel size along the spine makes mild (G1) deformities undecidable: the
    median 95 % ratio interval is wider than the G1 band (20-25 % reduction)."""
    widths = [vertebra.ratio_interval[1] - vertebra.ratio_interval[0] for vertebra in measured.values()
              if getattr(vertebra, "ratio_interval", None) is not None]
    if widths and float(np.median(widths)) > 0.05:
        return (f"the voxel size along the spine makes mild (G1) deformities undecidable here: the median 95 % "
                f"interval of the height ratio is {float(np.median(widths)):.2f} wide, the G1 band 0.05")
    return ""


def density_screen(measured: dict) -> dict | None:
    """{'level', 'trabecular_hu', 'threshold_hu', 'low_density', 'source'} at L1 or the nearest measured level, or
    None when no lumbar / lower-thoracic body has a density."""
    for name in DENSITY_LEVELS:
        vertebra = measured.get(NAME_TO_VERSE[name])
        hu = None if vertebra is None else vertebra.trabecular_hu
        if hu is not None:
            return {"level": name, "trabecular_hu": round(float(hu), 1), "threshold_hu": LOW_DENSITY_L1_HU,
                    "low_density": bool(hu <= LOW_DENSITY_L1_HU),
                    "source": "Pickhardt et al., Ann Intern Med 2013 (L1 threshold; contrast-enhanced scans may read "
                              "higher)" + ("" if name == "L1" else f"; measured at {name}, L1 not available")}
    return None


def vertebra_fields(vertebra) -> dict:
    """The JSON fields of one vertebra's morphometry beyond heights / ratio / grade (None where not measured;
    ``vertebra`` None: nothing reported, e.g. an implausible component)."""
    if vertebra is None:
        return {"heights_95_mm": None, "genant_ratio_interval": None, "morph_borderline": None, "deformity": None,
                "trabecular_hu": None, "density_note": "", "endplates_from_ct": None}
    measured = vertebra.heights_mm is not None and vertebra.deformity is not None
    return {
        "heights_95_mm": {name: round(Z_95 * sd, 2) for name, sd in vertebra.height_sd_mm.items()}
        if measured else None,
        "genant_ratio_interval": list(vertebra.ratio_interval) if measured else None,
        "morph_borderline": bool(vertebra.borderline) if measured else None,
        "deformity": dict(vertebra.deformity) if measured else None,
        "trabecular_hu": vertebra.trabecular_hu,
        "density_note": vertebra.density_note,
        # share of the height end points moved onto the CT's own endplate edges (None: measured on the mask alone)
        "endplates_from_ct": vertebra.extra.get("edges_from_ct") if measured else None,
    }


def case_fields(measured: dict) -> dict:
    """The patient-level morphometry block: the density screen and the case's one resolution note."""
    return {"density": density_screen(measured), "note": undecidable_g1_note(measured)}
