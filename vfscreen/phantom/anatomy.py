"""Anatomy of one synthetic patient: which vertebrae exist (T13 / L6 variants), their sizes (growing caudally), the
curved spine (cervical and lumbar lordosis, thoracic kyphosis, mild scoliosis in some patients), fractures, tissue
densities and the cranio-caudal field of view. Everything is drawn from one ``numpy.random.Generator``."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from vfscreen import genant, labels
from vfscreen.phantom import shapes
from vfscreen.phantom.vertebra import (MORPHOLOGIES, MORPHOLOGY_PROBABILITIES, Vertebra, endplate_irregularity,
                                       fracture_heights, near_threshold, normal_heights)

# Sizes of the vertebrae at anchor levels of the anatomical level coordinate (C3 = 2, C7 = 6, T1 = 7, T6 = 12,
# T12 = 18, L1 = 19, L5 = 23), one row per level, interpolated between rows: lengths in mm, angles in degrees;
# curvature_deg is the sagittal angle change per level (+ = lordosis).
_SIZE_COLUMNS = ("level", "nominal_height", "half_depth", "half_width", "disc_height", "canal_half_width",
                 "canal_half_depth", "arch_thickness", "spinous_length", "spinous_angle_deg", "spinous_half_height",
                 "transverse_length", "transverse_angle_deg", "curvature_deg")
_SIZE_ROWS = (
    (2.0, 13.0, 7.5, 9.0, 5.0, 11.0, 7.0, 4.0, 16.0, 20.0, 4.0, 9.0, 0.0, 4.0),  # C3
    (6.0, 14.0, 8.5, 12.0, 5.5, 11.0, 7.0, 4.5, 24.0, 35.0, 5.0, 13.0, 10.0, 4.0),  # C7
    (7.0, 16.0, 8.5, 13.0, 4.5, 8.0, 7.5, 5.0, 28.0, 45.0, 6.0, 17.0, 35.0, -3.5),  # T1
    (12.0, 19.0, 12.0, 16.0, 5.0, 7.5, 7.5, 5.5, 30.0, 60.0, 6.0, 17.0, 40.0, -3.5),  # T6
    (18.0, 23.0, 14.5, 19.5, 7.0, 8.5, 8.0, 6.0, 28.0, 35.0, 8.0, 13.0, 30.0, -3.5),  # T12
    (19.0, 25.0, 15.0, 21.0, 9.0, 10.5, 8.5, 7.0, 28.0, 20.0, 10.0, 24.0, 10.0, 8.0),  # L1
    (23.0, 27.0, 17.0, 25.0, 11.0, 12.0, 8.5, 8.0, 26.0, 15.0, 10.0, 22.0, 10.0, 8.0),  # L5
)
_LEVELS, *_COLUMNS = zip(*_SIZE_ROWS)
_TABLES = dict(zip(_SIZE_COLUMNS[1:], _COLUMNS))
FOV_KINDS = {  # name: (probability, first and last vertebra name allowed to be whole)
    "thoracolumbar": (0.65, "T6", "L6"),
    "thoracic": (0.15, "T2", "T12"),
    "cervicothoracic": (0.20, "C4", "T8"),
}
_TEMPLATE = Vertebra(  # stand-in used to evaluate candidate body surfaces (only height-related fields matter)
    verse_id=20, name="L1", level=19.0, centre=np.zeros(3), axes=np.eye(3), nominal_height=1.0, half_width=1.0,
    half_depth=1.0, waist=0.0, exponent_anterior=2.0, exponent_posterior=2.0, shell_mm=1.0, top_fraction=0.5,
    intended_heights=(1.0, 1.0, 1.0), dish=False, bump_amplitudes=np.zeros((2, 1)),
    bump_frequencies=np.zeros((2, 1, 2)), bump_phases=np.zeros((2, 1)), canal_half_width=1.0, canal_half_depth=1.0,
    arch_thickness=1.0, spinous_length=1.0, spinous_angle_deg=0.0, spinous_half_height=1.0, transverse_length=1.0,
    transverse_angle_deg=0.0, cortical_hu=800.0, cancellous_hu=200.0)
FRACTURE_HOT_SPOTS = {"T7": 2.0, "T8": 2.0, "T11": 2.5, "T12": 3.5, "T13": 3.0, "L1": 3.5, "L2": 2.0}


def table(name: str, level: float) -> float:
    return float(np.interp(level, _LEVELS, _TABLES[name]))


@dataclass
class Tissues:
    """Soft-tissue densities (HU) and body-outline parameters of one patient."""
    fat_hu: float
    muscle_hu: float
    soft_hu: float
    lung_hu: float
    blood_hu: float
    disc_hu: float
    canal_hu: float
    trunk_half_width: float  # semi-axes of the trunk outline, mm
    trunk_half_depth: float
    subcutaneous_fat_mm: float
    skin_behind_spinous_mm: float
    aorta_radius: float


@dataclass
class SpineCase:
    vertebrae: list[Vertebra]  # every modelled vertebra, cranio-caudal (C3 .. last lumbar)
    whole: list[int]  # indices into ``vertebrae`` that lie completely inside the field of view
    fov_z: tuple[float, float]  # cranio-caudal field of view (world z, mm)
    disc_heights: list[float]  # disc below each vertebra, mm
    tissues: Tissues
    osteoporotic: bool
    fov_kind: str
    target_worst_grade: int

    def vertebra_shapes(self, index: int) -> list:
        vertebra = self.vertebrae[index]
        posterior_hu = 0.55 * vertebra.cortical_hu + 0.45 * vertebra.cancellous_hu
        return shapes.vertebra_shapes(vertebra, posterior_hu)


def vertebra_list(rng: np.random.Generator) -> list[tuple[int, float]]:
    """(VerSe id, level coordinate) from C3 to the last lumbar vertebra; 5 % have T13, 5 % have L6."""
    thoracic = list(range(8, 20)) + ([28] if rng.random() < 0.05 else [])
    lumbar = list(range(20, 25)) + ([25] if rng.random() < 0.05 else [])
    result = [(verse_id, float(verse_id - 1)) for verse_id in range(3, 8)]
    result += [(verse_id, 7.0 + k * 11.0 / (len(thoracic) - 1)) for k, verse_id in enumerate(thoracic)]
    result += [(verse_id, 19.0 + k * 4.0 / (len(lumbar) - 1)) for k, verse_id in enumerate(lumbar)]
    return result


def _frame(sagittal_deg: float, coronal_deg: float, axial_deg: float) -> np.ndarray:
    """Rows lateral, anterior, superior. Positive sagittal angle tilts the top anteriorly (-y)."""
    theta, phi, psi = np.deg2rad([sagittal_deg, coronal_deg, axial_deg])
    superior = np.array([np.sin(phi), -np.sin(theta), np.cos(theta) * np.cos(phi)])
    superior /= np.linalg.norm(superior)
    anterior = np.array([0.0, -1.0, 0.0]) - (-superior[1]) * superior
    anterior /= np.linalg.norm(anterior)
    lateral = np.cross(superior, anterior)
    rotated_lateral = np.cos(psi) * lateral + np.sin(psi) * anterior
    rotated_anterior = -np.sin(psi) * lateral + np.cos(psi) * anterior
    return np.stack([rotated_lateral, rotated_anterior, superior])


def _choose_whole_range(rng, names: list[str], num_whole: int) -> tuple[str, list[int]]:
    kinds = list(FOV_KINDS)
    kind = kinds[rng.choice(len(kinds), p=[FOV_KINDS[k][0] for k in kinds])]
    _, first_name, last_name = FOV_KINDS[kind]
    first = names.index(first_name)
    last = names.index(last_name) if last_name in names else len(names) - 1
    num_whole = min(num_whole, last - first + 1)
    start = int(rng.integers(first, last - num_whole + 2))
    return kind, list(range(start, start + num_whole))


def _assign_grades(rng, names: list[str], whole: list[int], target_worst_grade: int) -> dict[int, tuple[int, str]]:
    """Intended (grade, morphology) of the fractured vertebrae (indices into the vertebra list)."""
    if target_worst_grade == 0:
        return {}
    count = min(len(whole), int(rng.choice([1, 2, 3], p=[0.55, 0.3, 0.15])))
    weights = np.array([FRACTURE_HOT_SPOTS.get(names[i], 0.4 if names[i].startswith("C") else 1.0) for i in whole])
    chosen = rng.choice(whole, size=count, replace=False, p=weights / weights.sum())
    result = {}
    for rank, index in enumerate(chosen):
        grade = target_worst_grade if rank == 0 else int(rng.integers(1, target_worst_grade + 1))
        morphology = MORPHOLOGIES[rng.choice(len(MORPHOLOGIES), p=MORPHOLOGY_PROBABILITIES)]
        result[int(index)] = (grade, morphology)
    return result


def _draw_body_profile(rng, grade: int, morphology: str, level: float, nominal_height: float):
    """Intended heights, endplate irregularity and deficit split of one body whose *final* heights fall in the
    band of ``grade`` and at least THRESHOLD_MARGIN away from every Genant threshold. Shapes that miss are re-drawn
    (this keeps the patient mix); the ground truth is still computed from the final heights."""
    for _attempt in range(50):
        if grade:
            heights = fracture_heights(rng, grade, morphology, nominal_height)
        else:
            heights = normal_heights(rng, level, nominal_height)
        bumps = endplate_irregularity(rng, rng.uniform(0.2, 0.9))
        top_fraction = rng.uniform(0.55, 0.8) if grade else rng.uniform(0.3, 0.7)
        trial = replace(_TEMPLATE, nominal_height=nominal_height, intended_heights=heights,
                        dish=morphology == "biconcave", bump_amplitudes=bumps[0], bump_frequencies=bumps[1],
                        bump_phases=bumps[2], top_fraction=top_fraction, half_width=10.0)
        final_heights = trial.measure_heights()
        if not near_threshold(final_heights) and genant.grade_from_heights(*final_heights) == grade:
            break
    return heights, bumps, top_fraction


def build_case(rng: np.random.Generator, target_worst_grade: int, num_whole_range: tuple[int, int]) -> SpineCase:
    """Draw one patient's anatomy."""
    ids_levels = vertebra_list(rng)
    names = [labels.name_of(verse_id) for verse_id, _ in ids_levels]
    kind, whole = _choose_whole_range(rng, names, int(rng.integers(num_whole_range[0], num_whole_range[1] + 1)))
    intended = _assign_grades(rng, names, whole, target_worst_grade)
    osteoporotic = bool(rng.random() < (0.6 if target_worst_grade else 0.25))
    degeneration = rng.uniform(0.0, 1.0) ** 1.5  # osteophytes, narrower discs
    size = rng.uniform(0.88, 1.12)
    curvature_scale = rng.uniform(0.6, 1.2, size=3)  # cervical, thoracic, lumbar
    scoliosis = rng.uniform(4.0, 10.0) if rng.random() < 0.3 else 0.0
    scoliosis_phase, scoliosis_period = rng.uniform(0, 2 * np.pi), rng.uniform(8.0, 16.0)

    vertebrae, sagittal, discs = [], 0.0, []
    for index, (verse_id, level) in enumerate(ids_levels):
        region = 0 if level < 6.5 else (1 if level < 18.5 else 2)
        sagittal += table("curvature_deg", level) * curvature_scale[region]
        h0 = table("nominal_height", level) * size * rng.uniform(0.96, 1.04)
        grade, morphology = intended.get(index, (0, "normal"))
        heights, bumps, top_fraction = _draw_body_profile(rng, grade, morphology, level, h0)
        cancellous = rng.uniform(50.0, 110.0) if osteoporotic else rng.uniform(130.0, 300.0)
        vertebra = Vertebra(
            verse_id=verse_id, name=names[index], level=level, centre=np.zeros(3),
            axes=_frame(sagittal, scoliosis * np.cos(2 * np.pi * index / scoliosis_period + scoliosis_phase),
                        rng.normal(0.0, 2.0) + 0.4 * scoliosis * np.sin(2 * np.pi * index / scoliosis_period
                                                                        + scoliosis_phase)),
            nominal_height=h0, half_width=table("half_width", level) * size * rng.uniform(0.95, 1.05),
            half_depth=table("half_depth", level) * size * rng.uniform(0.95, 1.05),
            waist=rng.uniform(0.03, 0.1), exponent_anterior=rng.uniform(2.0, 2.6),
            exponent_posterior=rng.uniform(3.0, 4.5), shell_mm=rng.uniform(0.8, 1.6),
            top_fraction=top_fraction,
            intended_heights=heights, dish=morphology == "biconcave",
            bump_amplitudes=bumps[0], bump_frequencies=bumps[1], bump_phases=bumps[2],
            canal_half_width=table("canal_half_width", level) * size,
            canal_half_depth=table("canal_half_depth", level) * size,
            arch_thickness=table("arch_thickness", level) * size,
            spinous_length=table("spinous_length", level) * size * rng.uniform(0.85, 1.15),
            spinous_angle_deg=table("spinous_angle_deg", level) + rng.normal(0.0, 5.0),
            spinous_half_height=table("spinous_half_height", level) * size,
            transverse_length=table("transverse_length", level) * size * rng.uniform(0.85, 1.15),
            transverse_angle_deg=table("transverse_angle_deg", level) + rng.normal(0.0, 5.0),
            cortical_hu=rng.uniform(700.0, 1000.0), cancellous_hu=cancellous,
            intended_grade=grade, intended_morphology=morphology,
            sclerosis_hu=rng.uniform(40.0, 150.0) if grade and rng.random() < 0.6 else 0.0)
        vertebra.heights = vertebra.measure_heights()
        vertebrae.append(vertebra)
        vertebra.osteophytes = [(rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 0.75), rim,
                                 1.0 + 6.0 * degeneration * rng.uniform(0.3, 1.0),
                                 min(rng.uniform(1.0, 2.2), 0.15 * vertebra.half_depth))
                                for rim in (1.0, -1.0) if rng.random() < 0.4 * degeneration]
        discs.append(table("disc_height", level) * size * rng.uniform(0.85, 1.15)
                     * (1.0 - 0.35 * degeneration * rng.uniform(0.5, 1.0)))

    _place_along_curve(rng, vertebrae, discs, whole)
    fov_z = _choose_fov_z(rng, vertebrae, whole)
    tissues = Tissues(
        fat_hu=rng.uniform(-120.0, -80.0), muscle_hu=rng.uniform(35.0, 60.0), soft_hu=rng.uniform(25.0, 45.0),
        lung_hu=rng.uniform(-900.0, -780.0), blood_hu=rng.uniform(150.0, 300.0) if rng.random() < 0.5 else 40.0,
        disc_hu=rng.uniform(65.0, 95.0), canal_hu=rng.uniform(0.0, 20.0),
        trunk_half_width=rng.uniform(140.0, 180.0) * size, trunk_half_depth=rng.uniform(95.0, 130.0) * size,
        subcutaneous_fat_mm=rng.uniform(6.0, 30.0), skin_behind_spinous_mm=rng.uniform(10.0, 30.0),
        aorta_radius=rng.uniform(10.0, 15.0))
    return SpineCase(vertebrae, whole, fov_z, discs, tissues, osteoporotic, kind, target_worst_grade)


