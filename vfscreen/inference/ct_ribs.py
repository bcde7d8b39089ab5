"""Ribs read off the CT itself, for naming when no network or mask shows them.

A rib is bone outside the vertebrae that starts at a vertebra (its head at the costovertebral joint, within
``vfscreen.inference.landmarks.RIB_CONTACT_MM``) and runs far laterally; that is all the chain model needs to know
which vertebrae are thoracic (:mod:`vfscreen.inference.landmarks`). A segmentation network trained at a CPU budget does
not learn ribs (the demo model's rib pseudo-Dice stays near 0), but the CT shows them plainly: bone is the brightest
tissue. Here:

1. *Bone* is every voxel at or above a threshold set on this scan, half-way between the soft tissue around the
   vertebrae (median HU of a shell 3-10 mm outside them, HU in [-200, 200]) and the vertebrae's bright bone (90th
   percentile HU inside them) - so it follows the scanner, the patient's bone density and the voxel size instead of a
   fixed HU value; the vertebrae themselves (and 1 voxel around them) are left out. A network's coarse vertebra
   mask often covers the ribs' first centimetres as well (next to its vertebra a rib looks like the vertebra's
   bone), so of a network's mask only the thick part is left out (``thin_parts_searched_mm``: what a binary opening
   with a ball of that radius keeps - bodies and arches, not a rib's ~1 cm section nor a process); a mask given by
   the user is taken as drawn (its vertebrae own their processes).
2. A connected bone component is *rib-like* when it reaches ``LATERAL_REACH_MM`` away from the spine's midline in the
   patient's left-right direction - farther than a transverse process - or runs out of the field of view at its left
   or right edge after at least ``MIN_LATERAL_ROOM_MM`` (a narrow field of view cuts the ribs), and is thin: its
   volume per mm of its longest extent is at most ``MAX_CROSS_SECTION_MM2`` (a rib, not the iliac wing), and it does
   not touch the sacrum (iliac bones do).

Left-right reach excludes what also lies next to a vertebral body but stays near the midline: the aorta and vena cava
with contrast, calcified discs, osteophytes. These are modelling choices (checked on the phantom's ribs and on the
real example CT, see ``tests/test_ct_ribs.py``), not anatomical measurements. Which rib-like component touches which
vertebra is decided in :func:`vfscreen.inference.landmarks.find_landmarks`, the same as for a network's rib mask.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from vfscreen.inference import spine_region
from vfscreen.inference.geometry import array_indices_to_world, voxel_volume_mm3

# a rib-like component reaches this far from the spine's midline (left-right); chosen among 45, 50 and 60 mm by
# identification on the demo's fold-0 validation cases (two demo-budget models), with the edge rule below
LATERAL_REACH_MM = 50.0
MIN_LATERAL_ROOM_MM = 25.0  # a field of view narrower than this beside the spine cannot show ribs; and a bone cut by
# the field's edge must run this far from the midline to count as a rib
MAX_CROSS_SECTION_MM2 = 400.0  # volume / longest extent of a rib-like component (a rib's section is ~1 cm2)
SEARCH_MARGIN_MM = 60.0  # how far beyond the vertebrae's box the ribs are followed
SHELL_MM = (3.0, 10.0)  # soft-tissue shell around the vertebrae that sets the bone threshold
# a network's vertebra mask: parts thinner than this radius are searched for ribs (chosen among 0, 3, 4 and 5 mm by
# identification on the demo's fold-0 validation cases, two demo-budget models; vfscreen_benchmark naming measures it)
NETWORK_MASK_THIN_PART_MM = 4.0


def bone_threshold(ct: np.ndarray, vertebrae: np.ndarray, spacing_zyx: np.ndarray) -> float | None:
    """Half-way between the soft tissue around the vertebrae and their bright bone (HU); None without either.
    The shell is computed inside the vertebrae's box grown by its outer radius only (memory follows the spine)."""
    if not vertebrae.any():
        return None
    near = spine_region.grow(spine_region.bounding_box(vertebrae), np.ceil(SHELL_MM[1] / spacing_zyx).astype(int) + 1,
                             vertebrae.shape)
    distance = ndimage.distance_transform_edt(~vertebrae[near], sampling=spacing_zyx)
    local_ct = ct[near]
    shell = (distance >= SHELL_MM[0]) & (distance <= SHELL_MM[1]) & (local_ct > -200) & (local_ct < 200)
    if shell.sum() < 10:
        return None
    soft_tissue, bright_bone = float(np.median(local_ct[shell])), float(np.percentile(ct[vertebrae], 90))
    if bright_bone <= soft_tissue:
        return None
    return soft_tissue + 0.5 * (bright_bone - soft_tissue)


