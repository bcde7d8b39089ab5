"""Two vertebrae in one component: found by their size and place in the chain, split between them.

A coarse network often does not resolve the disc between two vertebrae, and where its probabilities show no valley
either (vfscreen.inference.label_consistency.split_touching finds none), one component holds both. The chain model
then gives it one name and every name beyond it shifts by one, and the grades of two vertebrae are read off one
mask. Such a component stands out among its neighbours: its volume is about twice theirs, and its centroid lies
half-way between the two vertebrae it holds, about 1.5 pitches from each neighbour (its neighbours' centroids three
pitches apart instead of two). Where both hold, the component is cut in two by the plane through its centroid
perpendicular to the line between its neighbours' centroids (the local spine axis) - for naming and for the mask;
the cut is not the disc (its place is the centroid's, not measured), so the two halves are flagged in the output.

The inverse happens too: where the network is unsure inside one vertebra (between its left and right halves, body and
arch), vfscreen.inference.label_consistency.split_touching finds two cores and makes two components at the same level.
Each is about half a vertebra, the chain model drops both or gives them two names, and the names beyond shift. Two
neighbouring vertebrae are a pitch apart along the spine; two components whose centroids are much closer than that
along it (``JOIN_SEPARATION_PITCHES``) and that touch are pieces of one vertebra and are joined (:func:`join_pieces`);
a separate component at the same level (a rib or process piece called vertebra) is not.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy.spatial import cKDTree

from vfscreen.core.vertebra_sizes import cranio_caudal_axis
from vfscreen.inference.geometry import array_indices_to_world, touches_border

MERGED_VOLUME_RATIO = 1.6  # a component at least this much larger than its neighbours' median volume ...
MERGED_SPAN_PITCHES = 2.5  # ... whose neighbours' centroids are this many local pitches apart holds two vertebrae
JOIN_SEPARATION_PITCHES = 0.35  # neighbouring components closer than this along the spine (in pitches: the median
# distance between neighbouring components) are pieces of one vertebra; modelling choice, not measured
MIN_COMPONENTS_FOR_PITCH = 4  # fewer components give no pitch to measure against: nothing is joined


def join_pieces(voxel_lists: list[np.ndarray], reference: sitk.Image) -> tuple[list[np.ndarray], list[int]]:
    """voxel_lists: (M_i, 3) zyx indices of each component on ``reference``'s grid. Returns (voxel lists, head -> feet,
    with every set of pieces of one vertebra joined; per list, how many components it was made of). Neighbours that
    touch (voxels within 1.5 voxel sizes) are joined closest first; the spine's direction at a pair is the line
    between the components around it."""
    touching_mm = 1.5 * max(reference.GetSpacing())
    counts = [1] * len(voxel_lists)
    while voxel_lists:
        centroids = np.array([array_indices_to_world(reference, v.mean(axis=0, keepdims=True))[0]
                              for v in voxel_lists])
        order = np.argsort(-centroids[:, 2], kind="stable")  # head -> feet (LPS +z superior)
        voxel_lists, counts, centroids = [voxel_lists[i] for i in order], [counts[i] for i in order], centroids[order]
        if len(voxel_lists) < MIN_COMPONENTS_FOR_PITCH:
            break
        pitch = float(np.median(np.linalg.norm(np.diff(centroids, axis=0), axis=1)))
        separations = np.array([_separation_along_spine(centroids, row) for row in range(len(centroids) - 1)])
        close = [row for row in np.argsort(separations, kind="stable")
                 if separations[row] < JOIN_SEPARATION_PITCHES * pitch
                 and _touch(voxel_lists[row], voxel_lists[row + 1], reference, touching_mm)]
        if not close:
            break
        row = int(close[0])
        voxel_lists[row:row + 2] = [np.concatenate(voxel_lists[row:row + 2])]
        counts[row:row + 2] = [counts[row] + counts[row + 1]]
    return voxel_lists, counts


def _touch(first: np.ndarray, second: np.ndarray, reference: sitk.Image, distance_mm: float) -> bool:
    spacing_zyx = np.array(reference.GetSpacing())[::-1]
    distance, _ = cKDTree(first * spacing_zyx).query(second * spacing_zyx, distance_upper_bound=distance_mm)
    return bool(np.isfinite(distance).any())


def _separation_along_spine(centroids: np.ndarray, row: int) -> float:
    """Distance (mm) between the centroids of components ``row`` and ``row + 1`` along the spine: projected on the
    line from the component before the pair to the one after it (the pair's own line at the chain's ends)."""
    before, after = max(row - 1, 0), min(row + 2, len(centroids) - 1)
    axis = centroids[after] - centroids[before]
    axis /= max(float(np.linalg.norm(axis)), 1e-9)
    return abs(float((centroids[row + 1] - centroids[row]) @ axis))


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
