"""Morphometry on analytic vertebral bodies (box, wedge, biconcave) in an oblique grid with anisotropic spacing."""
import numpy as np
import pytest
import SimpleITK as sitk

from analytic_bodies import (ANTERIOR, CENTRE, DEPTH, LATERAL, SPINE_AXIS, WALLS, WIDTH, biconcave_height,
                             box_height, wedge_height)
from vfscreen.genant import grade_from_heights
from vfscreen.inference.morphometry import measure_vertebrae

TOLERANCE_MM = 0.5
POSITIONS = WALLS

SHAPES = {1: (-35.0, box_height), 2: (0.0, wedge_height), 3: (35.0, biconcave_height)}  # label: (u centre, h(a,l))


def rotation(angles_degrees):
    return sitk.VersorRigid3DTransform() if False else np.asarray(
        sitk.Euler3DTransform((0, 0, 0), *np.radians(angles_degrees)).GetMatrix()).reshape(3, 3)


def make_volume(labels=(1, 2, 3), with_arch=True, spacing=(0.8, 0.9, 1.0), angles=(12.0, -17.0, 28.0)):
    local_corners = np.array([[u, a, l] for u in (-52, 52) for a in (-55, 18) for l in (-23, 23)], float)
    direction = rotation(angles)
    world_corners = CENTRE + local_corners @ np.stack([SPINE_AXIS, ANTERIOR, LATERAL])
    grid_corners = world_corners @ direction  # coordinates along the grid axes
    low, high = grid_corners.min(axis=0), grid_corners.max(axis=0)
    size = np.ceil((high - low) / np.asarray(spacing)).astype(int) + 1
    origin = direction @ low
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing="ij"), axis=-1).reshape(-1, 3)
    world = origin + (ijk * np.asarray(spacing)) @ direction.T
    local = (world - CENTRE) @ np.stack([SPINE_AXIS, ANTERIOR, LATERAL], axis=1)
    u, a, l = local[:, 0], local[:, 1], local[:, 2]
    values = np.zeros(len(local), np.uint8)
    in_body_section = (np.abs(a) <= DEPTH / 2) & (np.abs(l) <= WIDTH / 2)
    for label in labels:
        u_centre, height = SHAPES[label]
        values[in_body_section & (np.abs(u - u_centre) <= height(a, l) / 2)] = label
        if with_arch:  # pedicles + lamina ring around a canal, spinous process
            radius = np.hypot(a + DEPTH / 2 + 7.0, l)  # canal front = posterior body wall
            ring = (radius >= 7.0) & (radius <= 11.0) & (np.abs(u - u_centre) <= 6.0) & (values == 0)
            spinous = (a <= -DEPTH / 2 - 17.0) & (a >= -DEPTH / 2 - 35.0) & (np.abs(l) <= 2.5) \
                & (np.abs(u - u_centre) <= 5.0)
            values[ring | spinous] = label
    array = values.reshape(size).transpose(2, 1, 0)  # (i, j, k) -> numpy (k, j, i)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(tuple(origin))
    image.SetDirection(tuple(direction.reshape(-1)))
    return array, image


def expected_heights(label):
    _, height = SHAPES[label]
    return {name: float(height(position, 0.0)) for name, position in POSITIONS.items()}


@pytest.fixture(scope="module")
def measured():
    array, image = make_volume()
    return measure_vertebrae(array, image)


@pytest.mark.parametrize("label", [1, 2, 3], ids=["box", "wedge", "biconcave"])
def test_heights_of_analytic_bodies(measured, label):
    result = measured[label]
    assert not result.truncated and result.heights_mm is not None, result.note
    assert result.extra["canal_found"]  # posterior elements were recognised and excluded
    expected = expected_heights(label)
    for name in expected:
        assert abs(result.heights_mm[name] - expected[name]) <= TOLERANCE_MM, (name, result.heights_mm, expected)
    low, high = result.deformity["grade_range"]  # the biconcave body lies close to the G0/G1 border
    assert low <= grade_from_heights(*expected.values()) <= high
    assert abs(result.genant_ratio - min(expected.values()) / max(expected.values())) < 0.03


def test_wedge_is_graded_as_fracture_and_box_as_normal(measured):
    assert measured[2].morph_grade >= 2  # 16.5 / 23.5 = 0.70 -> moderate
    assert measured[1].morph_grade == 0


def test_local_axis_and_anterior_direction(measured):
    for result in measured.values():
        assert abs(result.spine_axis @ SPINE_AXIS) > 0.995
        assert result.anterior_axis @ ANTERIOR > 0.99


def test_single_vertebra_uses_principal_axis():
    array, image = make_volume(labels=(1,), with_arch=False)
    result = measure_vertebrae(array, image)[1]
    assert abs(result.spine_axis @ SPINE_AXIS) > 0.99
    for name, value in expected_heights(1).items():
        assert abs(result.heights_mm[name] - value) <= TOLERANCE_MM


def test_truncated_vertebra_is_flagged_not_measured():
    array, image = make_volume(labels=(1, 2), with_arch=False)
    cut = sitk.GetImageFromArray(array[:, :, : array.shape[2] // 2].copy())  # cut the volume in half along i
    cut.CopyInformation(image[: array.shape[2] // 2, :, :])
    results = measure_vertebrae(sitk.GetArrayFromImage(cut), cut)
    assert any(result.truncated for result in results.values())
    for result in results.values():
        if result.truncated:
            assert result.heights_mm is None and result.morph_grade is None and "field of view" in result.note


def test_axis_aligned_thick_slices_are_counted_exactly():
    """8 slices of 3 mm = 24 mm; a grid-aligned body must not lose the half voxels at both ends."""
    array = np.zeros((16, 30, 30), np.uint8)  # (z, y, x)
    array[4:12, 5:25, 5:25] = 1  # 8 slices, 20 x 20 voxels of 1.5 mm
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.5, 1.5, 3.0))
    result = measure_vertebrae(array, image)[1]
    for value in result.heights_mm.values():
        assert abs(value - 24.0) <= TOLERANCE_MM