def rib_mask_from_ct(image: sitk.Image, box, component_map: np.ndarray, centroids_mm: np.ndarray,
                     sacrum_mask: np.ndarray | None = None, thin_parts_searched_mm: float = 0.0
                     ) -> tuple[np.ndarray | None, str | None]:
    """(rib-like bone on ``box``'s grid, None) or (None, why not).

    image: the whole CT; box: array slices (z, y, x) of ``component_map`` inside it; component_map: (Z, Y, X) int,
    vertebra components 1..N (0 = none); centroids_mm: (N, 3) world LPS; sacrum_mask: bool on box's grid or None;
    thin_parts_searched_mm > 0: bone inside the vertebrae is searched too where the mask is thinner than that
    (NETWORK_MASK_THIN_PART_MM for a network's mask), 0: the vertebrae are left out whole.
    """
    if len(centroids_mm) == 0:
        return None, "no vertebra"
    spacing_zyx = np.array(image.GetSpacing())[::-1]
    margin = np.ceil(SEARCH_MARGIN_MM / spacing_zyx).astype(int)
    wide = spine_region.grow(box, margin, sitk.GetArrayViewFromImage(image).shape)
    inner = tuple(slice(b.start - w.start, b.stop - w.start) for b, w in zip(box, wide))
    ct = sitk.GetArrayViewFromImage(image)[wide]  # a view: the search reads the scan, copies none of it
    vertebrae = np.zeros(ct.shape, bool)
    vertebrae[inner] = component_map > 0
    threshold = bone_threshold(ct, vertebrae, spacing_zyx)
    if threshold is None:
        return None, "no soft tissue or bone contrast around the vertebrae"
    left_out = vertebrae
    if thin_parts_searched_mm > 0:
        left_out = np.zeros_like(vertebrae)
        left_out[inner] = thick_part(component_map > 0, spacing_zyx, thin_parts_searched_mm)
    bone = (ct >= threshold) & ~ndimage.binary_dilation(left_out)
    wide_image = spine_region.region_image(image, wide)
    corners = _lateral_extent(wide_image)
    room = min(abs(corners[0] - centroids_mm[:, 0].mean()), abs(corners[1] - centroids_mm[:, 0].mean())) \
        - 2 * spacing_zyx.max()
    if room < MIN_LATERAL_ROOM_MM:
        return None, f"the field of view reaches only {room:.0f} mm beside the spine: ribs cannot be told"
    near_sacrum = None
    if sacrum_mask is not None and sacrum_mask.any():
        near_sacrum = np.zeros(ct.shape, bool)
        near_sacrum[inner] = ndimage.binary_dilation(sacrum_mask, iterations=2)
    ribs = _rib_like(bone, wide_image, centroids_mm, corners, spacing_zyx, near_sacrum)
    if thin_parts_searched_mm > 0:
        # bone inside the mask joins a rib to its vertebra, never vertebrae to each other: a rib-like component whose
        # searched part lies in more than two vertebrae (a rib head articulates with two) is a chain of thin parts
        # (arches, processes) along the spine; of it only the bone outside the mask is kept, tested on its own
        wide_components = np.zeros(ct.shape, np.int32)
        wide_components[inner] = component_map
        pieces, count = ndimage.label(ribs, structure=np.ones((3, 3, 3), bool))
        inside = (pieces > 0) & (wide_components > 0)
        pairs = np.unique(np.stack([pieces[inside], wide_components[inside]]), axis=1)
        bridges = np.flatnonzero(np.bincount(pairs[0], minlength=count + 1) > 2)
        if len(bridges):
            bridged = np.isin(pieces, bridges)
            ribs &= ~bridged
            ribs |= _rib_like(bridged & ~ndimage.binary_dilation(vertebrae), wide_image, centroids_mm, corners,
                              spacing_zyx, near_sacrum)
    return ribs[inner], None


