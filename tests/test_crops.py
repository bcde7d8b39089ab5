"""The crop function (vfscreen.preprocessing.crops) on tiny synthetic volumes built here with SimpleITK."""
import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from vfscreen.errors import ConfigError, InputError
from vfscreen.labels import MAX_VERSE_ID
from vfscreen.preprocessing.crops import (CANONICAL_DIRECTION, apply_window, extract_vertebra_crops, num_channels,
                                          paste_crop_to_image, paste_crops_to_image, patch_shape, place_in_patch,
                                          take_from_patch)

BONE_HU, SOFT_HU, AIR_HU = 400.0, 40.0, -1000.0
L1, L2, L3 = 20, 21, 22


def crop_plan(mode="fit", patch_size=(24, 24, 24), margin_mm=4.0, spacing_mm=2.0, **extra):
    return {"mode": mode, "spacing_mm": spacing_mm, "patch_size": list(patch_size), "margin_mm": margin_mm,
            "windows": [{"name": "bone", "width": 1500, "level": 400},
                        {"name": "soft_tissue", "width": 200, "level": 40}],
            "mask_channel": "label_modulated", "use_truncated": True, "storage_dtype": "float16", **extra}


def world_coordinates(image: sitk.Image) -> np.ndarray:
    """World (x, y, z) of every voxel, shape (z, y, x, 3)."""
    z, y, x = np.meshgrid(*(np.arange(n) for n in reversed(image.GetSize())), indexing="ij")
    index_xyz = np.stack([x, y, z], axis=-1).astype(float)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    return np.asarray(image.GetOrigin()) + (index_xyz * np.asarray(image.GetSpacing())) @ direction.T


# Vertebrae as world-space boxes (LPS mm): label -> (low corner, high corner).
VERTEBRA_BOXES = {L1: ((-12.0, -10.0, 20.0), (12.0, 8.0, 34.0)),
                  L2: ((-13.0, -11.0, 2.0), (13.0, 9.0, 16.0)),
                  L3: ((-14.0, -12.0, -16.0), (14.0, 10.0, -2.0))}


def rasterize(size_xyz, spacing, direction=CANONICAL_DIRECTION, origin=None, boxes=VERTEBRA_BOXES):
    """CT (HU) and VerSe label images of a body (soft tissue cylinder in air) with box vertebrae, on a given grid.

    ``origin`` defaults to the value that centres the grid on the world origin.
    """
    ct = sitk.Image([int(s) for s in size_xyz], sitk.sitkInt16)
    ct.SetSpacing(spacing)
    ct.SetDirection(direction)
    if origin is None:
        half_extent = (np.asarray(size_xyz) - 1) * np.asarray(spacing) / 2.0
        origin = -np.asarray(direction).reshape(3, 3) @ half_extent
    ct.SetOrigin([float(o) for o in origin])
    world = world_coordinates(ct)
    hounsfield = np.where(np.hypot(world[..., 0], world[..., 1]) < 30.0, SOFT_HU, AIR_HU)
    label_array = np.zeros(hounsfield.shape, dtype=np.uint8)
    for label, (low, high) in boxes.items():
        inside = np.all((world >= low) & (world <= high), axis=-1)
        hounsfield[inside] = BONE_HU
        label_array[inside] = label
    ct_image = sitk.GetImageFromArray(hounsfield.astype(np.int16))
    ct_image.CopyInformation(ct)
    label_image = sitk.GetImageFromArray(label_array)
    label_image.CopyInformation(ct)
    return ct_image, label_image


@pytest.fixture(scope="module")
def anisotropic_lps():
    return rasterize((40, 36, 34), (1.5, 1.25, 2.0))


def by_label(crops):
    return {crop.label: crop for crop in crops}


def test_apply_window_exact_on_known_hounsfield_units():
    hounsfield = np.array([-2000, -350, 400, 1150, 3000, -60, 40, 140], dtype=np.int16)
    np.testing.assert_allclose(apply_window(hounsfield, 1500, 400), [0, 0, 0.5, 1, 1, 290 / 1500, 390 / 1500,
                                                                     490 / 1500], atol=1e-6)
    np.testing.assert_allclose(apply_window(hounsfield, 200, 40), [0, 0, 1, 1, 1, 0, 0.5, 1], atol=1e-6)


