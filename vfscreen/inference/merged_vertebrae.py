"""Two vertebrae in one component: found by their size and place in the chain, split between them.

A coarse network often does not resolve the disc between two vertebrae, and where its probabilities show no valley
either (vfscreen.inference.label_consistency.split_touching finds none), one component holds both. The chain model
then gives it one name and every name beyond it shifts by one, and the grades of two vertebrae are read off one
mask. Such a component stands out among its neighbours: its volume is about twice theirs, and its centroid lies
half-way between the two vertebrae it holds, about 1.5 pitches from each neighbour (its neighbours' centroids three
pitches apart instead of two). Where both hold, the component is cut in two by the plane through its centroid
perpendicular to the line between its neighbours' centroids (the local spine axis) - for naming and for the mask;
the cut is not the disc (its place is the centroid's, not measured), so the two halves are flagged in the output.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from vfscreen.core.vertebra_sizes import cranio_caudal_axis
from vfscreen.inference.geometry import array_indices_to_world, touches_border

MERGED_VOLUME_RATIO = 1.6  # a component at least this much larger than its neighbours' median volume ...
MERGED_SPAN_PITCHES = 2.5  # ... whose neighbours' centroids are this many local pitches apart holds two vertebrae


def split_merged(voxel_lists: list[np.ndarray], reference: sitk.Image, image_shape=None, box_start=None
                 ) -> tuple[list[np.ndarray], list[bool]]:
    """voxel_lists: (M_i, 3) zyx indices of each component (any order) on ``reference``'s grid; ``image_shape`` and
    ``box_start``: the whole image's shape and the grid's offset in it (None: the grid is the image), to tell which
    components are cut by the field of view's upper or lower end (never split, nor measured against). Returns (voxel lists, head
    -> feet, with every merged component replaced by its two halves; per list, whether it is such a half)."""
    offset = np.zeros(3, int) if box_start is None else np.asarray(box_start, int)
    shape = tuple(reference.GetSize()[::-1]) if image_shape is None else tuple(image_shape)
    centroids = np.array([array_indices_to_world(reference, v.mean(axis=0, keepdims=True))[0] for v in voxel_lists]) \
        if voxel_lists else np.zeros((0, 3))
    order = np.argsort(-centroids[:, 2], kind="stable")  # head -> feet (LPS +z superior)
    voxel_lists = [voxel_lists[i] for i in order]
    centroids = centroids[order]
    volumes = np.array([len(v) for v in voxel_lists], dtype=float)
    axes = (cranio_caudal_axis(reference),)
    cut = [touches_border(shape, tuple(slice(int(lo) + o, int(hi) + 1 + o) for lo, hi, o in
                                       zip(v.min(axis=0), v.max(axis=0), offset)), axes) for v in voxel_lists]
    gaps = np.linalg.norm(np.diff(centroids, axis=0), axis=1)
    result, halves = [], []
    for row, voxels in enumerate(voxel_lists):
        if _is_merged(row, volumes, gaps, cut):
            axis = centroids[row + 1] - centroids[row - 1]
            axis /= max(np.linalg.norm(axis), 1e-9)
            along = (array_indices_to_world(reference, voxels) - centroids[row]) @ axis
            upper, lower = voxels[along < 0], voxels[along >= 0]  # the axis points from head to feet
            if len(upper) and len(lower):
                result += [upper, lower]
                halves += [True, True]
                continue
        result.append(voxels)
        halves.append(False)
    return result, halves


def _is_merged(row: int, volumes: np.ndarray, gaps: np.ndarray, cut: list[bool]) -> bool:
    """Interior, whole component with whole neighbours: about twice their volume, and its neighbours' centroids
    MERGED_SPAN_PITCHES local pitches apart (pitch: median of the other gaps within two pairs, none touching it)."""
    if row == 0 or row == len(volumes) - 1 or cut[row]:
        return False
    neighbours = [other for other in (row - 2, row - 1, row + 1, row + 2)
                  if 0 <= other < len(volumes) and not cut[other]]
    if not neighbours or volumes[row] < MERGED_VOLUME_RATIO * np.median(volumes[neighbours]):
        return False
    other_gaps = [gaps[pair] for pair in range(max(0, row - 3), min(len(gaps), row + 3)) if pair not in (row - 1, row)]
    if not other_gaps:
        return False
    return gaps[row - 1] + gaps[row] >= MERGED_SPAN_PITCHES * float(np.median(other_gaps))