def _place_along_curve(rng, vertebrae: list[Vertebra], discs: list[float], whole: list[int]) -> None:
    """Stack the bodies along their superior axes (disc gaps in between), then centre and tilt the column so the
    visible part runs roughly along the scanner's z axis."""
    centre = np.zeros(3)
    vertebrae[0].centre = centre.copy()
    for upper, lower, disc in zip(vertebrae[:-1], vertebrae[1:], discs[:-1]):
        upper_half = max(upper.heights) / 2 + disc / 2
        lower_half = max(lower.heights) / 2 + disc / 2
        centre = centre - upper.axes[2] * upper_half - lower.axes[2] * lower_half
        lower.centre = centre.copy()
    visible = np.array([vertebrae[i].centre for i in whole])
    direction = visible[0] - visible[-1]
    direction /= np.linalg.norm(direction)
    target = _frame(rng.normal(0.0, 4.0), rng.normal(0.0, 2.0), 0.0)[2]
    rotation = _rotation_between(direction, target)
    origin = visible.mean(axis=0)
    for vertebra in vertebrae:
        vertebra.centre = (vertebra.centre - origin) @ rotation.T
        vertebra.axes = vertebra.axes @ rotation.T


def _rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rotation matrix R with R @ a = b (unit vectors, Rodrigues)."""
    axis = np.cross(a, b)
    sine, cosine = np.linalg.norm(axis), float(np.dot(a, b))
    if sine < 1e-9:
        return np.eye(3)
    k = axis / sine
    skew = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + sine * skew + (1 - cosine) * skew @ skew


def vertebra_z_extent(case: SpineCase, index: int) -> tuple[float, float]:
    low, high = shapes.shapes_bbox(case.vertebra_shapes(index))
    return float(low[2]), float(high[2])


def _choose_fov_z(rng, vertebrae, whole) -> tuple[float, float]:
    """Cut the field of view just outside the first and last whole vertebra (neighbours end up partial)."""
    probe = SpineCase(vertebrae, whole, (0.0, 0.0), [], None, False, "", 0)
    top = max(vertebra_z_extent(probe, i)[1] for i in whole)
    bottom = min(vertebra_z_extent(probe, i)[0] for i in whole)
    return bottom - rng.uniform(1.0, 12.0), top + rng.uniform(1.0, 12.0)
