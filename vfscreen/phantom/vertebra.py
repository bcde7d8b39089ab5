"""One vertebra of the phantom: its local frame, body shape, Genant heights, natural variation and fractures.

Local frame (millimetres, origin = vertebral body centre): u = lateral (patient left), v = anterior, w = superior.
The body is a superellipse cross-section (semi-axes ``half_width`` x ``half_depth`` at mid-height, flatter
posteriorly, slightly waisted) between a top and a bottom endplate surface. The body height along w at the
mid-sagittal plane (u = 0) is a smooth function of the normalised AP position nu = v / half_depth.

Genant heights are measured, by definition (Genant et al. 1993; the six points of quantitative morphometry sit at the
corners of the body), in the mid-sagittal plane at the anterior wall (nu = +1), the middle (nu = 0) and the
posterior wall (nu = -1) of the mid-height AP depth, along the superior axis, between the endplate surfaces; corners
being rounded, each endplate is fitted across the central part of the depth and the fit is evaluated at the walls
(vfscreen.genant.ENDPLATE_FIT_DEPTH_FRACTIONS, the definition morphometry uses). The generator reports these heights from the final surfaces (endplate irregularity included), and the ground
truth grade is :func:`vfscreen.genant.grade_from_heights` of them - never the intended grade.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vfscreen import genant

MEASURE_NU = (1.0, 0.0, -1.0)  # anterior wall, middle, posterior wall (fraction of the half depth)
MORPHOLOGIES = ("wedge", "biconcave", "crush")
MORPHOLOGY_PROBABILITIES = (0.5, 0.3, 0.2)
# Height-reduction bands (1 - min/max) sampled for intended fracture grades 1-3.
# Final height reductions within this distance of a Genant threshold are re-drawn: the ground truth must be
# re-measurable from a label mask (a 0.5 mm voxel moves a 20 mm height by ~0.5 %), so no vertebra sits exactly on a
# border. Healthy vertebrae still reach ~19 % and mild fractures start at ~21 %: the faint G0/G1 border remains.
THRESHOLD_MARGIN = 0.01
MAX_SURFACE_DEFICIT = 0.44  # fraction of H0 one endplate may lose
FRACTURE_REDUCTION_BANDS = {1: (0.20, 0.25), 2: (0.25, 0.40), 3: (0.40, 0.62)}


@dataclass
class Vertebra:
    verse_id: int
    name: str
    level: float  # anatomical level coordinate (C1 = 0, T1 = 7, L1 = 19, L5 = 23) used for size tables
    centre: np.ndarray  # (3,) world mm (LPS)
    axes: np.ndarray  # (3, 3) rows = lateral, anterior, superior unit vectors in world coordinates
    nominal_height: float  # H0, mm: the undeformed body height
    half_width: float
    half_depth: float
    waist: float  # relative widening of the cross-section at the endplates
    exponent_anterior: float
    exponent_posterior: float
    shell_mm: float  # cortical shell thickness
    top_fraction: float  # share of the height deficit taken by the upper endplate
    intended_heights: tuple[float, float, float]  # (anterior, middle, posterior) before endplate irregularity
    dish: bool  # deficit also concave laterally (biconcave fractures)
    bump_amplitudes: np.ndarray  # (2, K) endplate irregularity, top and bottom surface, mm
    bump_frequencies: np.ndarray  # (2, K, 2) cycles across (u / half_width, nu)
    bump_phases: np.ndarray  # (2, K)
    canal_half_width: float
    canal_half_depth: float
    arch_thickness: float
    spinous_length: float
    spinous_angle_deg: float  # downward slope of the spinous process
    spinous_half_height: float
    transverse_length: float
    transverse_angle_deg: float  # posterior sweep of the transverse processes
    cortical_hu: float
    cancellous_hu: float
    intended_grade: int = 0
    intended_morphology: str = "normal"
    sclerosis_hu: float = 0.0  # condensation band under a fractured endplate
    heights: tuple[float, float, float] = field(default=(0.0, 0.0, 0.0))  # final reported heights (mm)
    # degenerative spurs at the anterolateral endplate rims: (u / half_width (|.| >= 0.3), rim +1 top / -1 bottom,
    # length mm, radius mm); never on the mid-sagittal measurement lines
    osteophytes: list = field(default_factory=list)

    # ----------------------------------------------------------------------------------------------- geometry
    def canal_centre_v(self) -> float:
        return -self.half_depth - self.canal_half_depth

    def arch_centre_w(self) -> float:
        return 0.12 * self.nominal_height

    def height_profile(self, nu: np.ndarray) -> np.ndarray:
        """Intended body height along the AP axis (mid-sagittal), quadratic through the three intended heights."""
        anterior, middle, posterior = self.intended_heights
        m = MEASURE_NU[0]
        linear = (anterior - posterior) / (2 * m)
        quadratic = ((anterior + posterior) / 2 - middle) / m ** 2
        return middle + linear * nu + quadratic * nu ** 2

    def surfaces(self, u: np.ndarray, nu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top and bottom endplate heights w (mm) at lateral position u (mm) and normalised AP position nu."""
        h0 = self.nominal_height
        deficit = np.clip(h0 - self.height_profile(np.clip(nu, -1.0, 1.0)), 0.0, 0.85 * h0)
        if self.dish:  # concave laterally too, flat near the mid-sagittal plane
            deficit = deficit * np.sqrt(np.clip(1.0 - (u / self.half_width) ** 4, 0.0, 1.0))
        # each endplate keeps >= 6 % of H0 on its side of the mid-plane, so the mid-height AP line stays inside
        top_deficit = np.clip(self.top_fraction * deficit, deficit - MAX_SURFACE_DEFICIT * h0,
                              MAX_SURFACE_DEFICIT * h0)
        top = h0 / 2 - top_deficit + self._bumps(0, u, nu)
        bottom = -h0 / 2 + (deficit - top_deficit) - self._bumps(1, u, nu)
        return top, bottom

    def _bumps(self, which: int, u, nu):
        result = 0.0
        for amplitude, (fu, fnu), phase in zip(self.bump_amplitudes[which], self.bump_frequencies[which],
                                                self.bump_phases[which]):
            result = result + amplitude * np.cos(2 * np.pi * (fu * u / self.half_width + fnu * nu) + phase)
        return result

    def measure_heights(self) -> tuple[float, float, float]:
        """Genant heights (mm) of the final surfaces in the mid-sagittal plane: each endplate fitted by a quadratic
        across the central part of the depth (vfscreen.genant.ENDPLATE_FIT_DEPTH_FRACTIONS) and evaluated at the
        walls; the middle height between the surfaces themselves."""
        low, high = genant.ENDPLATE_FIT_DEPTH_FRACTIONS
        nu = np.linspace(2 * low - 1, 2 * high - 1, 57)
        top, bottom = self.surfaces(np.zeros_like(nu), nu)
        walls = np.array([MEASURE_NU[0], MEASURE_NU[2]])
        fitted = np.polyval(np.polyfit(nu, top, 2), walls) - np.polyval(np.polyfit(nu, bottom, 2), walls)
        middle_top, middle_bottom = self.surfaces(np.zeros(1), np.zeros(1))
        return float(fitted[0]), float(middle_top[0] - middle_bottom[0]), float(fitted[1])

    @property
    def grade(self) -> int:
        return genant.grade_from_heights(*self.heights)

    @property
    def morphology(self) -> str:
        return genant.morphology_from_heights(*self.heights)