def test_crop_channels_windows_and_label_modulated_mask(anisotropic_lps):
    ct, verse_labels = anisotropic_lps
    crops = by_label(extract_vertebra_crops(ct, verse_labels, crop_plan(margin_mm=8.0)))
    assert sorted(crops) == [L1, L2, L3]
    for label, crop in crops.items():
        assert crop.data.dtype == np.float32 and crop.data.shape[0] == 3
        assert crop.name == {L1: "L1", L2: "L2", L3: "L3"}[label]
        bone, soft, mask = crop.data
        inside = mask > 0
        np.testing.assert_allclose(np.unique(mask), [0.0, label / MAX_VERSE_ID], rtol=1e-6)
        # Deep inside the vertebra (away from the partial-volume edge) the windows are exact.
        core = ndimage.binary_erosion(inside, iterations=2)
        assert core.sum() > 0.2 * inside.sum()
        np.testing.assert_allclose(bone[core], (BONE_HU + 350) / 1500, atol=1e-5)
        np.testing.assert_allclose(soft[core], 1.0, atol=1e-6)
        assert 0.0 <= crop.data.min() and crop.data.max() <= 1.0
    # Only THIS vertebra is in the mask channel, even where the neighbour is inside the crop's margin.
    l2_bone = crops[L2].data[0] > 0.45
    assert (l2_bone & (crops[L2].data[2] == 0)).any(), "the margin should show neighbouring bone"


@pytest.mark.parametrize("orientation", ["PIR", "RAS", "ASL"])
@pytest.mark.parametrize("plan", [crop_plan(), crop_plan(mode="spacing", spacing_mm=2.0, margin_mm=3.0)],
                         ids=["fit", "spacing-with-ties"])  # 2 mm crop voxels on a 1.5/1.25/2 mm grid: exact ties
def test_same_anatomy_in_another_orientation_gives_the_same_crop(anisotropic_lps, orientation, plan):
    ct, verse_labels = anisotropic_lps
    reoriented_ct, reoriented_labels = sitk.DICOMOrient(ct, orientation), sitk.DICOMOrient(verse_labels, orientation)
    assert reoriented_ct.GetDirection() != ct.GetDirection()
    reference = by_label(extract_vertebra_crops(ct, verse_labels, plan))
    other = by_label(extract_vertebra_crops(reoriented_ct, reoriented_labels, plan))
    for label in reference:
        assert other[label].data.shape == reference[label].data.shape
        np.testing.assert_allclose(other[label].data, reference[label].data, atol=1e-4)
        np.testing.assert_allclose(other[label].origin_mm, reference[label].origin_mm, atol=1e-6)
        np.testing.assert_allclose(other[label].centroid_mm, reference[label].centroid_mm, atol=1e-6)
        assert other[label].direction == CANONICAL_DIRECTION


