"""Sub-voxel endplate edges on the CT itself (the mask says where, the CT says how tall).

A vertebral body's endplate is a thin cortical layer, bright against the disc outside it. Along the body's
superior-inferior axis through a mask end point, the CT is sampled in world coordinates (linear interpolation,
cubic B-spline, ``scipy.ndimage.map_coordinates``) on a profile a few mm either side of the mask's end point; the
profiles of a few parallel lines across the measuring column are averaged. On the averaged profile the endplate's
outer edge is the strongest fall of intensity going outwards (bone -> disc), located between samples by a parabola
through the gradient. Of the usual edge definitions this one is the least pulled outwards when the cortex is thinner
than the scan's blur (the half-maximum crossing between cortical peak and disc, or the centroid of the falling flank,
move further out); it is still pulled outwards by a fraction of the blur there. A profile without
a clear edge (contrast below ``MIN_EDGE_CONTRAST_HU``, its peak at the window's inner end, non-finite values) keeps the
mask's end point, and says so.

Works for any grid orientation and spacing: the profile is a world-space line mapped to continuous voxel indices.
:func:`combine_with_mask` then weighs each edge against the mask's end point by their uncertainties.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from vfscreen.inference.geometry import voxel_shadow_mm, world_to_array_indices

EDGE_WINDOW_MM = 3.0  # search this far either side of the mask's end point (at least 1.5 CT voxel shadows)
EDGE_WINDOW_VOXELS = 1.5
MIN_EDGE_CONTRAST_HU = 75.0  # cortical peak minus the outside level below this: no clear edge, keep the mask point
# Systematic part of an edge position's uncertainty: a quarter of the CT voxel's extent along the profile (sampling),
# or three quarters of the edge's own blur (the sd of its gradient lobe), whichever is larger - a cortex thinner than
# the blur pulls the steepest fall outwards by up to most of the blur, which no single profile can tell apart.
EDGE_SYSTEMATIC_VOXEL_FRACTION = 0.25
EDGE_SYSTEMATIC_BLUR_FRACTION = 0.75


def profile_step_mm(image: sitk.Image, direction: np.ndarray) -> float:
    """Sampling step of a profile: a quarter of the CT voxel's extent along it, at most 0.25 mm."""
    return min(0.25, voxel_shadow_mm(image, direction) / 4.0)