def near_threshold(heights) -> bool:
    reduction = 1.0 - genant.genant_ratio(*heights)
    return any(abs(reduction - threshold) < THRESHOLD_MARGIN for threshold in genant.REDUCTION_THRESHOLDS)


def normal_heights(rng: np.random.Generator, level: float, nominal_height: float) -> tuple[float, float, float]:
    """Natural variation of a healthy body: thoracic wedging (up to ~15 %, rarely up to 19 %), lower posterior
    height at L4/L5, slight central endplate concavity. Some healthy vertebrae come close to the G1 border."""
    anterior = posterior = nominal_height
    if 7 <= level < 19:  # thoracic: anterior wedging, strongest mid-thoracic
        peak = 1.0 - min(abs(level - 13.0) / 7.0, 1.0) * 0.5
        wedging = rng.uniform(0.0, 0.15 * peak) if rng.random() > 0.12 else rng.uniform(0.15, 0.195)
        anterior = nominal_height * (1.0 - wedging)
    elif level >= 21.5:  # lower lumbar: posterior slightly lower
        posterior = nominal_height * (1.0 - rng.uniform(0.0, 0.12))
    else:
        anterior = nominal_height * (1.0 - rng.uniform(0.0, 0.06))
    concavity = rng.uniform(0.0, 0.08) if rng.random() > 0.1 else rng.uniform(0.08, 0.17)
    middle = max(anterior, posterior) * (1.0 - concavity)
    return anterior, middle, posterior


def fracture_heights(rng: np.random.Generator, grade: int, morphology: str,
                     nominal_height: float) -> tuple[float, float, float]:
    """Heights of a fracture whose height reduction 1 - min/max lies in the band of ``grade``."""
    low, high = FRACTURE_REDUCTION_BANDS[grade]
    reduction = rng.uniform(low, high)
    if morphology == "wedge":
        posterior = nominal_height * (1.0 - rng.uniform(0.0, 0.04))
        return posterior * (1 - reduction), posterior * (1 - reduction * rng.uniform(0.35, 0.65)), posterior
    if morphology == "biconcave":
        anterior = nominal_height * (1.0 - rng.uniform(0.0, 0.05))
        posterior = nominal_height * (1.0 - rng.uniform(0.0, 0.05))
        return anterior, max(anterior, posterior) * (1 - reduction), posterior
    if morphology == "crush":  # whole body compressed, posterior lowest
        anterior = nominal_height * rng.uniform(0.75, 0.92)
        return anterior, anterior * (1 - reduction * rng.uniform(0.0, 0.5)), anterior * (1 - reduction)
    raise ValueError(f"unknown fracture morphology {morphology!r}")


def endplate_irregularity(rng: np.random.Generator, amplitude_mm: float, num_waves: int = 3):
    """Random smooth endplate bumps: (amplitudes (2, K), frequencies (2, K, 2), phases (2, K))."""
    amplitudes = rng.uniform(0.0, amplitude_mm, size=(2, num_waves)) / num_waves ** 0.5
    frequencies = np.stack([rng.uniform(0.05, 0.4, size=(2, num_waves)),  # across the width (u / half width)
                            rng.uniform(0.3, 1.5, size=(2, num_waves))], axis=-1)  # along the depth (nu)
    frequencies *= rng.choice([-1, 1], size=(2, num_waves, 2))
    phases = rng.uniform(0.0, 2 * np.pi, size=(2, num_waves))
    return amplitudes, frequencies, phases
