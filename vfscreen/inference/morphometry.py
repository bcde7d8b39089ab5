"""Genant morphometry from a vertebra label mask (Pisov et al. 2020's interpretable index, without keypoints).

Per vertebra:
1. local frame: the spine axis ``u`` (head -> feet) from the centroids of the neighbouring vertebrae (one neighbour:
   towards it; no neighbour: the vertebra's principal axis closest to the patient's head-feet axis), the anterior
   direction ``a`` = the patient's anterior (world -y, LPS) made perpendicular to ``u``, and the lateral ``l = u x a``;
2. vertebral body: in a mid-line strip, walking from the most anterior voxel backwards, the first gap of at least
   ``min_canal_gap_mm`` is the spinal canal; everything anterior to it is the body (pedicles, lamina, processes and
   the canal excluded). Without a gap (a body-only mask) the whole mask is the body;
3. mid-sagittal plane: the (u, a) plane through the body's lateral centre;
4. heights where Genant defines them (Genant et al. 1993; the six points of quantitative morphometry sit at the
   corners of the body): anterior and posterior at the anterior and posterior walls, middle at mid-depth. Corners are
   rounded and partial-volumed, so the cranial and caudal endplates are sampled by columns across the central part of
   the body (``vfscreen.genant.ENDPLATE_FIT_DEPTH_FRACTIONS``), each fitted by a quadratic along the depth and evaluated at the walls; the
   middle height is its column's own. A column's extent along ``u`` is estimated by a lattice ratio:
   (mask voxels in the column prism) / (all grid voxels in the prism) x (length of the prism), which averages the
   voxel staircase of any grid orientation instead of quantising to one voxel. With a CT (Hounsfield units), each
   column's two end points are then moved towards the CT's own endplate edges (:mod:`vfscreen.inference.endplates`:
   mask and edge weighted by their uncertainties; a profile without a clear edge keeps the mask's end point). Each
   height carries a standard deviation: per end point that of the weighted mean (or of the mask alone); for the wall
   heights also the endplate fit's scatter and how much the extrapolation to
   the wall depends on the fit's form (quadratic vs a straight line through the columns nearest the wall);
5. G = min / max and the Genant grade via :mod:`vfscreen.genant`. Vertebrae whose mask touches the border of the
   image are ``truncated`` and not measured.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from vfscreen.genant import ENDPLATE_FIT_DEPTH_FRACTIONS, genant_ratio, grade_from_heights
from vfscreen.inference import deformity, endplates
from vfscreen.inference.geometry import (WORLD_ANTERIOR, WORLD_SUPERIOR, array_indices_to_local_affine,
                                         array_indices_to_world, touches_border, voxel_shadow_mm)
from vfscreen.labels import MAX_VERSE_ID, is_vertebra, spine_position

ENDPLATE_FIT_STEP = 0.05  # columns 5 % of the depth apart across vfscreen.genant.ENDPLATE_FIT_DEPTH_FRACTIONS
MIN_FIT_COLUMNS = 5
MIN_BODY_VOXELS = 20
CORE_EROSION_MM = 3.0  # trabecular core: body voxels at least this far (and 1.5 voxels) inside the body surface
MIN_CORE_VOXELS = 8
HEIGHT_NAMES = ("anterior", "middle", "posterior")


@dataclass
class VertebraMorphometry:
    label: int  # VerSe id
    centroid_mm: np.ndarray  # (3,) world (LPS) centroid of the whole vertebra
    truncated: bool
    spine_axis: np.ndarray  # (3,) unit, head -> feet
    anterior_axis: np.ndarray  # (3,) unit, perpendicular to spine_axis
    body_centroid_mm: np.ndarray | None = None  # (3,) centroid of the isolated vertebral body
    heights_mm: dict | None = None  # {"anterior", "middle", "posterior"} in mm
    genant_ratio: float | None = None
    morph_grade: int | None = None
    # (3, 2, 3): per height, the (cranial, caudal) end points in world mm - lines a ruler can check
    height_endpoints_mm: np.ndarray | None = None
    height_sd_mm: dict | None = None  # {"anterior", "middle", "posterior"}: standard deviation of each height, mm
    note: str = ""  # why a vertebra was not measured
    ratio_interval: tuple[float, float] | None = None  # 95 % interval of genant_ratio
    borderline: bool = False  # the grade's interval reaches into a neighbouring Genant band
    deformity: dict | None = None  # vfscreen.inference.deformity.assess: within / vs_neighbours / rule / type
    trabecular_hu: float | None = None  # median HU of the eroded body core (None: not measured, see density_note)
    density_note: str = ""
    extra: dict = field(default_factory=dict)


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


def _principal_axis_near_superior(points_mm: np.ndarray) -> np.ndarray:
    """Eigenvector of the point cloud's covariance closest to the patient's head-feet axis, pointing to the feet."""
    centred = points_mm - points_mm.mean(axis=0)
    _, vectors = np.linalg.eigh(centred.T @ centred)
    best = vectors[:, int(np.argmax(np.abs(vectors.T @ WORLD_SUPERIOR)))]
    return _unit(-best if best @ WORLD_SUPERIOR > 0 else best)


def spine_axes(centroids_mm: dict[int, np.ndarray], points_mm: dict[int, np.ndarray],
               truncated: set[int] = frozenset()) -> dict[int, np.ndarray]:
    """Local head -> feet axis per vertebra from neighbouring centroids (labels ordered anatomically).

    Truncated vertebrae (their centroid is biased by the cut) serve as neighbours only of other truncated ones.
    """
    whole = [label for label in centroids_mm if label not in truncated]
    ordered = sorted(whole, key=spine_position)
    axes = {label: _principal_axis_near_superior(points_mm[label]) for label in centroids_mm if label in truncated}
    for position, label in enumerate(ordered):
        previous_centroid = centroids_mm[ordered[position - 1]] if position > 0 else centroids_mm[label]
        next_centroid = centroids_mm[ordered[position + 1]] if position + 1 < len(ordered) else centroids_mm[label]
        if len(ordered) == 1 or np.linalg.norm(next_centroid - previous_centroid) < 1e-6:
            axes[label] = _principal_axis_near_superior(points_mm[label])
        else:
            axes[label] = _unit(next_centroid - previous_centroid)
    return axes


def _anterior_direction(spine_axis: np.ndarray) -> np.ndarray:
    anterior = WORLD_ANTERIOR - (WORLD_ANTERIOR @ spine_axis) * spine_axis
    if np.linalg.norm(anterior) < 0.3:  # spine nearly antero-posterior: no meaningful sagittal frame
        raise ValueError("the spine axis is almost antero-posterior")
    return _unit(anterior)


def _body_posterior_limit(anterior_mm: np.ndarray, lateral_mm: np.ndarray, bin_mm: float, strip_half_mm: float,
                          min_gap_mm: float) -> float | None:
    """Anterior coordinate where the spinal canal begins (walking backwards along the mid-line), None without canal."""
    in_strip = np.abs(lateral_mm) <= strip_half_mm
    if not in_strip.any():
        return None
    coordinates = anterior_mm[in_strip]
    front = coordinates.max()
    bins = np.floor((front - coordinates) / bin_mm).astype(int)  # 0 = most anterior bin
    occupied = np.zeros(bins.max() + 1, dtype=bool)
    occupied[bins] = True
    min_gap_bins = max(2, int(np.ceil(min_gap_mm / bin_mm)))
    empty_run = 0
    for bin_index, is_occupied in enumerate(occupied):
        if is_occupied:
            empty_run = 0
            continue
        empty_run += 1
        if empty_run >= min_gap_bins:
            gap_start = bin_index - empty_run + 1
            return front - gap_start * bin_mm
    return None


def _column_height(local_mask: np.ndarray, local_grid: np.ndarray, anterior_mm: float, lateral_mm: float,
                   half_width_mm: float, half_thickness_mm: float, margin_mm: float):
    """Height along u of the mask inside a prism around the line (a, l); lattice-ratio estimate.

    local_mask: (M, 3) mask voxel coordinates (u, a, l); local_grid: (G, 3) all grid voxel coordinates (u, a, l).
    Returns (height_mm, centre_u_mm) or None when the column holds no mask voxel.
    """
    def in_prism(coordinates):
        return ((np.abs(coordinates[:, 1] - anterior_mm) <= half_width_mm)
                & (np.abs(coordinates[:, 2] - lateral_mm) <= half_thickness_mm))

    mask_in = local_mask[in_prism(local_mask)]
    if len(mask_in) == 0:
        return None
    low, high = mask_in[:, 0].min() - margin_mm, mask_in[:, 0].max() + margin_mm
    grid_in = local_grid[in_prism(local_grid)]
    grid_count = np.count_nonzero((grid_in[:, 0] >= low) & (grid_in[:, 0] <= high))
    height = len(mask_in) / max(grid_count, 1) * (high - low)
    return float(height), float(mask_in[:, 0].mean())


def _trabecular_density(ct_array: np.ndarray, body_indices: np.ndarray, box: tuple[slice, ...],
                        spacing_zyx) -> tuple[float | None, str]:
    """Median HU of the body's core (eroded ``CORE_EROSION_MM`` from its surface), or (None, why not)."""
    body_mask = np.zeros([b.stop - b.start for b in box], bool)
    body_mask[tuple((body_indices - np.array([b.start for b in box])).T)] = True
    depth_mm = ndimage.distance_transform_edt(np.pad(body_mask, 1), sampling=spacing_zyx)[1:-1, 1:-1, 1:-1]
    core = depth_mm >= max(CORE_EROSION_MM, 1.5 * max(spacing_zyx))
    if np.count_nonzero(core) < MIN_CORE_VOXELS:
        return None, "body too small at this voxel size for a trabecular core: density not measured"
    values = ct_array[box][core]
    median = float(np.median(values))
    if median > deformity.MAX_TRABECULAR_HU:
        return None, f"trabecular median {median:.0f} HU (metal or contrast-like): density not reported"
    return round(median, 1), ""


