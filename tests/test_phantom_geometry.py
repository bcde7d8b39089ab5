"""Phantom geometry: Genant grades re-measured from the written label masks, orientation round trips."""
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from vfscreen import dataset, genant, labels
from vfscreen.phantom import generator
from vfscreen.phantom.acquisition import PRESETS
from vfscreen.utils.image_io import orientation_code

# Fine (0.6 mm in-plane, 0.3 mm slices), tight, noise-free acquisition: the mask can be measured to ~0.1 mm.
FINE = PRESETS["demo"].with_changes(name="fine", inplane_spacing_mm=(0.6, 0.6), slice_thickness_mm=(0.3, 0.3),
                                    supersampling=1, whole_vertebrae=(7, 7), lateral_margin_mm=(1.0, 2.0),
                                    anterior_margin_mm=(2.0, 4.0), posterior_air_mm=(1.0, 2.0),
                                    noise_sigma_hu=(0.0, 0.0), blur_sigma_mm=(0.0, 0.0), trabecular_texture_hu=(0.0, 0.0),
                                    orientation="LPS")
COARSE = PRESETS["demo"].with_changes(name="coarse", whole_vertebrae=(2, 2), inplane_spacing_mm=(2.5, 2.5),
                                      slice_thickness_mm=(3.0, 3.0))


class MaskSampler:
    """Trilinear samples of one label's binary mask at world points (independent of the generator's code)."""

    def __init__(self, label_image: sitk.Image, class_id: int):
        self.mask = (sitk.GetArrayFromImage(label_image) == class_id).astype(np.float32)  # (z, y, x)
        self.origin = np.array(label_image.GetOrigin())
        self.spacing = np.array(label_image.GetSpacing())
        self.direction = np.array(label_image.GetDirection()).reshape(3, 3)

    def __call__(self, points: np.ndarray) -> np.ndarray:
        index_xyz = (points - self.origin) @ self.direction / self.spacing  # (N, 3) continuous (i, j, k)
        return ndimage.map_coordinates(self.mask, index_xyz[:, ::-1].T, order=1, mode="constant", cval=0.0)


def run_length(sampler, start: np.ndarray, direction: np.ndarray, reach_mm: float = 60.0, step_mm: float = 0.05):
    """(low, high) offsets along ``direction`` of the mask run (> 0.5) containing ``start``."""
    offsets = np.arange(-reach_mm, reach_mm + step_mm / 2, step_mm)
    inside = sampler(start + offsets[:, None] * direction) - 0.5
    centre = len(offsets) // 2
    assert inside[centre] > 0, "measurement start point is outside the mask"
    high = centre
    while high + 1 < len(offsets) and inside[high + 1] > 0:
        high += 1
    low = centre
    while low > 0 and inside[low - 1] > 0:
        low -= 1

    def crossing(a, b):  # linear interpolation of the 0.5 level between samples a (inside) and b (outside)
        return offsets[a] + (offsets[b] - offsets[a]) * inside[a] / (inside[a] - inside[b])

    return crossing(low, max(low - 1, 0)), crossing(high, min(high + 1, len(offsets) - 1))


def measure_heights(sampler, centre, superior, anterior) -> tuple[float, float, float]:
    """Genant heights from the mask, by ray casting: the mid-height AP depth of the body in its mid-sagittal plane;
    both endplates sampled on lines across 15-85 % of the depth (mean of 3 x 3 nearby lines each), each fitted by a
    quadratic and evaluated at the anterior and posterior walls; the middle height measured on its own lines."""
    lateral = np.cross(superior, anterior)
    back, front = run_length(sampler, centre, anterior)

    def endplates(position):
        ends = []
        for du in (-0.4, 0.0, 0.4):
            for dv in (-0.3, 0.0, 0.3):
                ends.append(run_length(sampler, centre + (position + dv) * anterior + du * lateral, superior))
        return np.mean(ends, axis=0)  # (low, high) along superior

    positions = back + np.linspace(0.15, 0.85, 8) * (front - back)
    sampled = np.array([endplates(position) for position in positions])  # (8, 2)
    fits = [np.polyfit(positions, sampled[:, side], 2) for side in (0, 1)]

    def wall_height(position):
        return float(np.polyval(fits[1], position) - np.polyval(fits[0], position))

    low, high = endplates((front + back) / 2)
    return wall_height(front), float(high - low), wall_height(back)


def genant_grade(heights) -> int:
    """Genant's rule written out here, independent of vfscreen.genant: height reduction 1 - min/max; < 20 % normal,
    20-25 % mild, 25-40 % moderate, >= 40 % severe (Genant et al. 1993)."""
    reduction = 1.0 - min(heights) / max(heights)
    return 0 if reduction < 0.20 else 1 if reduction < 0.25 else 2 if reduction < 0.40 else 3


@pytest.fixture(scope="module")
def fine_dataset(tmp_path_factory) -> Path:
    return generator.generate_dataset(tmp_path_factory.mktemp("fine"), seed=11, num_cases=3, num_test_cases=0,
                                      preset=FINE, num_processes=1, patient_mix=(0, 1, 1, 1), progress=False)


