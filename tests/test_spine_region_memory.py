"""Memory scales with the spine, not with the field of view: the same spine padded to a 6x and a 12x larger field of
view (in-plane; 36x and 144x the voxels) costs prediction the same memory after the network, up to the full-grid
uint8 output label map and the intensity check of the scan itself. Both fields are wider than the spine plus the
margin within which ribs are followed on the CT (vfscreen.inference.ct_ribs.SEARCH_MARGIN_MM on either side): that
search is bounded by the spine, not by the field.

The network (tiny nnU-Net model folder, its output replaced by a bone threshold) and nnU-Net's whole-scan
preprocessing run first and are not measured (they are whole-scan by nature; the size sweep measures them). What is
measured is numpy's traced peak (tracemalloc) during ``predict_case``: bringing the spine's region back to the input
grid, components and labels, morphometry, crops and grading. The old path held every output channel over the whole
grid (float16 after float32/float64 resampling: >= 6 bytes per voxel and channel)."""
import tracemalloc

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from test_predict_outputs import FakeGrader
from test_predict_segmentation import model_folder  # noqa: F401 - the tiny nnU-Net model folder fixture
from vfscreen.labels import NUM_CLASSES

SPACING_MM = 1.5  # half the tiny plan's 3 mm: the region is resampled back to the input grid
# allowed growth of the traced peak per added voxel of field of view (bytes): the output's uint8 labels (1), the
# intensity check's copy of the int16 scan (2) and the network-grid foreground and its components (~6 bytes per
# network voxel, 8 input voxels each), with margin; the old path's 27 channels over the grid: >= 160
MAX_BYTES_PER_PADDED_VOXEL = 6.0
PAD_FACTORS = (6, 12)  # fields of 216 and 432 mm: wider than the 36 mm spine + 2 x the rib search margin


def spine_in_field(pad_factor: int) -> sitk.Image:
    """Three bony blocks (a small spine) in soft tissue, centred in a field ``pad_factor`` x the spine's width."""
    spine = np.full((48, 24, 24), 40, np.int16)  # (z, y, x)
    for index in range(3):
        spine[4 + 16 * index:14 + 16 * index, 5:19, 5:19] = 700
    field = np.full((48, 24 * pad_factor, 24 * pad_factor), 40, np.int16)
    offset = 12 * (pad_factor - 1)
    field[:, offset:offset + 24, offset:offset + 24] = spine
    field[:, :2] = -1000  # air at the front of the body: the scan looks like CT
    image = sitk.GetImageFromArray(field)
    image.SetSpacing((SPACING_MM,) * 3)
    return image


def threshold_network(data):  # stands in for nnU-Net's network: class 1 where the voxel was bone (> 300 HU)
    bone = data[0] > (300.0 - 300.0) / 250.0  # the tiny plan's CT normalisation of 300 HU
    logits = torch.full((NUM_CLASSES,) + bone.shape, -100.0)
    logits[0] = torch.where(bone, -100.0, 100.0)
    logits[1] = torch.where(bone, 100.0, -100.0)
    return logits


def traced_peak_after_network(segmenter, image, monkeypatch) -> tuple[int, dict]:
    from vfscreen.inference import nnunet_region
    from vfscreen.inference.pipeline import Models, predict_case

    output = nnunet_region.network_output(segmenter.predictor, image, segmenter.orientation)
    models = Models(segmenter=segmenter, grader=FakeGrader())
    with monkeypatch.context() as patch:
        patch.setattr(nnunet_region, "network_output", lambda *args: output)
        tracemalloc.start()
        try:
            result = predict_case(image, "padded", models)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    return peak, result


def test_memory_after_the_network_does_not_grow_with_padding(model_folder, monkeypatch):  # noqa: F811
    from vfscreen.inference.segmentation import NnunetSegmenter

    segmenter = NnunetSegmenter(model_folder, [0], "cpu", use_mirroring=False)
    segmenter.predictor.predict_logits_from_preprocessed_data = threshold_network
    peaks, voxels, regions = {}, {}, {}
    small, large = PAD_FACTORS
    for factor in PAD_FACTORS:
        image = spine_in_field(factor)
        peaks[factor], result = traced_peak_after_network(segmenter, image, monkeypatch)
        voxels[factor] = int(np.prod(image.GetSize()))
        regions[factor] = tuple(s.stop - s.start for s in result["region"])
        assert int((result["verse_map"] > 0).sum()) > 0
    assert regions[small] == regions[large]  # the same spine region, wherever the field ends
    growth = (peaks[large] - peaks[small]) / (voxels[large] - voxels[small])
    print(f"traced peaks {peaks} bytes for {voxels} voxels: {growth:.2f} bytes per padded voxel")
    assert growth <= MAX_BYTES_PER_PADDED_VOXEL, (peaks, voxels)
    region_voxels = int(np.prod(regions[small]))
    assert region_voxels < voxels[small] / 2  # the region is the spine's, not the field's


def test_thin_slab_and_empty_scans_give_an_output(model_folder):  # noqa: F811
    """A 3-slice slab (smaller than the network's patch) and a scan without bone: an output, no error."""
    from vfscreen.inference.pipeline import Models, predict_case
    from vfscreen.inference.segmentation import NnunetSegmenter

    segmenter = NnunetSegmenter(model_folder, [0], "cpu", use_mirroring=False)
    segmenter.predictor.predict_logits_from_preprocessed_data = threshold_network
    slab = sitk.GetImageFromArray(np.where(np.arange(3 * 60 * 60).reshape(3, 60, 60) % 7 == 0, 700, -1000
                                           ).astype(np.int16))
    slab.SetSpacing((0.8, 0.8, 1.0))
    no_bone = sitk.GetImageFromArray(np.where(np.arange(20)[:, None, None] % 2 == 0, 40, -1000)
                                      * np.ones((20, 20, 20), np.int16))
    for image in (slab, no_bone):
        result = predict_case(image, "bad", Models(segmenter=segmenter, grader=FakeGrader()))
        assert result["seg_image"].GetSize() == image.GetSize()
        assert result["seg_image"].GetSpacing() == image.GetSpacing()
        assert result["json"]["patient"]["message"]


@pytest.mark.parametrize("orientation", ["LPS", "PIR"])
def test_region_is_the_spine_in_any_orientation(model_folder, orientation):  # noqa: F811
    from vfscreen.inference.segmentation import NnunetSegmenter

    segmenter = NnunetSegmenter(model_folder, [0], "cpu", orientation=orientation, use_mirroring=False)
    segmenter.predictor.predict_logits_from_preprocessed_data = threshold_network
    centred = spine_in_field(3)
    image = sitk.GetImageFromArray(np.roll(sitk.GetArrayFromImage(centred), (5, 17, 9), axis=(0, 1, 2)))
    image.CopyInformation(centred)  # the spine off-centre in every axis: a wrong flip would move it
    image.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, -1))
    segmentation = segmenter(image)
    array = sitk.GetArrayViewFromImage(image)
    bone = array > 300
    found = segmentation.full_class_map() > 0
    assert found[bone].mean() > 0.9 and bone[found].mean() > 0.75  # the network's 3 mm bone, on 1.5 mm
    outside = np.ones(array.shape, bool)
    outside[segmentation.box] = False
    assert not bone[outside].any()  # all of it inside the region
    assert segmentation.class_map.size < array.size / 3
