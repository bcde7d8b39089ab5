"""nnU-Net prediction that brings back only the spine's region.

nnU-Net's ``predict_single_npy_array`` resamples every output channel of the whole field of view back to the input grid
(float32/float64, several copies) - memory that grows with the scan, not with the spine. Here nnU-Net's own
preprocessing (the plan's preprocessor: crop to non-zero, normalisation, resampling) and sliding-window prediction
(``predict_logits_from_preprocessed_data``) run unchanged; then, at the plan's spacing, the largest foreground
components (at most ``max_components``) give the spine's box, and only that box (plus a margin) is resampled to the
input grid, slab by slab, with the same coordinate mapping as nnU-Net's resampling (voxel centres, 'edge' padding),
linear in every axis. nnU-Net's label manager applies the non-linearity and makes the class map. Probabilities are
kept in float16.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from vfscreen.inference import spine_region
from vfscreen.inference.spine_region import SpineSegmentation

MAX_COMPONENTS = 64  # foreground components that may span the region (a spine has at most 26 vertebrae + pieces)
MARGIN_NETWORK_VOXELS = 2  # linear interpolation reaches less than one network voxel beyond the foreground
SLAB_BYTES = 64 * 2**20  # float32 working memory per resampled slab


def _input_box(network_box, network_shape, cropped_shape, crop_bbox) -> tuple[slice, ...]:
    """Network-grid box -> the input-grid (transposed frame) box that covers it; nnU-Net's resampling maps network
    voxel j to cropped-input coordinate (j + 0.5) * N / n - 0.5."""
    box = []
    for s, n, big, (crop_start, _) in zip(network_box, network_shape, cropped_shape, crop_bbox):
        scale = big / n
        low = int(np.floor((s.start - 0.5) * scale - 0.5)) if s.start > 0 else 0
        high = int(np.ceil((s.stop - 0.5) * scale - 0.5)) + 1 if s.stop < n else big
        box.append(slice(crop_start + max(0, low), crop_start + min(big, high)))
    return tuple(box)


def _resample_box(logits: np.ndarray, box, cropped_shape, crop_bbox, label_manager, with_probabilities: bool = True
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """Class map (uint8) and probabilities (float16, or None) of ``box`` (transposed input frame) from network-grid
    logits."""
    network_shape = logits.shape[1:]
    scale = np.array([n / big for n, big in zip(network_shape, cropped_shape)])
    shape = spine_region.box_shape(box)
    num_channels = logits.shape[0]
    class_map = np.zeros(shape, np.uint8)
    probabilities = np.zeros((num_channels,) + shape, np.float16) if with_probabilities else None
    plane_bytes = 4 * num_channels * int(np.prod(shape[1:]))
    step = max(1, SLAB_BYTES // max(plane_bytes, 1))
    start_cropped = np.array([s.start - c for s, (c, _) in zip(box, crop_bbox)])
    for first in range(0, shape[0], step):
        last = min(shape[0], first + step)
        origin = start_cropped + np.array([first, 0, 0])
        offset = scale * (origin + 0.5) - 0.5
        slab = np.empty((num_channels, last - first) + shape[1:], np.float32)
        for channel in range(num_channels):
            ndimage.affine_transform(logits[channel], scale, offset=offset, output_shape=slab.shape[1:],
                                     output=slab[channel], order=1, mode="nearest")
        slab_probabilities = label_manager.apply_inference_nonlin(slab)
        segmentation = label_manager.convert_probabilities_to_segmentation(slab_probabilities)
        class_map[first:last] = np.asarray(segmentation.cpu() if torch.is_tensor(segmentation) else segmentation)
        if probabilities is not None:
            probabilities[:, first:last] = slab_probabilities.numpy()
    return class_map, probabilities


@dataclass
class NetworkOutput:
    """The network's logits at the plan's spacing and what maps them back to the image's array."""

    logits: np.ndarray  # (C, network grid) float32
    properties: dict  # nnU-Net's preprocessing properties (crop box, shapes)
    oriented_shape: tuple  # the reoriented image array's shape
    permutation: tuple
    flipped: tuple
    image_shape: tuple  # the image array's (z, y, x) shape


def network_output(predictor, image: sitk.Image, orientation: str | None) -> NetworkOutput:
    """nnU-Net's preprocessing and sliding-window prediction of the whole scan (reoriented to ``orientation``)."""
    plans_manager, configuration_manager = predictor.plans_manager, predictor.configuration_manager
    permutation, flipped = (0, 1, 2), (False, False, False)
    oriented = image
    if orientation:
        permutation, flipped = spine_region.orientation_axes(image, orientation)
        oriented = sitk.DICOMOrient(image, orientation)
    properties = {"spacing": list(oriented.GetSpacing())[::-1]}  # nnU-Net's SimpleITK reader convention
    oriented_shape = sitk.GetArrayViewFromImage(oriented).shape
    preprocessor = configuration_manager.preprocessor_class(verbose=False)
    data, _, properties = preprocessor.run_case_npy(sitk.GetArrayViewFromImage(oriented)[None], None, properties,
                                                    plans_manager, configuration_manager, predictor.dataset_json)
    del oriented
    logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(data)).float().numpy()
    return NetworkOutput(logits, properties, oriented_shape, permutation, flipped, tuple(image.GetSize()[::-1]))


