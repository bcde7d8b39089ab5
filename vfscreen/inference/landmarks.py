"""Anatomical landmarks that anchor vertebra names: which vertebra carries a rib, which one sits on the sacrum.

Radiologists do not count vertebrae from the edge of the field of view; they anchor on landmarks: the ribs articulate
with the thoracic vertebrae (the lowest rib-bearing vertebra is T12, T13 when there are 13 rib pairs) and the lowest
lumbar vertebra sits on the sacrum (L5, L6 with a lumbosacral transitional vertebra). This module turns a rib mask and
a sacrum mask (from a network's landmark classes, a TotalSegmentator mask's ``rib_*`` / ``sacrum``, a converter's
label map - any boolean arrays on the vertebra components' grid) into :class:`LandmarkEvidence`, and that evidence
into per-component likelihood factors of the 26 vertebra classes for the chain model
(:func:`vfscreen.inference.label_consistency.assign_labels`).

Nothing here decides a name: the chain model weighs the landmark factors against the network's class evidence, the
ordering and the variant priors, exactly (Viterbi + forward-backward).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from vfscreen.inference import ct_ribs, spine_region
from vfscreen.inference.geometry import array_indices_to_world, voxel_volume_mm3
from vfscreen.inference.spine_labels import label_centroids_mm
from vfscreen.labels import (LANDMARK_NAMES, NAME_TO_VERSE, NUM_VERTEBRA_CLASSES, VERSE_NAMES, VERSE_TO_CLASS,
                             spine_position)

THORACIC_CLASSES = np.array([VERSE_TO_CLASS[v] for v in VERSE_NAMES if VERSE_NAMES[v].startswith("T")])
LAST_LUMBAR_CLASSES = np.array([VERSE_TO_CLASS[NAME_TO_VERSE["L5"]], VERSE_TO_CLASS[NAME_TO_VERSE["L6"]]])
L4_CLASS = VERSE_TO_CLASS[NAME_TO_VERSE["L4"]]
L6_CLASS = VERSE_TO_CLASS[NAME_TO_VERSE["L6"]]

RIB_CONTACT_MM = 6.0  # rib voxels this close to a vertebra component touch it (costovertebral region)
SACRUM_CONTACT_MM = 20.0  # a vertebra this close to the sacrum sits on it (lumbosacral disc + segmentation gap)
MIN_RIB_MM3 = 100.0  # smaller rib components are segmentation noise
MIN_RIB_FRACTION = 0.25  # ... and so are those under this share of the case's median rib piece (a sliver at the
# field of view's end beside a cut vertebra, a process) - modelling choice, not measured
MIN_CUT_RIB_FRACTION = 0.5  # on a vertebra cut by the field of view, a rib piece under this share of the median is
# no rib (a lumbar transverse process running out of a narrow field reads as rib-like). On the fold-0 validation
# cases of three demo models, the rib pieces on cut thoracic vertebrae were 0.61-1.41 of the median
PARTIAL_VIEW_FRACTION = 1 / 3  # a cut component under this share of its nearest whole neighbour's volume shows
# little of its vertebra: its rib may well be out of view (a rib's head and tubercle sit at the upper body and the
# transverse process; the shaft runs down and out) - an anatomical modelling choice, not measured
SECOND_CARRIER_FRACTION = 0.5  # a rib whose contact with a second vertebra is this large touches both


@dataclass
class LandmarkLikelihoods:
    """Likelihood model of the landmark observations given a vertebra's class (modelling choices that weigh
    segmentation errors against anatomy; not measured prevalences)."""

    rib_on_non_thoracic: float = 0.01  # a rib seen on C7 / L1 (cervical / lumbar rib, or a mis-assigned rib)
    rib_on_cut_non_thoracic: float = 0.2  # ... on a vertebra cut by the field of view (its own bone that the
    # segmentation left out - a process, part of an arch - reads as rib-like more often)
    no_rib_on_thoracic: float = 0.05  # ribs are in view but none is seen on a thoracic vertebra (missed)
    no_rib_on_cut_thoracic: float = 0.25  # ... on a thoracic vertebra cut by the field of view (its rib may be out)
    sacrum_on_l4: float = 0.05  # the vertebra on the sacrum is L4 (L5 sacralised and labelled sacrum)
    sacrum_on_other: float = 0.005  # any other class on the sacrum
    l6_not_on_sacrum: float = 0.02  # an L6 that does not sit on a sacrum in view
    below_sacrum: float = 0.01  # a vertebra component below the sacrum's centre (a sacral segment): all classes


@dataclass
class LandmarkEvidence:
    """What the landmark masks say about the chain's components (rows in cranio-caudal order)."""

    num_components: int
    rib_sides: list[set] = field(default_factory=list)  # per component: {'left', 'right'} sides with a rib
    ribs_in_view: bool = False  # a rib touching a vertebra found (then a vertebra without one is informative)
    sacrum_in_view: bool = False
    sacrum_component: int | None = None  # row of the vertebra that sits on the sacrum
    below_sacrum: list[int] = field(default_factory=list)  # rows below the sacrum's centre
    cut_by_view: list[int] = field(default_factory=list)  # rows cut by the field of view: a missing rib says less
    mostly_out_of_view: list[int] = field(default_factory=list)  # cut rows holding a small part of a vertebra
    # (under PARTIAL_VIEW_FRACTION of the nearest whole component's volume): a missing rib says nothing there
    notes: list[str] = field(default_factory=list)

    @property
    def rib_bearing(self) -> list[int]:
        return [row for row, sides in enumerate(self.rib_sides) if sides]

    @property
    def rib_pairs(self) -> int:
        """Vertebrae with ribs seen (one side or both)."""
        return len(self.rib_bearing)

    @property
    def any_landmark(self) -> bool:
        return self.ribs_in_view or self.sacrum_in_view

    def summary(self, names: list[str] | None = None) -> dict:
        """JSON-ready description; ``names``: the chain's final name per row ('' for dropped)."""
        def name(row):
            return names[row] if names is not None and names[row] else f"component {row + 1}"
        return {"ribs_in_view": self.ribs_in_view, "rib_bearing": [name(row) for row in self.rib_bearing],
                "rib_pairs": self.rib_pairs, "sacrum_in_view": self.sacrum_in_view,
                "on_sacrum": None if self.sacrum_component is None else name(self.sacrum_component),
                "notes": list(self.notes)}


