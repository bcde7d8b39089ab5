"""Anatomically consistent vertebra labels: connected components + an exact chain model along the spine.

The segmentation network labels every voxel with an nnU-Net class id (1..26 = C1..L6 in cranio-caudal order, T13 = 20,
see :mod:`vfscreen.labels`). Its mistakes are mostly *sequence* mistakes: a vertebra labelled like its neighbour
(duplicate), two neighbours swapped, one label split over two vertebrae. SpineCLUE (Zhang et al. 2024) fixes them by
passing messages between neighbouring vertebrae. Here the same idea is done exactly: the components, ordered along the
spine, form a chain; each component is either dropped or given a label, the kept labels must increase strictly from
head to feet, a skipped (missing) vertebra costs ``log(skip_probability)`` and a dropped component costs
``log(drop_probability)``; the network's mean class probabilities of each component are the evidence. Viterbi gives the
best labelling and forward-backward gives each component's posterior probability of its label (``label_confidence``);
the chain model itself, which also weighs the gaps between neighbouring components (a missed vertebra leaves a gap of
two pitches), is :mod:`vfscreen.inference.chain_model`.

T13 (class 20) and L6 (class 26) are anatomical variants (~5 % of people each): skipping T13 between T12 and L1 costs
nothing, and labelling a component T13 or L6 costs ``log(variant_probability)`` - the prior that breaks the tie when the
evidence cannot tell (e.g. five lumbar vertebrae: L1-L5, not L2-L6).

A network trained on the coarse ``spine_regions`` grouping (vfscreen.labels) predicts only "vertebra", "thoracic"
and "lumbar"; its components get class evidence from those three outputs (vfscreen.labels.region_evidence) and the
chain names them from their order and the thoraco-lumbar transition.

Landmarks anchor the count (vfscreen.inference.landmarks): a network (or a user's mask) that also shows ribs and the
sacrum tells which components carry a rib and which one sits on the sacrum; those observations enter the chain as
per-component likelihood factors of the classes (``landmark_log_factors``), so the lowest rib-bearing vertebra becomes
T12 (T13 when a thirteenth rib-bearing vertebra is seen) and the one on the sacrum L5 (L6 when six non-rib vertebrae
sit above it). A component whose posterior is below ``LEVEL_CERTAIN_POSTERIOR`` is ``level_uncertain`` (a field of
view without a landmark: the count may be off by whole levels).

Before the chain, a foreground component of a grouped network that holds several vertebrae touching across a disc
(its commonest error: 37 of 106 test vertebrae of the demo model were merged into a neighbour) is split where the
network is least sure: :func:`split_touching` finds separate high-probability cores and gives every voxel to its
nearest core. A network with one class per vertebra separates neighbours by their classes; its components are not
split (where its foreground dips inside one vertebra, body and arch could become two cores; not measured). What
the cores leave merged, :mod:`vfscreen.inference.merged_vertebrae` cuts at the disc its voxel count shows along the
spine, or at its centroid.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from vfscreen.core.region_confusion import class_regions, observation_likelihoods
from vfscreen.core.vertebra_sizes import SizeModel, cranio_caudal_axis
from vfscreen.inference import merged_vertebrae
from vfscreen.inference.chain_model import LEVEL_CERTAIN_POSTERIOR, ChainModel, assign_labels
from vfscreen.inference.geometry import array_indices_to_world, touches_border, voxel_volume_mm3
from vfscreen.inference.landmarks import (MIN_RIB_MM3, LandmarkEvidence, find_landmarks, landmark_log_factors,
                                         mostly_out_of_view, no_landmarks)
from vfscreen.labels import (CLASS_TO_VERSE, LANDMARK_CLASSES, NUM_VERTEBRA_CLASSES, SPINE_REGION_GROUP_IDS,
                             VERTEBRA_GROUP_IDS, region_evidence)

# K = NUM_VERTEBRA_CLASSES = 26 vertebra classes, ids 1..K
SPLIT_LEVELS = (0.6, 0.7, 0.8, 0.9, 0.95, 0.98)  # P(vertebra) levels searched for separate vertebra cores
# a core this large is a vertebra of its own. Chosen on the demo's fold-0 validation cases (demo segmentation model,
# 10 cases, 83 vertebrae): detection by position 0.92 for 2,000-3,000 mm3 with 2-3 extra components; smaller cores
# split vertebrae into body and arch (1,000 mm3: 9 extra), larger ones miss merges. Thoraco-lumbar bodies are
# ~10-60 ml; cervical ones (~3-5 ml) have smaller cores, so merged cervical vertebrae stay merged (conservative).
MIN_CORE_MM3 = 2500.0
DEFAULT_MIN_VOLUME_MM3 = 200.0  # components smaller than this are fragments
CLASS_REGIONS = class_regions()  # (K,) 0 cervical, 1 thoracic, 2 lumbar
MAX_COMPONENTS_PER_CLASS = 64  # more are noise: only the largest are examined (a spine has at most 26 vertebrae)


@dataclass
class Component:
    """One connected component of one predicted class."""

    index: int  # 1-based id in the component map
    class_id: int  # the network's class (argmax) for these voxels, or its group id for a grouped network
    volume_mm3: float
    centroid_mm: np.ndarray  # (3,) world (LPS)
    class_probabilities: np.ndarray  # (K,) mean network probability of classes 1..K over the component, sums to 1
    new_class_id: int = 0  # after the chain model; 0 = dropped
    label_confidence: float = 0.0  # posterior probability of new_class_id (of being dropped when dropped)
    level_uncertain: bool = True  # label_confidence < LEVEL_CERTAIN_POSTERIOR
    split_from_merged: bool = False  # one half of a component that held two vertebrae (merged_vertebrae)
    joined_pieces: int = 1  # how many of the network's components at one level it was joined from (merged_vertebrae)
    split_at_disc: bool = False  # one part of a component that held several vertebrae, cut at a disc (merged_vertebrae)


def _class_evidence(channel_means: np.ndarray | None, class_id: int, grouping: str,
                    region_likelihoods: np.ndarray | None = None) -> np.ndarray:
    """(K,) class probabilities of one component from its mean network outputs (None: from its class/group id).
    ``region_likelihoods``: (3, 3) P(observed region | true region) of a region network, measured on its validation
    cases (vfscreen.core.region_confusion); then the component's observed region (cervical unless its mean thoracic
    or lumbar output reaches 0.5) is the evidence, as reliable as the network proved to be."""
    if grouping == "spine_regions":
        if channel_means is None:  # one-hot regions of the group: vertebra, + thoracic or lumbar
            channel_means = np.array([1.0, class_id == SPINE_REGION_GROUP_IDS["thoracic"],
                                      class_id == SPINE_REGION_GROUP_IDS["lumbar"]], dtype=float)
        if region_likelihoods is not None:
            thoracic, lumbar = float(channel_means[1]), float(channel_means[2])
            observed = 0 if max(thoracic, lumbar) < 0.5 else (1 if thoracic >= lumbar else 2)
            evidence = region_likelihoods[CLASS_REGIONS, observed]
            return evidence / evidence.sum()
        return region_evidence(channel_means[None, :3])[0]
    if channel_means is None:
        evidence = np.full(NUM_VERTEBRA_CLASSES, 0.1 / (NUM_VERTEBRA_CLASSES - 1))
        evidence[class_id - 1] = 0.9
        return evidence
    evidence = channel_means[1:NUM_VERTEBRA_CLASSES + 1]  # drop background and landmark classes
    return evidence / max(evidence.sum(), 1e-12)


def split_touching(mask: np.ndarray, foreground_probability: np.ndarray, spacing_zyx, min_seed_voxels: int,
                   levels=SPLIT_LEVELS) -> list[tuple[tuple[slice, ...], np.ndarray]]:
    """Split one connected component into the vertebrae it holds (neighbours touching across a disc).

    mask: (z, y, x) bool; foreground_probability: same shape. At the lowest level of ``levels`` where the voxels with
    P(vertebra) > level form two or more cores of at least ``min_seed_voxels`` each, every voxel of the mask goes to
    its nearest core (Euclidean, in mm) and each part is split again the same way, inside its own bounding box;
    otherwise the mask is one vertebra. The network is least sure between vertebrae, so the cores are the vertebrae
    and the valleys the discs. Returns the parts as (box within ``mask``, bool mask of that box); together they
    cover ``mask`` exactly. Work and memory follow each part's box, not the first component's.
    """
    structure = np.ones((3, 3, 3), dtype=bool)
    whole = tuple(slice(0, n) for n in mask.shape)
    for level in levels:
        cores, count = ndimage.label(mask & (foreground_probability > level), structure=structure)
        if count < 2:
            continue
        sizes = np.bincount(cores.ravel(), minlength=count + 1)
        big = np.nonzero(sizes[1:] >= min_seed_voxels)[0] + 1
        if len(big) < 2:
            continue
        seed_of_core = np.zeros(count + 1, np.int32)
        seed_of_core[big] = np.arange(1, len(big) + 1, dtype=np.int32)
        seeds = seed_of_core[cores]
        del cores
        nearest_index = ndimage.distance_transform_edt(seeds == 0, sampling=spacing_zyx, return_distances=False,
                                                       return_indices=True)
        nearest = np.where(mask, seeds[tuple(nearest_index)], 0)
        del nearest_index, seeds
        parts = []
        for number, box in enumerate(ndimage.find_objects(nearest), start=1):
            if box is None:
                continue
            part = nearest[box] == number
            for inner, piece in split_touching(part, foreground_probability[box], spacing_zyx, min_seed_voxels,
                                               levels):
                parts.append((tuple(slice(b.start + i.start, b.start + i.stop) for b, i in zip(box, inner)), piece))
        return parts
    return [(whole, mask)]


def find_components(class_map: np.ndarray, reference: sitk.Image, probabilities: np.ndarray | None = None,
                    min_volume_mm3: float = DEFAULT_MIN_VOLUME_MM3, min_fraction: float = 0.1,
                    grouping: str = "vertebrae", min_core_mm3: float | None = MIN_CORE_MM3,
                    max_components: int = MAX_COMPONENTS_PER_CLASS, region_confusion: np.ndarray | None = None,
                    split_merged: bool = True, field_of_view=None) -> tuple[np.ndarray, list[Component]]:
    """Connected components of every class; tiny fragments are dropped.

    class_map: (Z, Y, X) nnU-Net class ids on ``reference``'s grid (group ids for ``grouping`` 'spine_regions').
    probabilities: (K + 1, Z, Y, X) softmax incl. background, or (3, Z, Y, X) region sigmoids for 'spine_regions', or
    None (then each component's own class gets probability 0.9). ``region_confusion``: (3, 3) validation counts of a
    region network (vfscreen.core.region_confusion), None = its outputs taken at face value. Of more than
    ``max_components`` components of one
    class only the largest are examined (with a warning). A component is a fragment when it is
    smaller than ``min_volume_mm3`` or than ``min_fraction`` x the median volume of the largest component per class.
    A grouped network's component that holds two vertebrae by its size and place among its neighbours is cut in two
    (``split_merged``: vfscreen.inference.merged_vertebrae; ``field_of_view`` as in :func:`make_labels_consistent`).
    Returns (component map (Z, Y, X) int32 with ids 1..N of kept components, components sorted head -> feet).
    """
    structure = np.ones((3, 3, 3), dtype=bool)
    region_likelihoods = observation_likelihoods(region_confusion) if region_confusion is not None else None
    voxel_mm3 = voxel_volume_mm3(reference)
    spacing_zyx = tuple(reversed(reference.GetSpacing()))
    candidates = []  # (class_id, bbox, local component mask)
    # a grouped network's groups (thoracic / lumbar) may flicker inside one vertebra: its components are those of the
    # whole vertebra foreground, and each one's group comes from the region outputs (or its most common group id)
    component_source = class_map if grouping == "vertebrae" else np.isin(class_map, VERTEBRA_GROUP_IDS).astype(np.uint8)
    for class_id, bbox in enumerate(ndimage.find_objects(component_source.astype(np.int32)), start=1):
        if bbox is None or class_id > NUM_VERTEBRA_CLASSES:
            continue
        pieces, count = ndimage.label(component_source[bbox] == class_id, structure=structure)
        piece_boxes = ndimage.find_objects(pieces)
        if count > max_components:  # noise: keep the largest pieces, say how many were left out
            sizes = np.bincount(pieces.ravel(), minlength=count + 1)[1:]
            kept = set((np.argsort(-sizes, kind="stable")[:max_components] + 1).tolist())
            piece_boxes = [box if piece in kept else None for piece, box in enumerate(piece_boxes, start=1)]
            warnings.warn(f"class {class_id}: {count} connected components, the {max_components} largest kept",
                          stacklevel=2)
        for piece, piece_bbox in enumerate(piece_boxes, start=1):
            if piece_bbox is None:
                continue
            local = tuple(slice(outer.start + inner.start, outer.start + inner.stop)
                          for outer, inner in zip(bbox, piece_bbox))
            piece_mask = pieces[piece_bbox] == piece
            parts = [(tuple(slice(0, n) for n in piece_mask.shape), piece_mask)]
            if grouping != "vertebrae" and probabilities is not None and min_core_mm3 is not None:
                vertebra_probability = probabilities[(0,) + local].astype(np.float32)  # the 'vertebra' region
                parts = split_touching(piece_mask, vertebra_probability, spacing_zyx,
                                       max(1, int(round(min_core_mm3 / voxel_mm3))))
            candidates.extend((class_id, tuple(slice(outer.start + inner.start, outer.start + inner.stop)
                                               for outer, inner in zip(local, part_box)), part)
                              for part_box, part in parts)
    if not candidates:
        return np.zeros(class_map.shape, np.int32), []
    volumes = np.array([mask.sum() * voxel_mm3 for _, _, mask in candidates])
    largest_per_class = {}
    for (class_id, _, _), volume in zip(candidates, volumes):
        largest_per_class[class_id] = max(volume, largest_per_class.get(class_id, 0.0))
    threshold = max(min_volume_mm3, min_fraction * float(np.median(list(largest_per_class.values()))))

    kept = [(class_id, np.argwhere(mask) + np.array([box.start for box in bbox]))
            for (class_id, bbox, mask), volume in zip(candidates, volumes) if volume >= threshold]
    halves, pieces, at_disc = [False] * len(kept), [1] * len(kept), [False] * len(kept)
    if grouping != "vertebrae" and split_merged:
        box, shape = field_of_view if field_of_view is not None else (None, None)
        box_start = None if box is None else [b.start for b in box]
        voxel_lists, joined = merged_vertebrae.join_pieces([indices for _, indices in kept], reference)
        voxel_lists, sources = merged_vertebrae.split_at_discs(voxel_lists, reference, shape, box_start)
        from_disc_cut = (np.bincount(sources, minlength=len(joined)) > 1)[sources].tolist()
        joined = [joined[source] for source in sources]
        voxel_lists, halves = merged_vertebrae.split_merged(voxel_lists, reference, shape, box_start)
        pieces = _pieces_after_split(voxel_lists, joined, halves)
        at_disc = _pieces_after_split(voxel_lists, from_disc_cut, halves)
        kept = [(0, indices) for indices in voxel_lists]  # a grouped component's group is its commonest, below
    components = []
    for (class_id, indices), half, count, disc in zip(kept, halves, pieces, at_disc):
        centroid = array_indices_to_world(reference, indices.mean(axis=0, keepdims=True))[0]
        if grouping != "vertebrae":
            class_id = int(np.bincount(class_map[indices[:, 0], indices[:, 1], indices[:, 2]]).argmax())
        channel_means = None
        if probabilities is not None:
            channel_means = probabilities[:, indices[:, 0], indices[:, 1], indices[:, 2]].astype(np.float64).mean(axis=1)
        class_probabilities = _class_evidence(channel_means, class_id, grouping, region_likelihoods)
        components.append(Component(0, class_id, float(len(indices) * voxel_mm3), centroid, class_probabilities,
                                    split_from_merged=half, joined_pieces=count, split_at_disc=bool(disc)))
    # head -> feet: decreasing world z (LPS +z = superior; valid for any image orientation)
    order = np.argsort([-component.centroid_mm[2] for component in components], kind="stable")
    component_map = np.zeros(class_map.shape, np.int32)
    sorted_components = []
    for new_index, position in enumerate(order, start=1):
        component = components[position]
        component.index = new_index
        voxels = kept[position][1]
        component_map[voxels[:, 0], voxels[:, 1], voxels[:, 2]] = new_index
        sorted_components.append(component)
    return component_map, sorted_components


def landmark_masks(class_map: np.ndarray, grouping: str, has_landmarks: bool):
    """(rib mask, sacrum mask) of a network's class map, or (None, None) for a network without landmark outputs."""
    if not has_landmarks:
        return None, None
    if grouping == "vertebrae":
        return class_map == LANDMARK_CLASSES["rib"], class_map == LANDMARK_CLASSES["sacrum"]
    return class_map == SPINE_REGION_GROUP_IDS["rib"], class_map == SPINE_REGION_GROUP_IDS["sacrum"]


def name_components(components: list[Component], landmarks: LandmarkEvidence, model: ChainModel | None = None,
                    size_model: SizeModel | None = None) -> np.ndarray:
    """Run the chain model on components (head -> feet) with their landmark evidence and, with a ``size_model``,
    their volumes (components cut by the field of view, ``landmarks.cut_by_view``, say nothing by their size); fills
    ``new_class_id``, ``label_confidence`` and ``level_uncertain`` in place. Returns the marginals (N, K + 1)."""
    if not components:
        return np.zeros((0, NUM_VERTEBRA_CLASSES + 1))
    table = np.stack([component.class_probabilities for component in components])
    centroids = np.stack([component.centroid_mm for component in components])
    size_factors = None
    if size_model is not None:
        whole = [row not in landmarks.cut_by_view for row in range(len(components))]
        size_factors = size_model.log_factors([component.volume_mm3 for component in components], whole)
    new_class, confidence, marginals = assign_labels(table, model, landmark_log_factors(landmarks), centroids,
                                                     size_factors)
    for component, class_id, score in zip(components, new_class, confidence):
        component.new_class_id = int(class_id)
        component.label_confidence = float(score)
        component.level_uncertain = bool(class_id > 0 and score < LEVEL_CERTAIN_POSTERIOR)
    return marginals


def make_labels_consistent(class_map: np.ndarray, reference: sitk.Image, probabilities: np.ndarray | None = None,
                           model: ChainModel | None = None, grouping: str = "vertebrae", has_landmarks: bool = False,
                           ct_ribs=None, region_confusion: np.ndarray | None = None, rib_shape=None,
                           size_model: SizeModel | None = None, field_of_view=None, **fragment_options
                           ) -> tuple[np.ndarray, list[Component], LandmarkEvidence]:
    """Unique, anatomically ordered vertebra labels.

    ``has_landmarks``: the network also outputs ribs and sacrum (their components anchor the names).
    ``ct_ribs``: ``f(component_map, centroids_mm, sacrum_mask) -> (rib mask or None, note)`` that reads the ribs off the CT (vfscreen.inference.ct_ribs.rib_mask_from_ct over the case's image), used where the network
    shows no rib. ``region_confusion``: see :func:`find_components`. ``rib_shape``: ``f(rib_mask, centroids_mm) ->
    rib-like part`` (vfscreen.inference.ct_ribs.rib_like_part) applied to the network's ribs, None = taken as they are.
    ``size_model``: vfscreen.core.vertebra_sizes.SizeModel, the components' volumes as evidence (None: not used).
    ``field_of_view``: (box of ``class_map`` in the image, the image's shape) when ``class_map`` is a region of the
    image; a component reaching the image's border is cut by the field of view (None: ``class_map`` is the image).
    Returns (verse_map (Z, Y, X) uint8 in **VerSe ids**, 0 = background / dropped; the components with
    ``new_class_id``, ``label_confidence`` and ``level_uncertain`` filled in, head -> feet; the landmark evidence).
    """
    component_map, components = find_components(class_map, reference, probabilities, grouping=grouping,
                                                region_confusion=region_confusion, field_of_view=field_of_view,
                                                **fragment_options)
    rib_mask, sacrum_mask = landmark_masks(class_map, grouping, has_landmarks)
    if not components:
        return np.zeros(class_map.shape, np.uint8), [], find_landmarks(component_map, np.zeros((0, 3)), rib_mask,
                                                                        sacrum_mask, reference)
    centroids = np.stack([component.centroid_mm for component in components])
    rib_mask, rib_note = _ribs(rib_mask, ct_ribs, component_map, centroids, sacrum_mask, reference, rib_shape)
    cut_rows = cut_by_field_of_view(component_map, reference, field_of_view)
    landmarks = find_landmarks(component_map, centroids, rib_mask, sacrum_mask, reference, cut_rows) \
        if rib_mask is not None or sacrum_mask is not None else no_landmarks(len(components))
    if rib_note:
        landmarks.notes.insert(0, rib_note)
    joined = [component.joined_pieces for component in components if component.joined_pieces > 1]
    if joined:
        landmarks.notes.append(f"{len(joined)} component(s) joined from {sum(joined)} pieces at the same level "
                               "(centroids much closer along the spine than neighbouring vertebrae)")
    disc_parts = sum(component.split_at_disc for component in components)
    if disc_parts:
        landmarks.notes.append(f"{disc_parts} component(s) cut at a disc out of components that held several vertebrae "
                               "(a valley of the voxel count along the spine)")
    halves = sum(component.split_from_merged for component in components)
    if halves:
        landmarks.notes.append(f"{halves // 2} component(s) held two vertebrae (twice their neighbours' volume, "
                               "centroid between them): cut in two at the centroid, not at the disc")
    landmarks.cut_by_view = cut_rows
    landmarks.mostly_out_of_view = mostly_out_of_view([component.volume_mm3 for component in components],
                                                      landmarks.cut_by_view)
    name_components(components, landmarks, model, size_model)
    component_to_verse = np.zeros(len(components) + 1, dtype=np.uint8)
    for component in components:
        class_id = component.new_class_id
        component_to_verse[component.index] = CLASS_TO_VERSE[class_id] if class_id > 0 else 0
    return component_to_verse[component_map], components, landmarks


def _pieces_after_split(voxel_lists: list, joined: list, halves: list[bool]) -> list:
    """Per list after merged_vertebrae.split_merged, the value its source had in ``joined`` (per list given to
    split_merged, head -> feet, an order split_merged keeps; its two halves both carry it): the number of pieces it
    was joined from, whether it came from a disc cut."""
    counts, source = [], iter(joined)
    row = 0
    while row < len(voxel_lists):
        count = next(source, 1)
        width = 2 if halves[row] else 1
        counts += [count] * width
        row += width
    return counts


def cut_by_field_of_view(component_map: np.ndarray, reference: sitk.Image, field_of_view=None) -> list[int]:
    """Rows (0-based, component id - 1) of the components that reach the image's upper or lower end (its border
    along the cranio-caudal axis; a narrow field of view that cuts a process at its side keeps the vertebra's level
    evidence). ``field_of_view``: (box of ``component_map`` in the image, image shape), None = ``component_map`` is
    the whole image; ``reference``: the grid's image (its direction)."""
    axes = (cranio_caudal_axis(reference),)
    box, shape = field_of_view if field_of_view is not None else \
        (tuple(slice(0, n) for n in component_map.shape), component_map.shape)
    rows = []
    for row, local in enumerate(ndimage.find_objects(component_map)):
        if local is not None and touches_border(shape, tuple(slice(outer.start + inner.start, outer.start + inner.stop)
                                                                for outer, inner in zip(box, local)), axes):
            rows.append(row)
    return rows


def _ribs(network_ribs, ct_ribs, component_map, centroids, sacrum_mask, reference, rib_shape=None):
    """(rib mask, note): the network's ribs where it shows a rib of plausible size (of rib-like shape, where
    ``rib_shape(mask, centroids)`` keeps the rib-like pieces), else the CT's rib-like bone."""
    note = None
    if network_ribs is not None and rib_shape is not None and network_ribs.any():
        kept = rib_shape(network_ribs, centroids)
        if kept.sum() < network_ribs.sum():
            note = "the network's rib mask holds pieces that are not rib-like (processes?): left out"
        network_ribs = kept
    if network_ribs is not None and network_ribs.sum() * voxel_volume_mm3(reference) >= MIN_RIB_MM3:
        return network_ribs, note
    if ct_ribs is None:
        return network_ribs, None
    ct_mask, why_not = ct_ribs(component_map, centroids, sacrum_mask)
    if ct_mask is None:
        return network_ribs, f"ribs not read off the CT: {why_not}"
    return ct_mask, "ribs read off the CT (rib-like bone touching the vertebrae)"