def _polynomial_at(positions: np.ndarray, values: np.ndarray, at: float, degree: int) -> tuple[float, float]:
    """Least-squares polynomial of ``degree`` evaluated at ``at``: (value, prediction variance from the residual
    scatter propagated through the design matrix)."""
    design = np.vander(positions, degree + 1)
    coefficients, *_ = np.linalg.lstsq(design, values, rcond=None)
    residual = values - design @ coefficients
    scatter = float(residual @ residual) / max(len(values) - degree - 1, 1)
    point = np.vander(np.array([at]), degree + 1)[0]
    return float(point @ coefficients), scatter * float(point @ np.linalg.pinv(design.T @ design) @ point)


def _fit_and_evaluate(positions: np.ndarray, values: np.ndarray, at: float, shared_sd: float
                      ) -> tuple[float, float]:
    """Quadratic least-squares fit of an endplate (u over the anterior coordinate), evaluated at the wall ``at``.

    Returns (value, standard deviation): the fit's prediction uncertainty, the end points' shared (systematic)
    uncertainty, which does not average out over the columns, and the extrapolation's dependence on the fit's form:
    half the difference to a straight line fitted to the half of the columns nearest the wall (a rim that curves
    more than a parabola makes the two disagree)."""
    value, variance = _polynomial_at(positions, values, at, 2)
    near = np.abs(positions - at) <= np.ptp(positions) / 2 + 1e-9
    straight, _ = _polynomial_at(positions[near], values[near], at, 1)
    return value, float(np.sqrt(variance + shared_sd ** 2 + (0.5 * (value - straight)) ** 2))