def test_same_anatomy_on_an_oblique_grid_matches_within_interpolation_tolerance():
    lps_ct, lps_labels = rasterize((48, 44, 44), (1.0, 1.0, 1.0))
    angle = np.deg2rad(20.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    oblique_ct, oblique_labels = rasterize((52, 52, 44), (1.0, 1.0, 1.0), direction=tuple(rotation.ravel()))
    plan = crop_plan(mode="spacing", spacing_mm=1.5, patch_size=(32, 32, 32))
    reference = by_label(extract_vertebra_crops(lps_ct, lps_labels, plan))[L2]
    oblique = by_label(extract_vertebra_crops(oblique_ct, oblique_labels, plan))[L2]
    assert oblique.shape == reference.shape
    difference = np.abs(oblique.data - reference.data).mean(axis=(1, 2, 3))
    assert np.all(difference < 0.03), difference  # partial-volume differences at the box faces only
    np.testing.assert_allclose(oblique.centroid_mm, reference.centroid_mm, atol=0.5)


def test_fit_mode_longest_side_equals_the_patch(anisotropic_lps):
    ct, verse_labels = anisotropic_lps
    plan = crop_plan(mode="fit", patch_size=(20, 16, 32), margin_mm=3.0)
    for crop in extract_vertebra_crops(ct, verse_labels, plan):
        shape = crop.shape
        assert all(c <= p for c, p in zip(shape, patch_shape(plan)))
        assert any(c == p for c, p in zip(shape, patch_shape(plan)))
        assert len(set(crop.spacing_mm)) == 1  # isotropic


def test_spacing_mode_honours_the_spacing_and_centre_crops_big_vertebrae(anisotropic_lps):
    ct, verse_labels = anisotropic_lps
    plan = crop_plan(mode="spacing", spacing_mm=2.0, patch_size=(64, 64, 64), margin_mm=5.0)
    crop = by_label(extract_vertebra_crops(ct, verse_labels, plan, labels=[L2]))[L2]
    assert crop.spacing_mm == (2.0, 2.0, 2.0)
    # L2 covers voxel edges x [-13.5, 13.5] (1.5 mm grid), z [2, 16] +- 1 mm; + 2 x 5 mm margin, at 2 mm per voxel.
    start, stop = np.array(crop.bbox_index).T
    extent_mm = (stop - start) * np.array(ct.GetSpacing()) + 10.0
    np.testing.assert_array_equal(crop.shape, np.round(extent_mm / 2.0).astype(int)[::-1])
    small = crop_plan(mode="spacing", spacing_mm=1.0, patch_size=(12, 10, 8), margin_mm=5.0)
    cut = by_label(extract_vertebra_crops(ct, verse_labels, small, labels=[L2]))[L2]
    assert cut.shape == (8, 10, 12)
    centre_index = (np.asarray(cut.shape) - 1) / 2.0
    np.testing.assert_allclose(cut.index_to_world(centre_index), crop.index_to_world((np.asarray(crop.shape) - 1) / 2),
                               atol=1e-6)


def test_truncated_flags_vertebrae_cut_by_the_field_of_view():
    boxes = dict(VERTEBRA_BOXES)
    boxes[L1] = ((-12.0, -10.0, 20.0), (12.0, 8.0, 60.0))  # runs past the top of the image
    ct, verse_labels = rasterize((40, 36, 34), (1.5, 1.25, 2.0), boxes=boxes)
    crops = by_label(extract_vertebra_crops(ct, verse_labels, crop_plan()))
    assert crops[L1].truncated and not crops[L2].truncated and not crops[L3].truncated
    assert crops[L1].bbox_index[2][1] == ct.GetSize()[2]


def test_place_in_patch_pads_centred_or_at_an_offset_and_take_from_patch_inverts_it():
    crop = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5) + 1
    patch = place_in_patch(crop, (5, 8, 5))
    assert patch.shape == (2, 5, 8, 5) and patch.dtype == np.float32
    np.testing.assert_array_equal(patch[:, 1:4, 2:6, 0:5], crop)
    assert patch.sum() == crop.sum()
    np.testing.assert_array_equal(take_from_patch(patch, crop.shape[1:]), crop)
    shifted = place_in_patch(crop, (5, 8, 5), offset=(2, 0, 0))
    np.testing.assert_array_equal(shifted[:, 2:5, 0:4, :], crop)
    np.testing.assert_array_equal(take_from_patch(shifted, crop.shape[1:], offset=(2, 0, 0)), crop)
    with pytest.raises(ValueError, match="larger than the patch"):
        place_in_patch(crop, (3, 3, 5))
    with pytest.raises(ValueError, match="outside the patch"):
        place_in_patch(crop, (5, 8, 5), offset=(3, 0, 0))


def test_place_in_patch_of_a_real_crop_reaches_the_plan_patch(anisotropic_lps):
    ct, verse_labels = anisotropic_lps
    plan = crop_plan(mode="fit", patch_size=(20, 16, 32))
    crop = extract_vertebra_crops(ct, verse_labels, plan)[0]
    patch = place_in_patch(crop, patch_shape(plan))
    assert patch.shape == (3, 32, 16, 20)
    assert np.isclose(patch[2].max(), crop.label / MAX_VERSE_ID)


