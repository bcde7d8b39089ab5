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

Most merged components still show their disc: along the spine, the count of their voxels per slab dips where the
disc lies between the two bodies (the network marks the disc space thinly, or not at all). :func:`split_at_discs`
cuts a component at such a valley - where the slab count drops below ``DISC_VALLEY_RATIO`` of the lower of the two
peaks beside it - when each side is a vertebra of its own: at least ``MIN_SIDE_VOLUME_RATIO`` of its neighbours'
median volume (or, cut by the field of view, ``MIN_CUT_SIDE_VOLUME_RATIO``: a partial vertebra), its centroid at least ``MIN_SIDE_SEPARATION_PITCHES``
from the other side's. The parts are cut again the same way (three vertebrae in one component). This works at the
chain's ends too (a last component holding the last two vertebrae), where :func:`split_merged` has no neighbour on one
side to measure against; it runs first, :func:`split_merged` takes the merges that show no valley.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy.spatial import cKDTree

from vfscreen.core.vertebra_sizes import cranio_caudal_axis
from vfscreen.inference.geometry import array_indices_to_world, voxel_shadow_mm

MERGED_VOLUME_RATIO = 1.6  # a component at least this much larger than its neighbours' median volume ...
MERGED_SPAN_PITCHES = 2.5  # ... whose neighbours' centroids are this many local pitches apart holds two vertebrae
JOIN_SEPARATION_PITCHES = 0.35  # neighbouring components closer than this along the spine (in pitches: the median
# distance between neighbouring components) are pieces of one vertebra; modelling choice, not measured
MIN_COMPONENTS_FOR_PITCH = 4  # fewer components give no pitch to measure against: nothing is joined
# a valley of the slab count along the spine below this share of the lower peak beside it is a disc. On the fold-0
# validation cases of a demo model (9 cases, 64 components), the components holding two vertebrae had valleys of
# 0.08-0.65 and single vertebrae 0.97 and above; a modelling choice inside that gap, nearer the merged side
DISC_VALLEY_RATIO = 0.75
MIN_SIDE_VOLUME_RATIO = 0.5  # each side of a disc cut holds this share of its neighbours' median volume ...
MIN_CUT_SIDE_VOLUME_RATIO = 0.15  # ... or, cut by the field of view's end (a partial vertebra), this share
MIN_SIDE_SEPARATION_PITCHES = 0.5  # the two sides' centroids this many pitches apart along the spine, at least
NEIGHBOURS_FOR_VOLUME = 4  # the median volume of this many nearest whole components is "a vertebra here"


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


def split_at_discs(voxel_lists: list[np.ndarray], reference: sitk.Image, image_shape=None, box_start=None
                   ) -> tuple[list[np.ndarray], list[int]]:
    """voxel_lists: (M_i, 3) zyx indices of each component (any order) on ``reference``'s grid; ``image_shape`` and
    ``box_start`` as in :func:`split_merged`. Returns (voxel lists head -> feet, every component that shows a disc
    cut there; per list, the index in ``voxel_lists`` of the component it comes from)."""
    if len(voxel_lists) < 3:
        return list(voxel_lists), list(range(len(voxel_lists)))
    centroids, cut, order = _chain(voxel_lists, reference, image_shape, box_start)
    volumes = np.array([len(voxel_lists[i]) for i in order], dtype=float)
    pitch = float(np.median(np.linalg.norm(np.diff(centroids, axis=0), axis=1)))
    touching_end = _end_slices(reference, image_shape, box_start)
    result, sources = [], []
    for row, source in enumerate(order):
        axis = centroids[min(row + 1, len(order) - 1)] - centroids[max(row - 1, 0)]
        axis /= max(float(np.linalg.norm(axis)), 1e-9)
        others = [other for other in np.argsort(np.abs(np.arange(len(order)) - row), kind="stable")
                  if other != row and not cut[other]][:NEIGHBOURS_FOR_VOLUME]
        vertebra_voxels = float(np.median(volumes[others])) if others else 0.0
        parts = _cut_at_valleys(voxel_lists[source], reference, axis, pitch, vertebra_voxels, touching_end)
        result += parts
        sources += [int(source)] * len(parts)
    return result, sources