def predict_spine_region(predictor, image: sitk.Image, orientation: str | None, min_component_voxels: int = 1,
                         max_components: int = MAX_COMPONENTS, check_region=None,
                         with_probabilities: bool = True) -> SpineSegmentation:
    """``image`` -> its :class:`SpineSegmentation` on the image's own array grid.

    predictor: an initialised nnUNetPredictor. orientation: the plan's array orientation (None: the image's).
    min_component_voxels: network-grid components smaller than this do not widen the region (they would be dropped
    as fragments). check_region(num_voxels, num_channels) may raise before the region is allocated (memory budget).
    """
    output = network_output(predictor, image, orientation)
    return region_from_network_output(predictor, output, min_component_voxels, max_components, check_region,
                                      with_probabilities)


def region_from_network_output(predictor, output: NetworkOutput, min_component_voxels: int = 1,
                               max_components: int = MAX_COMPONENTS, check_region=None,
                               with_probabilities: bool = True) -> SpineSegmentation:
    """The spine's region of the network's output, on the image's array grid (see :func:`predict_spine_region`)."""
    plans_manager = predictor.plans_manager
    logits, properties, oriented_shape = output.logits, output.properties, output.oriented_shape
    permutation, flipped = output.permutation, output.flipped
    label_manager = predictor.label_manager
    # foreground where nnU-Net's label manager would give a class > 0 (regions: any sigmoid > 0.5, i.e. logit > 0;
    # softmax: a class's logit above the background's), as a reduction: no copy of the logits
    network_foreground = np.max(logits, axis=0) > 0 if label_manager.has_regions else \
        np.max(logits[1:], axis=0) > logits[0]
    kept, found, num_kept = spine_region.keep_largest_components(network_foreground, max_components,
                                                                 min_component_voxels)
    notes = []
    if found > num_kept:
        notes.append(f"segmentation: {found} foreground components at the network's spacing, the {num_kept} largest "
                     f"(at most {max_components}, >= {min_component_voxels} voxels) kept")
    transposed_shape = tuple(oriented_shape[i] for i in plans_manager.transpose_forward)
    network_box = spine_region.bounding_box(kept)
    if network_box is None:
        empty = tuple(slice(0, 0) for _ in range(3))
        return SpineSegmentation(output.image_shape, empty, np.zeros((0, 0, 0), np.uint8), None, notes)
    crop_bbox = properties["bbox_used_for_cropping"]
    cropped_shape = properties["shape_after_cropping_and_before_resampling"]
    network_box = spine_region.grow(network_box, MARGIN_NETWORK_VOXELS, logits.shape[1:])
    box = _input_box(network_box, logits.shape[1:], cropped_shape, crop_bbox)
    while True:
        if check_region is not None:
            check_region(int(np.prod(spine_region.box_shape(box))), logits.shape[0] if with_probabilities else 0)
        class_map, probabilities = _resample_box(logits, box, cropped_shape, crop_bbox, label_manager,
                                                 with_probabilities)
        crop_box = tuple(slice(c0, c1) for c0, c1 in crop_bbox)
        faces = spine_region.touches_inner_face(class_map > 0, box, transposed_shape)
        # grow where the foreground reaches a face inside the image (inside nnU-Net's crop only)
        faces = [(axis, side) for axis, side in faces
                 if (box[axis].start > crop_box[axis].start if side < 0 else box[axis].stop < crop_box[axis].stop)]
        if not faces:
            break
        box = tuple(slice(max(crop_box[a].start, s.start - 8 * any(f == (a, -1) for f in faces)),
                          min(crop_box[a].stop, s.stop + 8 * any(f == (a, 1) for f in faces)))
                    for a, s in enumerate(box))
    backward = plans_manager.transpose_backward
    box = tuple(box[i] for i in backward)
    class_map = class_map.transpose(backward)
    box = spine_region.box_to_original(box, oriented_shape, permutation, flipped)
    class_map = np.ascontiguousarray(spine_region.array_to_original(class_map, permutation, flipped))
    if probabilities is not None:
        probabilities = probabilities.transpose([0] + [i + 1 for i in backward])
        probabilities = np.ascontiguousarray(spine_region.array_to_original(probabilities, permutation, flipped))
    return SpineSegmentation(output.image_shape, box, class_map, probabilities, notes)
