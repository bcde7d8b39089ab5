"""A labelled spine on the CT grid: the vertebrae (VerSe ids, graded) and the landmarks (sacrum, S1, coccyx, ribs: not
graded, kept as anatomical context and naming evidence), from any named label map - a user's mask
(vfscreen.inference.masks) or the output of another nnU-Net model (vfscreen.inference.seg_model).

Labels that come from outside are never renamed: :func:`check_given_labels` reports what looks wrong (a label in
several sizeable pieces, a gap in the sequence, labels out of order along the spine) as warnings.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from vfscreen.errors import InputError
from vfscreen.inference.geometry import array_indices_to_world, voxel_volume_mm3
from vfscreen.inference.label_conventions import LabelConvention
from vfscreen.labels import (LANDMARK_NAMES, MAX_VERSE_ID, NAME_TO_VERSE, SPINE_ORDER, name_of, parse_structure_name,
                             spine_position)

LANDMARK_IDS: dict[str, int] = {name: index for index, name in enumerate(LANDMARK_NAMES, start=1)}
OPTIONAL_VERTEBRAE = frozenset({NAME_TO_VERSE["T13"], NAME_TO_VERSE["L6"]})  # their absence is normal anatomy
SECOND_PIECE_FRACTION = 0.2  # a label's second piece of >= 20 % of its largest one is "duplicate components"


@dataclass
class Landmarks:
    """Non-graded structures on the CT grid. ``label_map[z, y, x]`` = k means LANDMARK_NAMES[k - 1] (LANDMARK_IDS)."""

    label_map: np.ndarray  # (Z, Y, X) uint8, 0 = none

    def present(self) -> list[str]:
        return [LANDMARK_NAMES[value - 1] for value in np.unique(self.label_map) if value]

    def mask(self, name: str) -> np.ndarray:
        """(Z, Y, X) bool mask of one landmark ('sacrum', 'S1', 'coccyx', 'rib_left_12', ...), all False if absent."""
        return self.label_map == LANDMARK_IDS[name]

    def summary(self, reference: sitk.Image) -> list[dict]:
        """JSON rows: name, volume_ml, centroid_mm (world LPS)."""
        rows = []
        boxes = ndimage.find_objects(self.label_map.astype(np.int32))
        for value, box in enumerate(boxes, start=1):
            if box is None:
                continue
            indices = np.argwhere(self.label_map[box] == value) + np.array([b.start for b in box])
            rows.append({"name": LANDMARK_NAMES[value - 1],
                         "volume_ml": round(len(indices) * voxel_volume_mm3(reference) / 1000.0, 2),
                         "centroid_mm": [round(float(v), 2) for v in
                                         array_indices_to_world(reference, indices).mean(axis=0)]})
        return rows


@dataclass
class SpineLabels:
    verse_map: np.ndarray  # (Z, Y, X) uint8 VerSe ids of the vertebrae, 0 = anything else
    landmarks: Landmarks
    segmentation: dict  # the case JSON's "segmentation" block (source, convention, ...)
    warnings: list[str] = field(default_factory=list)


def spine_labels_from_label_map(label_map: np.ndarray, convention: LabelConvention, source: str,
                                segmentation: dict) -> SpineLabels:
    """Split a named label map into vertebrae (VerSe ids) and landmarks; other structures are dropped (counted in
    ``segmentation["ignored_structures"]``). InputError for values the convention does not know or no vertebra."""
    values = [int(v) for v in np.unique(label_map) if v != 0]
    unknown = convention.unknown_values(values)
    if unknown:
        raise InputError(f"{source}: label values {unknown[:12]} are not in the {convention.name} label table")
    to_verse = np.zeros(max(values, default=0) + 1, dtype=np.uint8)
    to_landmark = np.zeros_like(to_verse)
    ignored, labels = [], {}
    for value in values:
        name = convention.names.get(value, f"structure {value}")
        parsed = parse_structure_name(name)
        if parsed is None:
            ignored.append(name)
        elif parsed[0] == "vertebra":
            if parsed[1] in labels.values():
                raise InputError(f"{source}: two label values name the same vertebra {name_of(parsed[1])}")
            to_verse[value] = parsed[1]
            labels[str(value)] = parsed[1]
        else:
            to_landmark[value] = LANDMARK_IDS[parsed[1]]
    if not labels:
        raise InputError(f"{source}: no vertebra label (values {values[:12]} under the {convention.name} convention)")
    verse_map = to_verse[label_map]
    landmarks = Landmarks(to_landmark[label_map])
    info = {**segmentation, "convention": convention.name,
            "labels": {value: name_of(verse_id) for value, verse_id in labels.items()},
            "landmarks": landmarks.present(), "ignored_structures": len(ignored)}
    return SpineLabels(verse_map, landmarks, info)


def label_centroids_mm(verse_map: np.ndarray, reference: sitk.Image) -> dict[int, np.ndarray]:
    """VerSe id -> world centroid (mm) of every vertebra label."""
    centroids = {}
    boxes = ndimage.find_objects(verse_map.astype(np.int32), max_label=MAX_VERSE_ID)
    for label, box in enumerate(boxes, start=1):
        if box is not None:
            indices = np.argwhere(verse_map[box] == label) + np.array([b.start for b in box])
            centroids[label] = array_indices_to_world(reference, indices).mean(axis=0)
    return centroids


def check_given_labels(verse_map: np.ndarray, reference: sitk.Image) -> list[str]:
    """Warnings about labels made elsewhere (nothing is changed): duplicate pieces, gaps, order along the spine."""
    warnings = []
    structure = np.ones((3, 3, 3), dtype=bool)
    boxes = ndimage.find_objects(verse_map.astype(np.int32), max_label=MAX_VERSE_ID)
    for label, box in enumerate(boxes, start=1):
        if box is None:
            continue
        pieces, count = ndimage.label(verse_map[box] == label, structure=structure)
        if count > 1:
            sizes = np.sort(np.bincount(pieces.ravel())[1:])[::-1]
            if sizes[1] >= SECOND_PIECE_FRACTION * sizes[0]:
                warnings.append(f"{name_of(label)} is in {count} separate pieces (the second holds "
                                f"{sizes[1] / sizes[0]:.0%} of the largest): two vertebrae with one label?")
    centroids = label_centroids_mm(verse_map, reference)
    present = sorted(centroids, key=spine_position)
    if len(present) >= 2:
        order = [v for v in SPINE_ORDER if spine_position(present[0]) <= spine_position(v) <= spine_position(present[-1])]
        missing = [name_of(v) for v in order if v not in centroids and v not in OPTIONAL_VERTEBRAE]
        if missing:
            warnings.append(f"labels skip {', '.join(missing)} between {name_of(present[0])} and "
                            f"{name_of(present[-1])} (not in the mask, or mislabelled)")
        axis = centroids[present[-1]] - centroids[present[0]]  # head -> feet through the labelled chain
        along = [float(centroids[v] @ axis) for v in present]
        swapped = [f"{name_of(a)}/{name_of(b)}" for a, b, pa, pb in zip(present, present[1:], along, along[1:])
                   if pb <= pa]
        if swapped:
            warnings.append(f"labels out of anatomical order along the spine: {', '.join(swapped)}")
    return warnings