def measure_vertebra(verse_map: np.ndarray, reference: sitk.Image, label: int, bbox: tuple[slice, ...],
                     centroid_mm: np.ndarray, spine_axis: np.ndarray, min_canal_gap_mm: float = 4.0,
                     ct_array: np.ndarray | None = None) -> VertebraMorphometry:
    """Measure one vertebra (see the module docstring). ``bbox``: numpy slices of the label in ``verse_map``;
    ``ct_array``: the CT in HU on the same grid (endplate edges and trabecular density), None = the mask alone."""
    truncated = touches_border(verse_map.shape, bbox)
    try:
        anterior_axis = _anterior_direction(spine_axis)
    except ValueError as error:
        return VertebraMorphometry(label, centroid_mm, truncated, spine_axis, WORLD_ANTERIOR.copy(), note=str(error))
    result = VertebraMorphometry(label, centroid_mm, truncated, spine_axis, anterior_axis)
    if truncated:
        result.note = "cut by the field of view: not measured"
        return result
    lateral_axis = np.cross(spine_axis, anterior_axis)
    frame = np.stack([spine_axis, anterior_axis, lateral_axis], axis=1)  # world -> (u, a, l)
    shadows = [voxel_shadow_mm(reference, axis) for axis in (spine_axis, anterior_axis, lateral_axis)]

    # grow the box so every column's prism (mask extent + one voxel shadow along u) lies inside it
    pads = [int(np.ceil(2 * shadows[0] / spacing)) + 1 for spacing in reversed(reference.GetSpacing())]
    grown = tuple(slice(max(box.start - pad, 0), min(box.stop + pad, size))
                  for box, size, pad in zip(bbox, verse_map.shape, pads))
    matrix, offset = array_indices_to_local_affine(reference, centroid_mm, frame)  # index -> (u, a, l)
    grid_indices = np.indices([box.stop - box.start for box in grown], dtype=np.int32).reshape(3, -1).T
    grid_indices += np.array([box.start for box in grown], dtype=np.int32)
    is_mask = (verse_map[grown] == label).reshape(-1)
    local_mask = grid_indices[is_mask] @ matrix + offset  # (M, 3) (u, a, l) of the vertebra's voxels

    posterior_limit = _body_posterior_limit(local_mask[:, 1], local_mask[:, 2], bin_mm=max(shadows[1], 0.5),
                                            strip_half_mm=max(3.0, shadows[2]), min_gap_mm=min_canal_gap_mm)
    in_body = np.ones(len(local_mask), bool) if posterior_limit is None else local_mask[:, 1] >= posterior_limit
    body = local_mask[in_body]
    result.extra["canal_found"] = posterior_limit is not None
    if ct_array is not None and len(body) >= MIN_BODY_VOXELS:
        result.trabecular_hu, result.density_note = _trabecular_density(
            ct_array, grid_indices[is_mask][in_body], grown, reference.GetSpacing()[::-1])
    if len(body) < MIN_BODY_VOXELS:
        result.note = "vertebral body too small to measure"
        return result
    lateral_centre = float(np.median(body[:, 2]))
    body_centre_local = np.array([body[:, 0].mean(), body[:, 1].mean(), lateral_centre])
    result.body_centroid_mm = centroid_mm + frame @ body_centre_local

    half_thickness = max(3.0, shadows[2])
    slab = body[np.abs(body[:, 2] - lateral_centre) <= half_thickness]
    # all grid voxels of the mid-sagittal slab (only these can fall into a measurement prism)
    grid_lateral = grid_indices @ matrix[:, 2] + offset[2]
    slab_grid = grid_indices[np.abs(grid_lateral - lateral_centre) <= half_thickness]
    local_grid = slab_grid @ matrix + offset  # (G, 3) (u, a, l)
    # depth at mid-height: a slightly tilted axis must not lengthen the body by the endplates' corners
    mid_height = np.abs(slab[:, 0] - np.median(slab[:, 0])) <= max(shadows[0], 0.15 * np.ptp(slab[:, 0]))
    slab = slab[mid_height] if np.count_nonzero(mid_height) >= MIN_BODY_VOXELS // 2 else slab
    # the walls at the outermost voxel centres: the endplate fits are evaluated there, where the mask is
    front, back = slab[:, 1].max(), slab[:, 1].min()
    depth = front - back
    # every column prism spans at least one lattice line along a (neighbouring prisms may overlap)
    half_width = max(0.5 * ENDPLATE_FIT_STEP * depth, shadows[1])
    local_grid_body = local_grid if posterior_limit is None else local_grid[local_grid[:, 1] >= posterior_limit]

    def column(position):
        # margin 1.5 voxel shadows: the prism's ends fall between lattice planes, so an axis-aligned grid is
        # counted exactly (N mask voxels of spacing s -> N * s)
        return _column_height(body, local_grid_body, position, lateral_centre, half_width, half_thickness,
                              margin_mm=1.5 * shadows[0])

    # Genant: anterior / posterior heights at the walls, the middle at mid-depth. Corners are rounded and
    # partial-volumed, so each endplate is fitted across the central part of the body and evaluated at the walls.
    fractions = np.arange(ENDPLATE_FIT_DEPTH_FRACTIONS[0], ENDPLATE_FIT_DEPTH_FRACTIONS[1] + 1e-9, ENDPLATE_FIT_STEP)
    samples = [(back + fraction * depth, column(back + fraction * depth)) for fraction in fractions]
    samples = [(position, found) for position, found in samples if found is not None]
    middle = column((front + back) / 2)
    if middle is None or len(samples) < MIN_FIT_COLUMNS:
        result.note = "too few body columns to fit the endplates"
        return result
    positions = np.array([position for position, _ in samples] + [(front + back) / 2])  # columns, then middle
    columns = [found for _, found in samples] + [middle]
    cranial = np.array([centre - height / 2 for height, centre in columns])  # u grows head -> feet
    caudal = np.array([centre + height / 2 for height, centre in columns])
    quantisation_sd = shadows[0] / np.sqrt(12.0)  # one mask end point: uniform within a voxel shadow along u
    cranial_sd, caudal_sd = np.full(len(columns), quantisation_sd), np.full(len(columns), quantisation_sd)
    if ct_array is not None:  # the CT's own endplate edges (vfscreen.inference.endplates)
        lines = [frame @ np.array([0.0, da, dl]) for da in (-0.5 * half_width, 0.0, 0.5 * half_width)
                 for dl in np.linspace(-0.8 * half_thickness, 0.8 * half_thickness, 5)]
        refined = 0
        for ends, sds, outward in ((cranial, cranial_sd, -spine_axis), (caudal, caudal_sd, spine_axis)):
            world = centroid_mm + np.stack([ends, positions, np.full(len(ends), lateral_centre)], 1) @ frame.T
            shift, edge_sd, found = endplates.refine_edges(ct_array, reference, world, outward, np.array(lines))
            moved, sds[:] = endplates.combine_with_mask(positions[:-1], ends, shift, edge_sd, found, quantisation_sd)
            ends += moved * float(outward @ spine_axis)
            refined += int(np.count_nonzero(found))
        result.extra["edges_from_ct"] = round(refined / (2 * len(columns)), 2)
    walls = {"anterior": front, "posterior": back}
    heights, sds, endpoints = {}, {}, []
    for name in HEIGHT_NAMES:
        if name == "middle":
            ends = (cranial[-1], caudal[-1])
            end_sds = (cranial_sd[-1], caudal_sd[-1])
            position = (front + back) / 2
        else:
            position = walls[name]
            # the shared (systematic) part of the end points' uncertainty does not average out over the columns
            fitted = [_fit_and_evaluate(positions[:-1], values[:-1], position, float(np.sqrt(np.mean(sd[:-1] ** 2))))
                      for values, sd in ((cranial, cranial_sd), (caudal, caudal_sd))]
            ends = (fitted[0][0], fitted[1][0])
            end_sds = (fitted[0][1], fitted[1][1])
        heights[name] = round(float(ends[1] - ends[0]), 2)
        sds[name] = float(np.hypot(*end_sds))
        endpoints.append([centroid_mm + frame @ np.array([end, position, lateral_centre]) for end in ends])
    if min(heights.values()) <= 0:
        result.note = "endplate fit crosses itself (body shape not measurable)"
        return result
    result.heights_mm = heights
    result.height_sd_mm = sds
    result.height_endpoints_mm = np.asarray(endpoints)
    result.genant_ratio = round(genant_ratio(heights["anterior"], heights["middle"], heights["posterior"]), 4)
    result.morph_grade = grade_from_heights(heights["anterior"], heights["middle"], heights["posterior"])
    result.extra["depth_mm"] = round(float(depth), 2)
    return result


