"""Genant deformity on analytic spines: heights within their stated uncertainty at several voxel sizes and
orientations, the deformity type, the neighbour rule for a crush body, borderline grades and trabecular density."""
import numpy as np
import pytest
import SimpleITK as sitk

from vfscreen.inference import deformity
from vfscreen.inference.morphometry import VertebraMorphometry, measure_vertebrae

DEPTH, WIDTH, GAP = 30.0, 40.0, 8.0  # body depth, width, disc height (mm)
# (label, anterior, middle, posterior) heights at the walls and mid-depth; a crush body (L2) between intact ones
SPINE = [(19, 25.0, 25.0, 25.0), (20, 26.0, 26.0, 26.0), (21, 19.5, 19.2, 19.0), (22, 27.0, 27.0, 27.0),
         (23, 19.0, 23.5, 28.0)]  # T12, L1, L2 (crush), L3, L4 (wedge)
HU_CORE, HU_SHELL = 120.0, 800.0


def rotation(angles_degrees):
    return np.asarray(sitk.Euler3DTransform((0, 0, 0), *np.radians(angles_degrees)).GetMatrix()).reshape(3, 3)


def height_at(a, anterior, middle, posterior):
    """Quadratic through the three heights at a = +DEPTH/2 (anterior wall), 0 and -DEPTH/2."""
    t = np.asarray(a) / (DEPTH / 2)
    return middle + (anterior - posterior) / 2 * t + ((anterior + posterior) / 2 - middle) * t ** 2


def make_spine(spacing, angles):
    """Bodies stacked along the world's feet direction in a rotated grid; returns (labels, ct) images."""
    direction = rotation(angles)
    axes = np.eye(3)[[2, 1, 0]] * np.array([[-1], [-1], [1]])  # u = feet (-z), a = anterior (-y), l = x
    centres, position = [], 0.37  # body ends off the lattice planes (a mask has no voxel exactly on a surface)
    for _, anterior, middle, posterior in SPINE:
        tallest = max(anterior, middle, posterior)
        centres.append(position + tallest / 2)
        position += tallest + GAP
    extent_u = position + 10.21
    local_corners = np.array([[u, a, l] for u in (-10.0, extent_u) for a in (-30.0, 30.0) for l in (-30.0, 30.0)])
    grid_corners = (local_corners @ axes) @ direction
    low, high = grid_corners.min(axis=0), grid_corners.max(axis=0)
    size = np.ceil((high - low) / np.asarray(spacing)).astype(int) + 1
    origin = direction @ low
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing="ij"), axis=-1).reshape(-1, 3)
    world = origin + (ijk * np.asarray(spacing)) @ direction.T
    u, a, l = (world @ axes.T).T
    labels = np.zeros(len(world), np.uint8)
    hu = np.full(len(world), -1000.0)
    section = (np.abs(a) <= DEPTH / 2) & (np.abs(l) <= WIDTH / 2)
    hu[(np.abs(a) <= 28) & (np.abs(l) <= 28)] = 40.0  # soft tissue, air outside
    for (label, anterior, middle, posterior), centre in zip(SPINE, centres):
        height = height_at(a, anterior, middle, posterior)
        inside = section & (np.abs(u - centre) <= height / 2)
        labels[inside] = label
        core = inside & (np.abs(u - centre) <= height / 2 - 2.5) & (np.abs(a) <= DEPTH / 2 - 2.5) \
            & (np.abs(l) <= WIDTH / 2 - 2.5)
        hu[inside] = HU_SHELL
        hu[core] = HU_CORE
    images = []
    for values in (labels, hu.astype(np.int16)):
        image = sitk.GetImageFromArray(values.reshape(size).transpose(2, 1, 0))
        image.SetSpacing(tuple(float(s) for s in spacing))
        image.SetOrigin(tuple(origin))
        image.SetDirection(tuple(direction.reshape(-1)))
        images.append(image)
    return images


