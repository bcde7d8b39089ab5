"""The anatomical plausibility guard on the real example CT: TotalSegmentator's vertebrae pass at any grid and
orientation; soft tissue, air, a rib-like rod, a label off the spine and a segmentation of mostly such structures
are marked implausible and never graded or flagged, even by a grader that calls everything a fracture."""
import json

import numpy as np
import pytest
import SimpleITK as sitk

from vfscreen.inference.masks import MaskSource, read_case_mask
from vfscreen.inference.plausibility import assess, longest_chain
from vfscreen.inference.predict import Models, predict
from vfscreen.labels import NAME_TO_VERSE


@pytest.fixture(scope="module")
def real(request):
    from conftest import EXAMPLE_CT, EXAMPLE_CT_VERTEBRAE

    ct = sitk.ReadImage(str(EXAMPLE_CT))
    spine = read_case_mask(MaskSource(EXAMPLE_CT_VERTEBRAE, "file"), ct)
    return ct, spine.verse_map


def test_real_vertebrae_pass_at_any_grid_and_orientation(real):
    ct, verse_map = real
    assert assess(verse_map, ct).vertebrae == {}
    mask = sitk.GetImageFromArray(verse_map)
    mask.CopyInformation(ct)
    for orientation, spacing in (("LPS", 3.0), ("RAS", 1.5), ("PIR", 1.0)):  # the same field of view on each grid
        oriented_ct, oriented_mask = sitk.DICOMOrient(ct, orientation), sitk.DICOMOrient(mask, orientation)
        factor = 3.0 / spacing
        reference = sitk.Image([int(n * factor) for n in oriented_ct.GetSize()], sitk.sitkInt16)
        reference.SetSpacing((spacing,) * 3)
        reference.SetOrigin(oriented_ct.TransformContinuousIndexToPhysicalPoint([(1 / factor - 1) / 2] * 3))
        reference.SetDirection(oriented_ct.GetDirection())
        new_ct = sitk.Resample(oriented_ct, reference, sitk.Transform(), sitk.sitkLinear, -1024)
        new_mask = sitk.Resample(oriented_mask, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        result = assess(sitk.GetArrayFromImage(new_mask), new_ct)
        assert result.vertebrae == {} and result.case_reason is None, (orientation, spacing, result)


def soft_tissue_box(ct_array, size=10):
    """Corner of a size^3 box of soft tissue (0..80 HU everywhere) in the CT."""
    from scipy import ndimage

    soft = (ct_array > 0) & (ct_array < 80)
    fraction = ndimage.uniform_filter(soft.astype(float), size=size)
    corner = np.unravel_index(np.argmax(fraction), fraction.shape)
    assert fraction[corner] > 0.999
    return tuple(c - size // 2 for c in corner)


def with_garbage(ct, verse_map):
    ct_array = sitk.GetArrayViewFromImage(ct)
    garbage = verse_map.copy()
    z, y, x = soft_tissue_box(ct_array)
    garbage[z:z + 10, y:y + 10, x:x + 10] = NAME_TO_VERSE["T5"]  # 27 ml of soft tissue
    garbage[60:62, 5:7, 5:117] = np.where(garbage[60:62, 5:7, 5:117] == 0, NAME_TO_VERSE["T8"], garbage[60:62, 5:7, 5:117])
    garbage[2:12, 95:100, 2:12] = NAME_TO_VERSE["T3"]  # outside the body: air
    return garbage


def test_garbage_structures_are_implausible(real):
    ct, verse_map = real
    result = assess(with_garbage(ct, verse_map), ct)
    names = {NAME_TO_VERSE[n]: n for n in ("T3", "T5", "T8")}
    assert set(result.vertebrae) == set(names)
    assert "not bone" in result.vertebrae[NAME_TO_VERSE["T5"]]
    assert "not bone" in result.vertebrae[NAME_TO_VERSE["T3"]]
    assert "longer than any vertebra" in result.vertebrae[NAME_TO_VERSE["T8"]]
    assert result.case_reason is None  # 3 of 10: the spine itself is fine


def test_off_the_spine_without_hounsfield_units(real):
    """On an image that is not in HU (MR-like) only geometry decides: a vertebra moved 12 cm sideways is off the
    chain."""
    ct, verse_map = real
    mr_like = sitk.Cast(ct, sitk.sitkFloat32) + 2000.0
    moved = verse_map.copy()
    l3 = verse_map == NAME_TO_VERSE["L3"]
    moved[l3] = 0
    moved[np.roll(l3, -40, axis=2)] = NAME_TO_VERSE["L3"]  # x index axis, 3 mm voxels
    result = assess(moved, mr_like)
    assert list(result.vertebrae) == [NAME_TO_VERSE["L3"]] and "off the spine" in result.vertebrae[NAME_TO_VERSE["L3"]]


def test_longest_chain_follows_the_spine():
    centroids = {20: np.array([0.0, 0, 100]), 21: np.array([0.0, 5, 65]), 22: np.array([150.0, 0, 60]),
                 23: np.array([0.0, 8, 28]), 24: np.array([2.0, 5, 90])}  # 22 lateral, 24 above 21
    volumes = dict.fromkeys(centroids, 50.0)
    assert longest_chain(list(centroids), centroids, volumes) == [20, 21, 23]


class FlagEverything:
    """A grader that calls every vertebra G3."""

    crop_plan = {"mode": "fit", "patch_size": [16, 16, 16], "margin_mm": 4.0, "use_truncated": True,
                 "windows": [{"name": "bone", "width": 1500, "level": 400},
                             {"name": "soft_tissue", "width": 200, "level": 40}],
                 "mask_channel": "label_modulated"}
    patch_size = (16, 16, 16)

    def fold_probabilities(self, patches):
        return np.tile(np.array([0.01, 0.01, 0.01, 0.97]), (1, len(patches), 1))


def predict_with(tmp_path, ct, verse_map):
    from conftest import EXAMPLE_CT

    masks = tmp_path / "masks"
    masks.mkdir(exist_ok=True)
    mask = sitk.GetImageFromArray(verse_map)
    mask.CopyInformation(ct)
    sitk.WriteImage(mask, str(masks / "totalsegmentator_example_ct.nii.gz"))
    output = tmp_path / "out"
    models = Models(segmenter=None, grader=FlagEverything(), info={"dataset": "test", "grader": {"folds": [0]}})
    table = predict(EXAMPLE_CT, output, models=models, masks=masks, mask_labels="verse")
    assert table.attrs["errors"] == []
    return json.loads((output / "totalsegmentator_example_ct.json").read_text())


def test_implausible_vertebrae_get_no_grade_and_no_verdict(tmp_path, real):
    ct, verse_map = real
    data = predict_with(tmp_path, ct, with_garbage(ct, verse_map))
    by_name = {v["name"]: v for v in data["vertebrae"]}
    for name in ("T3", "T5", "T8"):
        assert by_name[name]["implausible"] and by_name[name]["grade"] is None
        assert by_name[name]["suspected"] is None and by_name[name]["morph_grade"] is None
    assert by_name["L3"]["implausible"] is None and by_name["L3"]["grade"] == 3 and by_name["L3"]["suspected"]
    assert set(data["patient"]["suspected"]).isdisjoint({"T3", "T5", "T8"})


def test_mostly_garbage_makes_the_case_implausible(tmp_path, real):
    ct, verse_map = real
    garbage = with_garbage(ct, verse_map)
    garbage[np.isin(garbage, [NAME_TO_VERSE[n] for n in ("L1", "L2", "L3", "L4", "L5")])] = 0
    data = predict_with(tmp_path, ct, garbage)
    assert data["patient"]["implausible"] and "not plausible vertebrae" in data["patient"]["implausible"]
    assert data["patient"]["any_fracture"] is False and data["patient"]["suspected"] == []
    assert all(v["grade"] is None and v["implausible"] for v in data["vertebrae"])
    assert "implausible" in data["patient"]["message"]