def refine_edges(ct: np.ndarray, image: sitk.Image, points_mm: np.ndarray, outward: np.ndarray,
                 spread_mm: np.ndarray | None = None, window_mm: float | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Outer endplate edges near mask end points.

    ct: the CT (HU) as a numpy array (Z, Y, X) on ``image``'s grid; points_mm: (N, 3) world end points from the
    mask; outward: (3,) or (N, 3) unit world directions pointing out of the body (towards the disc); spread_mm:
    (K, 3) world offsets of the parallel lines whose profiles are averaged (default: the point's own line);
    window_mm: search half-width (default ``EDGE_WINDOW_MM``; at least ``EDGE_WINDOW_VOXELS`` CT voxel shadows along the
    profile).

    Returns (shift_mm (N,) along ``outward`` from the mask point to the edge, 0 where not found; sd_mm (N,) the
    edge's standard deviation: profile noise over the edge's slope and the systematic part
    (``EDGE_SYSTEMATIC_VOXEL_FRACTION``, ``EDGE_SYSTEMATIC_BLUR_FRACTION``), NaN where not found; found (N,) bool).
    """
    points = np.atleast_2d(np.asarray(points_mm, float))
    directions = np.broadcast_to(np.asarray(outward, float), points.shape)
    spread = np.zeros((1, 3)) if spread_mm is None else np.atleast_2d(np.asarray(spread_mm, float))
    shift, sd = np.zeros(len(points)), np.full(len(points), np.nan)
    found = np.zeros(len(points), bool)
    if len(points) == 0:
        return shift, sd, found
    shadow = voxel_shadow_mm(image, directions[0])
    step = profile_step_mm(image, directions[0])
    window = max(EDGE_WINDOW_MM if window_mm is None else window_mm, EDGE_WINDOW_VOXELS * shadow)
    offsets = np.arange(-window, window + step / 2, step)  # (T,)
    world = (points[:, None, None, :] + spread[None, :, None, :]
             + offsets[None, None, :, None] * directions[:, None, None, :])  # (N, K, T, 3)
    indices = world_to_array_indices(image, world.reshape(-1, 3)).T  # (3, N * K * T) continuous (k, j, i)
    values = _cubic_samples(ct, indices)
    lines = values.reshape(len(points), len(spread), len(offsets))
    profiles = lines.mean(axis=1)
    noise = lines.std(axis=1).mean(axis=1) / np.sqrt(len(spread)) if len(spread) > 1 else np.zeros(len(points))
    systematic = EDGE_SYSTEMATIC_VOXEL_FRACTION * shadow
    for index, profile in enumerate(profiles):
        edge = _steepest_fall(profile, offsets, step)
        if edge is None:
            continue
        position, slope, blur = edge
        shift[index] = position
        sd[index] = float(np.hypot(noise[index] / max(slope, 1e-6),
                                   max(systematic, EDGE_SYSTEMATIC_BLUR_FRACTION * blur)))
        found[index] = True
    return shift, sd, found


def combine_with_mask(columns_mm: np.ndarray, mask_ends_mm: np.ndarray, shift_mm: np.ndarray, edge_sd_mm: np.ndarray,
                      found: np.ndarray, quantisation_sd_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Weigh one endplate's mask end points against its CT edges by their uncertainties.

    columns_mm: (C,) anterior positions of the fit columns (their end points come first in ``mask_ends_mm``, any
    further ones, e.g. the mid-depth column, after them); mask_ends_mm, shift_mm, edge_sd_mm, found: (N,) as
    :func:`refine_edges` returns them. The mask's sd is the largest of its voxel quantisation, the scatter of its fit
    columns' end points about a quadratic (a coarse mask's staircase) and the median distance to the CT's edges
    (a mask that is off by a constant, e.g. a coarse mask resampled to a finer CT, shows no scatter; the CT's edge,
    pulled outwards by a thin cortex, may be the one that is off - the disagreement makes both uncertain).
    Returns (how far each end point moves along the edge's outward direction (N,), its sd (N,): the weighted mean's,
    plus the spread between the two readings taken as alternatives with the same weights)."""
    count = len(columns_mm)
    fit = np.polyval(np.polyfit(columns_mm, mask_ends_mm[:count], 2), columns_mm)
    scatter = float(np.sqrt(np.sum((mask_ends_mm[:count] - fit) ** 2) / max(count - 3, 1)))
    disagreement = float(np.median(np.abs(shift_mm[found]))) if found.any() else 0.0
    mask_sd = max(quantisation_sd_mm, scatter, disagreement)
    edge_sd = np.where(found, np.nan_to_num(edge_sd_mm, nan=np.inf), np.inf)
    weight = mask_sd ** 2 / (mask_sd ** 2 + edge_sd ** 2)  # 0 where no edge was found
    shift = np.where(found, shift_mm, 0.0)
    # the weighted mean's variance, plus that of the two readings as alternatives (mask right / CT right)
    variance = 1.0 / (1.0 / mask_sd ** 2 + 1.0 / edge_sd ** 2) + weight * (1.0 - weight) * shift ** 2
    return weight * shift, np.sqrt(variance)


def _cubic_samples(ct: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Cubic B-spline interpolation of ``ct`` at continuous indices (3, P); the spline is fitted on the bounding box
    of the points only (a few voxels), not on the whole scan."""
    low = np.maximum(np.floor(indices.min(axis=1)).astype(int) - 3, 0)
    high = np.minimum(np.ceil(indices.max(axis=1)).astype(int) + 4, ct.shape)
    if np.any(high <= low):  # every point outside the scan
        return np.full(indices.shape[1], np.nan, np.float32)
    crop = np.asarray(ct[tuple(slice(a, b) for a, b in zip(low, high))], np.float64)
    coefficients = ndimage.spline_filter(crop, order=3, mode="nearest")
    return ndimage.map_coordinates(coefficients, indices - low[:, None], output=np.float32, order=3,
                                   mode="nearest", prefilter=False)


def _steepest_fall(profile: np.ndarray, offsets: np.ndarray, step: float) -> tuple[float, float, float] | None:
    """(position, |slope| in HU/mm, blur sd in mm) of the outer edge on one profile (outward = increasing offset),
    or None. The blur is the width of the gradient lobe at half its depth / 2.355 (Gaussian)."""
    if not np.all(np.isfinite(profile)):
        return None
    gradient = np.gradient(profile, step)
    # strongest fall going outwards (cortex -> disc), falls far from the mask's end point weighted down: across a thin
    # disc the next vertebra's cortex -> cancellous fall can be as strong
    prior = np.exp(-0.5 * (offsets / (0.5 * offsets[-1])) ** 2)
    edge = int(np.argmin(gradient * prior))
    while 0 < edge < len(profile) - 1 and min(gradient[edge - 1], gradient[edge + 1]) < gradient[edge]:
        edge += 1 if gradient[edge + 1] < gradient[edge - 1] else -1  # to the fall's own steepest sample
    if gradient[edge] >= 0 or edge == 0 or edge == len(profile) - 1:
        return None
    peak = int(np.argmax(profile[: edge + 1]))
    low = edge + int(np.argmin(profile[edge:]))
    if profile[peak] - profile[low] < MIN_EDGE_CONTRAST_HU or peak == 0:
        return None  # no clear edge, or the bone keeps brightening inwards beyond the window
    before, at, after = gradient[edge - 1: edge + 2]
    curvature = before - 2 * at + after
    vertex = 0.5 * (before - after) / curvature if curvature > 0 else 0.0  # parabola through the three samples
    steep = gradient <= 0.5 * at
    first = edge - int(np.argmin(steep[edge::-1])) if not steep[: edge + 1].all() else 0
    last = edge + int(np.argmin(steep[edge:])) if not steep[edge:].all() else len(profile)
    blur = (last - first) * step / 2.355
    return float(offsets[edge] + np.clip(vertex, -0.5, 0.5) * step), float(-at), float(blur)