GRIDS = {"0.7mm-oblique": ((0.7, 0.7, 0.7), (10.0, -8.0, 20.0)), "1mm-aligned": ((1.0, 1.0, 1.0), (0.0, 0.0, 0.0)),
         "0.8x0.8x2mm-tilted": ((0.8, 0.8, 2.0), (0.0, 12.0, 5.0))}


@pytest.fixture(scope="module", params=list(GRIDS), ids=list(GRIDS))
def measured(request):
    spacing, angles = GRIDS[request.param]
    labels, ct = make_spine(spacing, angles)
    return measure_vertebrae(sitk.GetArrayFromImage(labels), labels, ct=ct)


def test_heights_within_their_stated_uncertainty(measured):
    for label, anterior, middle, posterior in SPINE:
        result = measured[label]
        assert result.heights_mm is not None, result.note
        for name, expected in zip(("anterior", "middle", "posterior"), (anterior, middle, posterior)):
            margin = deformity.Z_95 * result.height_sd_mm[name]
            assert abs(result.heights_mm[name] - expected) <= margin, (label, name, result.heights_mm, margin)
            assert margin < 3.5  # not a vacuous interval: below 3.5 voxels at these voxel sizes


def test_deformity_types_and_the_neighbour_rule(measured):
    crush, wedge = measured[21], measured[23]
    assert crush.deformity["rule"] == "vs_neighbours" and crush.deformity["type"] == "crush"
    assert crush.deformity["within"] < 0.20 < crush.deformity["vs_neighbours"]  # min/max alone would miss it
    assert crush.morph_grade >= 1
    assert wedge.deformity["type"] == "wedge" and wedge.deformity["rule"] == "within" and wedge.morph_grade == 2
    assert "not applicable" in wedge.deformity["note"]  # no measured vertebra below L4
    assert measured[20].morph_grade == 0 and measured[20].deformity["type"] == "normal"


def test_trabecular_density_and_the_l1_flag(measured):
    for label, *_ in SPINE:
        assert measured[label].trabecular_hu == pytest.approx(HU_CORE, abs=1.0)
    screen = deformity.density_screen(measured)
    assert screen["level"] == "L1" and screen["low_density"] is True  # 120 HU <= 160 HU


def test_density_not_reported_without_ct_like_intensities():
    labels, ct = make_spine((1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    mr_like = sitk.Cast(sitk.GetImageFromArray(sitk.GetArrayFromImage(ct) + 1000), sitk.sitkInt16)
    mr_like.CopyInformation(ct)
    results = measure_vertebrae(sitk.GetArrayFromImage(labels), labels, ct=mr_like)
    assert all(result.trabecular_hu is None and "not CT-like" in result.density_note for result in results.values())


def _with_heights(label, heights, sd):
    result = VertebraMorphometry(label, np.zeros(3), False, np.array([0, 0, -1.0]), np.array([0, -1.0, 0]))
    result.heights_mm = dict(zip(("anterior", "middle", "posterior"), heights))
    result.height_sd_mm = dict.fromkeys(("anterior", "middle", "posterior"), sd)
    result.genant_ratio = min(heights) / max(heights)
    return result


def test_ratio_interval_straddling_080_is_borderline():
    measured = {20: _with_heights(20, (20.2, 24.0, 25.0), sd=0.3)}  # ratio 0.808, interval ~0.77-0.85
    deformity.assess(measured)
    low, high = measured[20].ratio_interval
    assert low < 0.80 < high and measured[20].borderline and measured[20].deformity["grade_range"] == [0, 1]
    precise = {20: _with_heights(20, (20.2, 24.0, 25.0), sd=0.05)}
    deformity.assess(precise)
    assert not precise[20].borderline and precise[20].morph_grade == 0


def test_coarse_slices_make_g1_undecidable():
    coarse = {label: _with_heights(label, (22.0, 24.0, 25.0), sd=1.5) for label in (19, 20, 21)}
    deformity.assess(coarse)
    assert "undecidable" in deformity.undecidable_g1_note(coarse)
    fine = {label: _with_heights(label, (22.0, 24.0, 25.0), sd=0.1) for label in (19, 20, 21)}
    deformity.assess(fine)
    assert deformity.undecidable_g1_note(fine) == ""