def _chain(voxel_lists, reference, image_shape, box_start):
    """(centroids head -> feet (N, 3), per row whether it is cut by the field of view's ends, the order)."""
    centroids = np.array([array_indices_to_world(reference, v.mean(axis=0, keepdims=True))[0] for v in voxel_lists])
    order = np.argsort(-centroids[:, 2], kind="stable")  # head -> feet (LPS +z superior)
    touching_end = _end_slices(reference, image_shape, box_start)
    return centroids[order], [touching_end(voxel_lists[i]) for i in order], order


def _end_slices(reference, image_shape, box_start):
    """f(zyx indices on ``reference``'s grid) -> whether they reach the image's first or last slice along the
    cranio-caudal axis (the grid sits at ``box_start`` in an image of ``image_shape``; None: the grid is the image)."""
    axis = cranio_caudal_axis(reference)
    offset = 0 if box_start is None else int(box_start[axis])
    size = reference.GetSize()[::-1][axis] if image_shape is None else image_shape[axis]
    return lambda indices: bool(indices[:, axis].min() + offset == 0 or indices[:, axis].max() + offset == size - 1)


def _cut_at_valleys(voxels, reference, axis, pitch, vertebra_voxels, touching_end) -> list[np.ndarray]:
    """The component's voxels cut at every disc valley of its slab count along ``axis`` (head -> feet)."""
    along = (array_indices_to_world(reference, voxels) @ axis)
    slab_mm = voxel_shadow_mm(reference, axis)
    edges = np.arange(along.min(), along.max() + 2 * slab_mm, slab_mm)
    counts = np.convolve(np.histogram(along, bins=edges)[0], [0.25, 0.5, 0.25], mode="same")
    best = None
    for slab in range(1, len(counts) - 1):
        depth = counts[slab] / max(min(counts[:slab].max(), counts[slab + 1:].max()), 1e-9)
        if depth >= DISC_VALLEY_RATIO or (best is not None and depth >= best[0]):
            continue
        upper = along < edges[slab] + slab_mm / 2
        if upper.all() or not upper.any():
            continue
        separation = along[~upper].mean() - along[upper].mean()
        if separation < MIN_SIDE_SEPARATION_PITCHES * pitch:
            continue
        if all(side.sum() >= MIN_SIDE_VOLUME_RATIO * vertebra_voxels or (
                side.sum() >= MIN_CUT_SIDE_VOLUME_RATIO * vertebra_voxels and touching_end(voxels[side]))
               for side in (upper, ~upper)):
            best = (depth, upper)
    if best is None:
        return [voxels]
    upper = best[1]
    return [part for side in (upper, ~upper)
            for part in _cut_at_valleys(voxels[side], reference, axis, pitch, vertebra_voxels, touching_end)]


def split_merged(voxel_lists: list[np.ndarray], reference: sitk.Image, image_shape=None, box_start=None
                 ) -> tuple[list[np.ndarray], list[bool]]:
    """voxel_lists: (M_i, 3) zyx indices of each component (any order) on ``reference``'s grid; ``image_shape`` and
    ``box_start``: the whole image's shape and the grid's offset in it (None: the grid is the image), to tell which
    components are cut by the field of view's upper or lower end (never split, nor measured against). Returns (voxel lists, head
    -> feet, with every merged component replaced by its two halves; per list, whether it is such a half)."""
    if not voxel_lists:
        return [], []
    centroids, cut, order = _chain(voxel_lists, reference, image_shape, box_start)
    voxel_lists = [voxel_lists[i] for i in order]
    volumes = np.array([len(v) for v in voxel_lists], dtype=float)
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