def no_landmarks(num_components: int, note: str | None = None) -> LandmarkEvidence:
    return LandmarkEvidence(num_components, [set() for _ in range(num_components)],
                            notes=[note] if note else [])


def find_landmarks(component_map: np.ndarray, centroids_mm: np.ndarray, rib_mask: np.ndarray | None,
                   sacrum_mask: np.ndarray | None, reference, cut_rows=()) -> LandmarkEvidence:
    """Landmark evidence of the vertebra components.

    component_map: (Z, Y, X) int, 1..N = vertebra components in chain order (0 = none); centroids_mm: (N, 3) world
    LPS; rib_mask / sacrum_mask: (Z, Y, X) bool on the same grid, or None when the source has no such structure
    (then it says nothing). ``reference``: the SimpleITK image of the grid (spacing, direction). ``cut_rows``: rows
    cut by the field of view (their small rib pieces are no ribs, MIN_CUT_RIB_FRACTION).
    """
    num_components = int(len(centroids_mm))
    evidence = no_landmarks(num_components)
    if num_components == 0:
        if (rib_mask is not None and rib_mask.any()) or (sacrum_mask is not None and sacrum_mask.any()):
            evidence.notes.append("ribs or sacrum found but no vertebra: nothing to name")
        return evidence
    spacing_zyx = np.array(reference.GetSpacing())[::-1]
    voxel_mm3 = voxel_volume_mm3(reference)
    if rib_mask is not None and rib_mask.any():
        _rib_evidence(evidence, component_map, centroids_mm, rib_mask, spacing_zyx, voxel_mm3, reference, cut_rows)
    if sacrum_mask is not None and sacrum_mask.any():
        _sacrum_evidence(evidence, component_map, centroids_mm, sacrum_mask, spacing_zyx, reference)
    if not evidence.any_landmark and (rib_mask is not None or sacrum_mask is not None):
        evidence.notes.append("no rib and no sacrum in view: the level is counted from the network's evidence only")
    return evidence