def measure_vertebrae(verse_map: np.ndarray, reference: sitk.Image, min_canal_gap_mm: float = 4.0,
                      ct: sitk.Image | None = None) -> dict[int, VertebraMorphometry]:
    """Morphometry of every vertebra in a VerSe-id label array (Z, Y, X) on ``reference``'s grid, graded by
    :func:`vfscreen.inference.deformity.assess`. ``ct``: the CT in HU on that grid, for the endplate edges and the
    trabecular density (None, or intensities that are not CT-like: heights from the mask alone, no density)."""
    boxes = ndimage.find_objects(verse_map.astype(np.int32), max_label=MAX_VERSE_ID)
    centroids, points = {}, {}
    for label, bbox in enumerate(boxes, start=1):
        if bbox is None or not is_vertebra(label):
            continue
        indices = np.argwhere(verse_map[bbox] == label) + np.array([box.start for box in bbox])
        points[label] = array_indices_to_world(reference, indices)
        centroids[label] = points[label].mean(axis=0)
    truncated = {label for label in centroids if touches_border(verse_map.shape, boxes[label - 1])}
    axes = spine_axes(centroids, points, truncated)
    ct_array, density_note = _ct_for_density(ct)
    measured = {label: measure_vertebra(verse_map, reference, label, boxes[label - 1], centroids[label], axes[label],
                                        min_canal_gap_mm, ct_array)
                for label in sorted(centroids, key=spine_position)}
    for vertebra in measured.values():
        vertebra.density_note = vertebra.density_note or density_note
    deformity.assess(measured)
    return measured


def _ct_for_density(ct: sitk.Image | None) -> tuple[np.ndarray | None, str]:
    """The CT array when its intensities look like Hounsfield units (air around -1000 present), else a note."""
    if ct is None:
        return None, ""
    array = sitk.GetArrayViewFromImage(ct)
    if float(np.percentile(array[::4, ::4, ::4], 1)) > -500.0:
        return None, "intensities are not CT-like (no air near -1000 HU): density not reported"
    return array, ""