def test_grades_agree_with_heights_remeasured_from_written_masks(fine_dataset):
    grades = dataset.read_grades(fine_dataset / "grades.csv")
    whole = grades[~grades["truncated"].astype(bool)]
    assert len(whole) >= 20 and whole["grade"].nunique() >= 3
    agree, close, fractured = 0, 0, 0
    for case_id, rows in whole.groupby("case_id"):
        label_image = sitk.ReadImage(str(dataset.label_path(fine_dataset, case_id)))
        for row in rows.itertuples():
            sampler = MaskSampler(label_image, labels.VERSE_TO_CLASS[row.label])
            centre = np.array([row.centre_x_mm, row.centre_y_mm, row.centre_z_mm])
            superior = np.array([row.superior_x, row.superior_y, row.superior_z])
            anterior = np.array([row.anterior_x, row.anterior_y, row.anterior_z])
            measured = measure_heights(sampler, centre, superior, anterior)
            agree += genant_grade(measured) == row.grade
            close += np.allclose(measured, (row.anterior_mm, row.middle_mm, row.posterior_mm), atol=1.0)  # walls: extrapolated fits
            fractured += row.grade > 0
    assert fractured >= 3
    assert agree >= 0.95 * len(whole), f"grade agrees for {agree} of {len(whole)} whole vertebrae"
    assert close >= 0.95 * len(whole), f"heights within 1.0 mm for {close} of {len(whole)} whole vertebrae"


ORIENTATIONS = ("LPS", "RAS", "LAS", "PIR", "ASL", "IRP", "SPR", "RIA")


def _centroids(label_image: sitk.Image) -> dict[int, np.ndarray]:
    statistics = sitk.LabelShapeStatisticsImageFilter()
    statistics.Execute(label_image)
    return {labels.CLASS_TO_VERSE[c]: np.array(statistics.GetCentroid(c)) for c in statistics.GetLabels()
            if c in labels.CLASS_TO_VERSE}  # vertebrae only (rib / sacrum landmark classes are not)


def _bone_centroid(ct: sitk.Image) -> np.ndarray:
    """World centroid of voxels > 400 HU, through the image's own index -> world transform."""
    array = sitk.GetArrayFromImage(ct)
    k, j, i = np.nonzero(array > 400)
    index = np.stack([i, j, k], axis=1).astype(float)
    world = np.array(ct.GetOrigin()) + (index * np.array(ct.GetSpacing())) @ np.array(ct.GetDirection()).reshape(3, 3).T
    return world.mean(axis=0)


def test_every_orientation_holds_the_same_anatomy_in_world_coordinates():
    spec = generator.case_specs(5, 1, 0, COARSE)[0]
    results = {}
    for code in ORIENTATIONS:
        oriented = generator.CaseSpec(spec.case_id, spec.split, spec.seed, spec.target_worst_grade,
                                      COARSE.with_changes(orientation=code))
        results[code] = generator.generate_case(oriented)
    reference = results["LPS"]
    reference_centroids = _centroids(reference.label)
    assert len(reference_centroids) >= 3
    for code, case in results.items():
        assert orientation_code(case.ct) == code and orientation_code(case.label) == code
        assert case.rows == reference.rows
        back_to_lps = sitk.DICOMOrient(case.ct, "LPS")
        assert np.array_equal(sitk.GetArrayFromImage(back_to_lps), sitk.GetArrayFromImage(reference.ct)), code
        assert np.allclose(back_to_lps.GetOrigin(), reference.ct.GetOrigin(), atol=1e-4)
        centroids = _centroids(case.label)
        assert centroids.keys() == reference_centroids.keys()
        for verse_id, centroid in centroids.items():
            assert np.allclose(centroid, reference_centroids[verse_id], atol=1e-3), (code, verse_id)
        assert np.allclose(_bone_centroid(case.ct), _bone_centroid(reference.ct), atol=1e-3), code
    # anatomy in world (LPS) coordinates: cranial vertebrae are superior (+z); the vertebral body lies anterior (-y)
    # of the vertebra's centroid (which the posterior elements pull backwards)
    ordered = sorted(reference_centroids, key=labels.spine_position)
    z = [reference_centroids[v][2] for v in ordered]
    assert all(a > b for a, b in zip(z, z[1:]))
    for row in reference.rows:
        if not row["truncated"]:
            assert row["centre_y_mm"] < reference_centroids[row["label"]][1]
            assert row["superior_z"] > 0.8 and row["anterior_y"] < -0.5


def test_all_48_stored_orientations_keep_world_coordinates():
    from vfscreen.phantom.acquisition import ALL_ORIENTATIONS, to_image
    from vfscreen.phantom.rendering import Grid

    rng = np.random.default_rng(0)
    array = rng.integers(0, 5, size=(6, 7, 8)).astype(np.uint8)  # (z, y, x) on an LPS grid
    grid = Grid(origin=np.array([-10.0, 5.0, 30.0]), spacing=np.array([0.7, 0.9, 2.5]), size=(8, 7, 6))
    reference = _centroids(to_image(array, grid, "LPS"))
    assert len(ALL_ORIENTATIONS) == 48
    for code in ALL_ORIENTATIONS:
        image = to_image(array, grid, code)
        assert orientation_code(image) == code
        centroids = _centroids(image)
        assert centroids.keys() == reference.keys()
        for value, centroid in centroids.items():
            assert np.allclose(centroid, reference[value], atol=1e-6), (code, value)