def _box(mask: np.ndarray, margin_voxels: np.ndarray) -> tuple[slice, ...]:
    indices = np.argwhere(mask)
    low = np.maximum(indices.min(axis=0) - margin_voxels, 0)
    high = np.minimum(indices.max(axis=0) + margin_voxels + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high))


def _nearest_component(component_map: np.ndarray, box, spacing_zyx):
    """Distance (mm) to the nearest vertebra voxel and that voxel's component id, over ``box``."""
    local = component_map[box]
    if not local.any():
        return np.full(local.shape, np.inf), np.zeros(local.shape, int)
    distance, nearest = ndimage.distance_transform_edt(local == 0, sampling=spacing_zyx, return_indices=True)
    return distance, local[tuple(nearest)]


def _rib_evidence(evidence, component_map, centroids_mm, rib_mask, spacing_zyx, voxel_mm3, reference,
                  cut_rows=()) -> None:
    margin = np.ceil(RIB_CONTACT_MM / spacing_zyx).astype(int) + 1
    box = _box(rib_mask, margin)
    distance, nearest = _nearest_component(component_map, box, spacing_zyx)
    ribs, count = ndimage.label(rib_mask[box], structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(ribs.ravel(), minlength=count + 1) * voxel_mm3
    plausible = sizes[1:][sizes[1:] >= MIN_RIB_MM3]
    smallest = max(MIN_RIB_MM3, MIN_RIB_FRACTION * float(np.median(plausible))) if len(plausible) else MIN_RIB_MM3
    touching_two, floating, small_on_cut = 0, 0, 0
    smallest_on_cut = max(smallest, MIN_CUT_RIB_FRACTION * float(np.median(plausible))) if len(plausible) else smallest
    fragments = int(np.count_nonzero((sizes[1:] >= MIN_RIB_MM3) & (sizes[1:] < smallest)))
    for rib in range(1, count + 1):
        if sizes[rib] < smallest:
            continue
        voxels = ribs == rib
        contact = voxels & (distance <= RIB_CONTACT_MM)
        if not contact.any():
            floating += 1  # its head is outside the field of view or not segmented: it says nothing about levels
            continue
        evidence.ribs_in_view = True  # a rib on a vertebra: then a vertebra without one is informative
        contacts = np.bincount(nearest[contact], minlength=evidence.num_components + 1)[1:]
        carriers = np.nonzero(contacts >= SECOND_CARRIER_FRACTION * contacts.max())[0]
        if sizes[rib] < smallest_on_cut:
            kept = [row for row in carriers if row not in cut_rows]
            small_on_cut += len(kept) < len(carriers)
            carriers = np.array(kept, dtype=int)
            if not len(carriers):
                continue
        if len(carriers) > 1:
            touching_two += 1
        offset = np.array([s.start for s in box])
        rib_centroid = array_indices_to_world(reference, (np.argwhere(voxels) + offset).mean(axis=0, keepdims=True))[0]
        for row in carriers:
            side = "left" if rib_centroid[0] > centroids_mm[row][0] else "right"  # LPS: +x = patient's left
            evidence.rib_sides[row].add(side)
    if fragments:
        evidence.notes.append(f"{fragments} rib piece(s) under {MIN_RIB_FRACTION:.0%} of the median rib's volume "
                              "(cut by the field of view, or a process): ignored")
    if small_on_cut:
        evidence.notes.append(f"{small_on_cut} rib piece(s) under {MIN_CUT_RIB_FRACTION:.0%} of the median rib's volume "
                              "on a vertebra cut by the field of view (a process?): not counted as its rib")
    if touching_two:
        evidence.notes.append(f"{touching_two} rib(s) touch two vertebrae: counted on both")
    if floating:
        evidence.notes.append(f"{floating} rib(s) touch no vertebra (head out of view or not segmented): ignored")
    one_sided = [row for row in evidence.rib_bearing if len(evidence.rib_sides[row]) == 1]
    if one_sided:
        evidence.notes.append(f"{len(one_sided)} rib-bearing vertebra(e) with a rib on one side only")


def _sacrum_evidence(evidence, component_map, centroids_mm, sacrum_mask, spacing_zyx, reference) -> None:
    evidence.sacrum_in_view = True
    # a vertebra below the sacrum's centre (not its top: the alae and a tilted promontory reach above L5's centre)
    sacrum_centre = float(array_indices_to_world(reference, np.argwhere(sacrum_mask).mean(axis=0, keepdims=True))[0, 2])
    margin = np.ceil(SACRUM_CONTACT_MM / spacing_zyx).astype(int) + 1
    box = _box(sacrum_mask, margin)
    distance = ndimage.distance_transform_edt(~sacrum_mask[box], sampling=spacing_zyx)
    local = component_map[box]
    closest = np.full(evidence.num_components, np.inf)
    if local.any():
        np.minimum.at(closest, local[local > 0] - 1, distance[local > 0])
    above = [row for row in range(evidence.num_components) if centroids_mm[row][2] > sacrum_centre]
    evidence.below_sacrum = [row for row in range(evidence.num_components) if centroids_mm[row][2] <= sacrum_centre]
    touching = [row for row in above if closest[row] <= SACRUM_CONTACT_MM]
    if touching:
        evidence.sacrum_component = max(touching)  # the most caudal vertebra above the sacrum that touches it
        if closest[evidence.sacrum_component] <= spacing_zyx.max():
            evidence.notes.append("the vertebra on the sacrum touches it directly (fused / transitional?)")
    else:
        evidence.notes.append("sacrum in view but no vertebra sits on it (L5 missed?)")
    if evidence.below_sacrum:
        evidence.notes.append(f"{len(evidence.below_sacrum)} component(s) below the sacrum's centre: not lumbar")


def mostly_out_of_view(volumes_mm3, cut_rows) -> list[int]:
    """The rows (head -> feet) of ``cut_rows`` whose volume is under PARTIAL_VIEW_FRACTION of their nearest whole
    row's (none where no row is whole: nothing to compare with)."""
    whole = [row for row in range(len(volumes_mm3)) if row not in cut_rows]
    if not whole:
        return []
    nearest = {row: min(whole, key=lambda other: abs(other - row)) for row in cut_rows}
    return [row for row in cut_rows if volumes_mm3[row] < PARTIAL_VIEW_FRACTION * volumes_mm3[nearest[row]]]


def landmark_log_factors(evidence: LandmarkEvidence, likelihoods: LandmarkLikelihoods | None = None) -> np.ndarray:
    """(N, K) log-likelihood of the landmark observations of each component given each vertebra class 1..K."""
    likelihoods = likelihoods or LandmarkLikelihoods()
    factors = np.zeros((evidence.num_components, NUM_VERTEBRA_CLASSES))
    thoracic = np.isin(np.arange(1, NUM_VERTEBRA_CLASSES + 1), THORACIC_CLASSES)
    if evidence.ribs_in_view:
        for row, sides in enumerate(evidence.rib_sides):
            if sides:
                factors[row, ~thoracic] += np.log(likelihoods.rib_on_cut_non_thoracic if row in evidence.cut_by_view
                                                  else likelihoods.rib_on_non_thoracic)
            elif row not in evidence.mostly_out_of_view:
                factors[row, thoracic] += np.log(likelihoods.no_rib_on_cut_thoracic if row in evidence.cut_by_view
                                                 else likelihoods.no_rib_on_thoracic)
    if evidence.sacrum_in_view:
        for row in range(evidence.num_components):
            if row == evidence.sacrum_component:
                on_sacrum = np.full(NUM_VERTEBRA_CLASSES, np.log(likelihoods.sacrum_on_other))
                on_sacrum[LAST_LUMBAR_CLASSES - 1] = 0.0
                on_sacrum[L4_CLASS - 1] = np.log(likelihoods.sacrum_on_l4)
                factors[row] += on_sacrum
            elif row in evidence.below_sacrum:
                factors[row] += np.log(likelihoods.below_sacrum)
            else:
                factors[row, L6_CLASS - 1] += np.log(likelihoods.l6_not_on_sacrum)
    return factors


def naming_of_given_labels(spine, reference, ct=None) -> dict:
    """Landmark evidence of a labelled spine from elsewhere (vfscreen.inference.spine_labels.SpineLabels: a user's
    or TotalSegmentator's mask), and where its names contradict it (its names are never changed): a rib on a
    vertebra not named thoracic, a vertebra named thoracic below the lowest rib-bearing one, a vertebra on the
    sacrum not named L5/L6. ``ct``: the case's CT (SimpleITK, on the mask's grid); where the mask has no ribs, they
    are read off it (vfscreen.inference.ct_ribs). JSON-ready: the summary plus ``contradictions`` and ``anchored``."""
    centroids = label_centroids_mm(spine.verse_map, reference)
    order = sorted(centroids, key=spine_position)
    to_row = np.zeros(max(order, default=0) + 1, dtype=np.int32)
    for row, verse_id in enumerate(order, start=1):
        to_row[verse_id] = row
    component_map = to_row[spine.verse_map] if order else np.zeros(spine.verse_map.shape, np.int32)
    present = set(spine.landmarks.present())
    rib_names = [name for name in LANDMARK_NAMES if name.startswith("rib_") and name in present]
    rib_mask = np.isin(spine.landmarks.label_map, [LANDMARK_NAMES.index(n) + 1 for n in rib_names]) \
        if rib_names else None
    sacrum_names = [name for name in ("sacrum", "S1") if name in present]
    sacrum_mask = np.isin(spine.landmarks.label_map, [LANDMARK_NAMES.index(n) + 1 for n in sacrum_names]) \
        if sacrum_names else None
    centroid_rows = np.array([centroids[v] for v in order]).reshape(-1, 3)
    rib_note = None
    if rib_mask is None and ct is not None and order:
        rib_mask, rib_note = _ribs_from_ct(ct, component_map, centroid_rows, sacrum_mask)
    evidence = find_landmarks(component_map, centroid_rows, rib_mask, sacrum_mask, reference)
    if rib_note:
        evidence.notes.insert(0, rib_note)
    names = [VERSE_NAMES[v] for v in order]
    contradictions = [f"{names[row]} carries a rib but is not named thoracic" for row in evidence.rib_bearing
                      if not names[row].startswith("T")]
    if evidence.rib_bearing:
        lowest = max(evidence.rib_bearing)
        contradictions += [f"{names[row]} is named thoracic but lies below the lowest rib-bearing vertebra "
                           f"({names[lowest]})" for row in range(lowest + 1, len(names)) if names[row].startswith("T")]
    if evidence.sacrum_component is not None and names[evidence.sacrum_component] not in ("L5", "L6"):
        contradictions.append(f"{names[evidence.sacrum_component]} sits on the sacrum but is not named L5 or L6")
    return {**evidence.summary(names), "anchored": evidence.any_landmark, "contradictions": contradictions}


def _ribs_from_ct(ct, component_map, centroids_mm, sacrum_mask):
    """(rib mask on component_map's grid or None, note): vfscreen.inference.ct_ribs inside the vertebrae's box."""
    box = spine_region.foreground_region(component_map)
    local_sacrum = sacrum_mask[box] if sacrum_mask is not None else None
    local, why_not = ct_ribs.rib_mask_from_ct(ct, box, component_map[box], centroids_mm, local_sacrum)
    if local is None:
        return None, f"ribs not read off the CT: {why_not}"
    rib_mask = np.zeros(component_map.shape, bool)
    rib_mask[box] = local
    return rib_mask, "ribs read off the CT (the mask has none): rib-like bone touching the vertebrae"
