"""The spine's region of a scan: where the segmentation found vertebrae, as a box of the input grid.

A whole-body CT holds the spine in a small part of its field of view. The segmentation is computed at the plan's
(coarse) spacing over the whole scan, but only the box around what it found (plus a margin) is brought back to the
input grid, and every later stage (components, label consistency, morphometry) works inside that box. Memory then
scales with the spine, not with the field of view; outputs are pasted back into the input's exact grid.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

Box = tuple[slice, slice, slice]  # (z, y, x) slices of an image array


@dataclass
class SpineSegmentation:
    """A segmentation held only inside ``box`` of an image array of ``shape``; background everywhere else."""

    shape: tuple[int, int, int]  # the full image array's (z, y, x) shape
    box: Box
    class_map: np.ndarray  # (box shape) class / group ids
    probabilities: np.ndarray | None = None  # (C, *box shape) float16, or None
    notes: list[str] = field(default_factory=list)  # what the segmenter left out (e.g. capped fragments)

    def full_class_map(self) -> np.ndarray:
        return paste(self.class_map, self.box, self.shape)


def paste(region: np.ndarray, box: Box, shape) -> np.ndarray:
    """``region`` placed at ``box`` of a zero array of ``shape`` (same dtype)."""
    full = np.zeros(tuple(shape), dtype=region.dtype)
    full[box] = region
    return full


def whole(shape) -> Box:
    return tuple(slice(0, int(n)) for n in shape)


def box_shape(box: Box) -> tuple[int, ...]:
    return tuple(s.stop - s.start for s in box)


def grow(box: Box, margin, shape) -> Box:
    """``box`` grown by ``margin`` voxels per axis (an int or one per axis), clipped to ``shape``."""
    margin = np.broadcast_to(np.asarray(margin, dtype=int), (len(box),))
    return tuple(slice(max(0, s.start - int(m)), min(int(n), s.stop + int(m))) for s, m, n in zip(box, margin, shape))


def bounding_box(mask: np.ndarray) -> Box | None:
    """Smallest box holding every True voxel of ``mask``; None when there is none."""
    boxes = ndimage.find_objects(mask.astype(np.uint8, copy=False))
    return boxes[0] if boxes and boxes[0] is not None else None


def foreground_region(label_map: np.ndarray) -> Box:
    """The box of ``label_map``'s non-zero voxels plus one voxel (so that only a vertebra at the image border touches
    the box's border); an empty box when there are none."""
    box = bounding_box(label_map > 0)
    return grow(box, 1, label_map.shape) if box is not None else tuple(slice(0, 0) for _ in label_map.shape)


def touches_inner_face(mask: np.ndarray, box: Box, shape) -> list[tuple[int, int]]:
    """(axis, side) of every face of ``box`` that lies inside the image (not on its border) and that ``mask`` (the
    box's content) reaches: there the region may be too small. side -1 = low face, +1 = high face."""
    faces = []
    for axis, (s, n) in enumerate(zip(box, shape)):
        if s.start > 0 and np.take(mask, 0, axis=axis).any():
            faces.append((axis, -1))
        if s.stop < n and np.take(mask, mask.shape[axis] - 1, axis=axis).any():
            faces.append((axis, 1))
    return faces


def keep_largest_components(mask: np.ndarray, max_components: int, min_voxels: int) -> tuple[np.ndarray, int, int]:
    """The largest ``max_components`` connected components (26-connectivity) of ``mask`` with at least
    ``min_voxels`` voxels. Returns (kept mask, number of components found, number kept)."""
    labelled, count = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if count == 0:
        return np.zeros(mask.shape, bool), 0, 0
    sizes = np.bincount(labelled.ravel(), minlength=count + 1)[1:]
    candidates = np.flatnonzero(sizes >= min_voxels) + 1
    kept = candidates[np.argsort(-sizes[candidates - 1], kind="stable")][:max_components]
    lookup = np.zeros(count + 1, bool)
    lookup[kept] = True
    return lookup[labelled], int(count), int(len(kept))


def region_image(image: sitk.Image, box: Box) -> sitk.Image:
    """The part of ``image`` inside ``box`` (array slices), with its exact physical position."""
    z, y, x = box
    return image[x.start:x.stop, y.start:y.stop, z.start:z.stop]


def orientation_axes(image: sitk.Image, orientation: str) -> tuple[tuple[int, ...], tuple[bool, ...]]:
    """How ``sitk.DICOMOrient(image, orientation)`` rearranges the array (z, y, x): oriented array axis ``a`` is the
    original array axis ``permutation[a]``, reversed where ``flipped[a]``. Found on a small probe image with the
    same direction (DICOMOrient only permutes and flips)."""
    probe = sitk.GetImageFromArray(np.arange(24, dtype=np.int16).reshape(4, 3, 2))  # distinct axis lengths
    probe.SetDirection(image.GetDirection())
    oriented = sitk.GetArrayFromImage(sitk.DICOMOrient(probe, orientation))
    lengths = (4, 3, 2)
    permutation = tuple(lengths.index(n) for n in oriented.shape)
    corner = oriented[0, 0, 0]
    strides = (6, 2, 1)
    flipped = tuple(bool((oriented[tuple(1 if a == axis else 0 for a in range(3))] - corner)
                         * np.sign(strides[permutation[axis]]) < 0) for axis in range(3))
    return permutation, flipped


def box_to_original(box: Box, oriented_shape, permutation, flipped) -> Box:
    """A box of the oriented array -> the same voxels' box in the original array."""
    original = [None] * 3
    for axis, (s, n) in enumerate(zip(box, oriented_shape)):
        original[permutation[axis]] = slice(n - s.stop, n - s.start) if flipped[axis] else s
    return tuple(original)


def array_to_original(array: np.ndarray, permutation, flipped) -> np.ndarray:
    """An oriented (..., z, y, x) array -> the original array's axis order (a view where numpy allows)."""
    lead = array.ndim - 3
    for axis in range(3):
        if flipped[axis]:
            array = np.flip(array, axis=lead + axis)
    order = [int(np.argsort(permutation)[a]) for a in range(3)]
    return array.transpose(list(range(lead)) + [lead + o for o in order])