def rib_like_part(image: sitk.Image, box, rib_mask: np.ndarray, centroids_mm: np.ndarray) -> np.ndarray:
    """The pieces of a network's ``rib_mask`` (bool on ``box``'s grid of ``image``) that pass the same shape test
    as the CT's rib-like bone (reach from the midline or cut by the field of view, thin): a network trained at a small
    budget also calls transverse processes and arches "rib", which would make every vertebra rib-bearing."""
    spacing_zyx = np.array(image.GetSpacing())[::-1]
    return _rib_like(rib_mask, spine_region.region_image(image, box), centroids_mm, _lateral_extent(image),
                     spacing_zyx, None)


def _rib_like(bone: np.ndarray, wide_image: sitk.Image, centroids_mm: np.ndarray, corners: np.ndarray,
              spacing_zyx: np.ndarray, near_sacrum: np.ndarray | None) -> np.ndarray:
    """The rib-like connected components of ``bone`` (bool, on ``wide_image``'s grid), as a bool mask."""
    components, count = ndimage.label(bone, structure=np.ones((3, 3, 3), bool))
    if count == 0:
        return np.zeros(bone.shape, bool)
    # the spine's midline (x, LPS) at every voxel's height, from the vertebra centroids
    order = np.argsort(centroids_mm[:, 2])
    indices = np.argwhere(components > 0)
    world = array_indices_to_world(wide_image, indices.astype(float))
    midline_x = np.interp(world[:, 2], centroids_mm[order, 2], centroids_mm[order, 0])
    ids = components[tuple(indices.T)]
    reach = np.zeros(count + 1)
    np.maximum.at(reach, ids, np.abs(world[:, 0] - midline_x))
    low = np.full((count + 1, 3), np.inf)
    high = np.full((count + 1, 3), -np.inf)
    np.minimum.at(low, ids, world)
    np.maximum.at(high, ids, world)
    longest = np.linalg.norm(high - low, axis=1) + spacing_zyx.min()
    volume = np.bincount(ids, minlength=count + 1) * voxel_volume_mm3(wide_image)
    # cut by the search region's left or right edge: the field of view ends where the bone still runs on
    edge_margin = 2 * spacing_zyx.max()
    at_edge = (world[:, 0] <= corners[0] + edge_margin) | (world[:, 0] >= corners[1] - edge_margin)
    cut = np.zeros(count + 1, bool)
    cut[ids[at_edge]] = True
    far = (reach >= LATERAL_REACH_MM) | (cut & (reach >= MIN_LATERAL_ROOM_MM))
    rib_like = far & (volume / longest <= MAX_CROSS_SECTION_MM2)
    if near_sacrum is not None:
        rib_like[np.unique(components[near_sacrum])] = False
    rib_like[0] = False
    return rib_like[components]


def thick_part(mask: np.ndarray, spacing_zyx: np.ndarray, radius_mm: float) -> np.ndarray:
    """What a binary opening of ``mask`` with a ball of ``radius_mm`` keeps: the parts of the mask such a ball fits
    into, without the thinner ones. Done with two Euclidean distance transforms in mm (erode: farther than the radius
    from the background; dilate: within the radius of what is left), so the ball is exact at any voxel size."""
    core = ndimage.distance_transform_edt(mask, sampling=spacing_zyx) > radius_mm
    if not core.any():
        return core
    return mask & (ndimage.distance_transform_edt(~core, sampling=spacing_zyx) <= radius_mm)


def _lateral_extent(image: sitk.Image) -> np.ndarray:
    """World x (LPS) of the image's two extreme corners along x."""
    size = np.array(image.GetSize()) - 1
    corners = np.array([[i, j, k] for i in (0, size[0]) for j in (0, size[1]) for k in (0, size[2])], float)
    x = np.array([image.TransformContinuousIndexToPhysicalPoint(tuple(c))[0] for c in corners])
    return np.array([x.min(), x.max()])