def test_pasting_back_lands_on_the_vertebra_in_the_input_geometry():
    ct, verse_labels = rasterize((40, 36, 34), (1.5, 1.25, 2.0))
    ct, verse_labels = sitk.DICOMOrient(ct, "PIR"), sitk.DICOMOrient(verse_labels, "PIR")
    plan = crop_plan(mode="fit", patch_size=(48, 48, 48))
    crops = by_label(extract_vertebra_crops(ct, verse_labels, plan))
    crop = crops[L2]
    pasted = paste_crop_to_image((crop.data[2] > 0).astype(np.float32), crop, ct, sitk.sitkNearestNeighbor)
    assert pasted.GetSize() == ct.GetSize() and pasted.GetSpacing() == ct.GetSpacing()
    assert pasted.GetOrigin() == ct.GetOrigin() and pasted.GetDirection() == ct.GetDirection()
    pasted_mask = sitk.GetArrayFromImage(pasted) > 0.5
    truth = sitk.GetArrayFromImage(verse_labels) == L2
    dice = 2 * (pasted_mask & truth).sum() / (pasted_mask.sum() + truth.sum())
    assert dice > 0.9
    # A constant map pasted back covers exactly the crop's box (+ margin) and nothing far from it.
    ones = paste_crop_to_image(np.ones(crop.shape, np.float32), crop, ct)
    covered = sitk.GetArrayFromImage(ones) > 0.5
    assert covered[truth].all() and not covered[sitk.GetArrayFromImage(verse_labels) == L3].all()
    combined = sitk.GetArrayFromImage(paste_crops_to_image(
        [((c.data[2] > 0).astype(np.float32), c) for c in crops.values()], ct, sitk.sitkNearestNeighbor))
    assert (combined[sitk.GetArrayFromImage(verse_labels) > 0] > 0.5).mean() > 0.9


def test_bad_inputs_give_clear_errors(anisotropic_lps):
    ct, verse_labels = anisotropic_lps
    empty = sitk.Image(verse_labels.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(verse_labels)
    assert extract_vertebra_crops(ct, empty, crop_plan()) == []
    with pytest.raises(InputError, match=r"label\(s\) \[25\]"):
        extract_vertebra_crops(ct, verse_labels, crop_plan(), labels=[25])
    shifted = sitk.Image(verse_labels)
    shifted.SetOrigin([o + 5.0 for o in verse_labels.GetOrigin()])
    with pytest.raises(InputError, match="geometry"):
        extract_vertebra_crops(ct, shifted, crop_plan())
    fractional = sitk.Cast(verse_labels, sitk.sitkFloat32) * 0.5
    with pytest.raises(InputError, match="not integers"):
        extract_vertebra_crops(ct, fractional, crop_plan())
    for field, value in (("mode", "zoom"), ("patch_size", [24, 24]), ("margin_mm", -1), ("windows", []),
                         ("mask_channel", "rainbow")):
        with pytest.raises(ConfigError, match=field):
            extract_vertebra_crops(ct, verse_labels, {**crop_plan(), field: value})
    with pytest.raises(ConfigError, match="spacing_mm"):
        extract_vertebra_crops(ct, verse_labels, crop_plan(mode="spacing", spacing_mm=None))


@pytest.mark.parametrize("mask_channel, expected_channels", [("binary", 3), ("none", 2)])
def test_binary_and_no_mask_channel(anisotropic_lps, mask_channel, expected_channels):
    ct, verse_labels = anisotropic_lps
    plan = crop_plan(mask_channel=mask_channel)
    crop = extract_vertebra_crops(ct, verse_labels, plan, labels=[L2])[0]
    assert crop.data.shape[0] == expected_channels == num_channels(plan)
    if mask_channel == "binary":
        np.testing.assert_array_equal(np.unique(crop.data[2]), [0.0, 1.0])


def test_real_ct_crop_and_paste_back(example_ct):
    """The real 3 mm RAS int32 CT with a box 'vertebra' around its brightest bone: crop, then paste back."""
    ct = sitk.ReadImage(str(example_ct))
    hounsfield = sitk.GetArrayViewFromImage(ct)
    centre = np.unravel_index(np.argmax(ndimage.uniform_filter(hounsfield.astype(np.float32), 5)), hounsfield.shape)
    label_array = np.zeros(hounsfield.shape, dtype=np.uint8)
    label_array[tuple(slice(max(c - 4, 0), c + 4) for c in centre)] = L1
    verse_labels = sitk.GetImageFromArray(label_array)
    verse_labels.CopyInformation(ct)
    crop = extract_vertebra_crops(ct, verse_labels, crop_plan(mode="fit", patch_size=(32, 32, 32)))[0]
    assert max(crop.shape) == 32 and crop.data[0][crop.data[2] > 0].mean() > 0.3  # bright bone inside the box
    pasted = paste_crop_to_image((crop.data[2] > 0).astype(np.float32), crop, ct, sitk.sitkNearestNeighbor)
    assert pasted.GetOrigin() == ct.GetOrigin() and pasted.GetDirection() == ct.GetDirection()
    back = sitk.GetArrayFromImage(pasted) > 0.5
    truth = label_array > 0
    assert 2 * (back & truth).sum() / (back.sum() + truth.sum()) > 0.9
