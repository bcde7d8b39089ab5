"""Anatomical plausibility guard for any vertebra segmentation (vfscreen's own, another model's, a user's mask).

A segmentation that outlines something else than vertebrae must not be graded: its "fractures" are noise (a
phantom-trained model on a real CT outlined soft tissue, air and ribs as 24 "vertebrae" and 10 were flagged). Each
vertebra label is checked against bounds that no adult vertebra violates, chosen generously (several times the
published sizes) so that they hold for every level, body size and scan, at any spacing and orientation:

- bone (CT in Hounsfield units only): the densest tenth of a vertebra mask is bone - cortex, endplates, posterior
  elements - and L1 *trabecular* bone alone averages 89 +- 38 HU even in people aged 90 or more (Jang et al.,
  Radiology 2019, 20,374 CTs); so its 90th percentile must reach ``BONE_MIN_P90_HU``. Unenhanced soft tissue, fat
  and air stay below it;
- size: lumbar vertebral *bodies* hold 36 +- 7 cm3 (Wilms et al., Neuroradiology 2012, L3-L5); with its arch a whole
  vertebra is about twice that, so a label above ``MAX_VERTEBRA_ML`` is not one vertebra. An uncut label below
  ``MIN_VERTEBRA_ML`` is a fragment;
- shape: principal extents (mm, from the voxel cloud): the widest vertebrae (atlas, lumbar transverse processes)
  span less than 10 cm, L5 endplates are 33 +- 4 mm deep and 47 +- 14 mm wide (Bhat et al., Translational Research in
  Anatomy 2025), thoracic bodies 17-20 mm tall (Egwu et al., J Anat Soc India 2019): a label longer than
  ``MAX_EXTENT_MM`` or, uncut, thinner than ``MIN_THICKNESS_MM`` is not a vertebra;
- chain: vertebrae follow one another along the spine. Consecutive labels (in anatomical order) must lie
  ``MIN_LEVEL_SPACING_MM`` - ``MAX_LEVEL_SPACING_MM`` apart per level (a cervical level, body + disc, is about 2 cm, a
  lumbar one about 4 cm) and each step must point within ``MAX_STEP_ANGLE_DEG`` of the patient's head-feet axis
  (lordosis, kyphosis and scoliosis tilt a level by far less). The longest chain of uncut labels that obeys this is
  the spine; uncut labels off it are implausible (a label cut by the field of view has a biased centroid and is not
  checked for its place).

Outcome (:func:`assess`): a reason per implausible vertebra (no grade, no verdict); the whole case is implausible when
fewer than half of its labels pass or when it holds more than ``MAX_COMPONENTS`` candidate components (more than twice
the vertebrae of a whole spine).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from vfscreen.inference.geometry import WORLD_SUPERIOR, array_indices_to_world, touches_border, voxel_shadow_mm
from vfscreen.labels import MAX_VERSE_ID, NUM_VERTEBRA_CLASSES, is_vertebra, name_of, spine_position

BONE_MIN_P90_HU = 100.0
MAX_VERTEBRA_ML = 200.0
MIN_VERTEBRA_ML = 1.0
MAX_EXTENT_MM = 150.0
MIN_THICKNESS_MM = 8.0
MIN_LEVEL_SPACING_MM = 8.0
MAX_LEVEL_SPACING_MM = 60.0
MAX_STEP_ANGLE_DEG = 70.0
MAX_COMPONENTS = 2 * NUM_VERTEBRA_CLASSES


def looks_like_ct_hu(array: np.ndarray) -> bool:
    """Intensities on the Hounsfield scale (air near -1000 and bone above 200 present): the HU criteria apply."""
    low, high = np.percentile(array, [0.5, 99.5]) if array.size else (0.0, 0.0)
    return bool(low <= -500 and high >= 200)


@dataclass
class Plausibility:
    vertebrae: dict = field(default_factory=dict)  # VerSe id -> reason, implausible vertebrae only
    case_reason: str | None = None  # set: nothing in this case is graded
    measures: dict = field(default_factory=dict)  # VerSe id -> {"volume_ml", "extent_mm", "p90_hu"}

    def reason(self, label: int) -> str | None:
        return self.case_reason and f"case: {self.case_reason}" or self.vertebrae.get(int(label))


def _shape_reason(points_mm: np.ndarray, volume_ml: float, truncated: bool, reference: sitk.Image
                  ) -> tuple[str | None, list[float]]:
    centred = points_mm - points_mm.mean(axis=0)
    _, vectors = np.linalg.eigh(centred.T @ centred)
    extents = [float(np.ptp(centred @ vectors[:, axis]) + voxel_shadow_mm(reference, vectors[:, axis]))
               for axis in range(3)]
    if volume_ml > MAX_VERTEBRA_ML:
        return f"larger than any vertebra ({volume_ml:.0f} ml > {MAX_VERTEBRA_ML:.0f} ml)", extents
    if max(extents) > MAX_EXTENT_MM:
        return f"longer than any vertebra ({max(extents):.0f} mm > {MAX_EXTENT_MM:.0f} mm)", extents
    if not truncated and volume_ml < MIN_VERTEBRA_ML:
        return f"smaller than any whole vertebra ({volume_ml:.2f} ml < {MIN_VERTEBRA_ML:.0f} ml)", extents
    if not truncated and min(extents) < MIN_THICKNESS_MM:
        return f"thinner than any vertebra ({min(extents):.0f} mm < {MIN_THICKNESS_MM:.0f} mm)", extents
    return None, extents


def _step_ok(upper: np.ndarray, lower: np.ndarray, levels: int) -> bool:
    step = lower - upper
    length = float(np.linalg.norm(step))
    if not MIN_LEVEL_SPACING_MM * levels <= length <= MAX_LEVEL_SPACING_MM * levels:
        return False
    cosine = float(-step @ WORLD_SUPERIOR) / max(length, 1e-9)  # towards the feet
    return cosine >= np.cos(np.radians(MAX_STEP_ANGLE_DEG))


def longest_chain(labels: list[int], centroids: dict[int, np.ndarray], volumes: dict[int, float]) -> list[int]:
    """The longest sequence of labels (anatomical order) whose consecutive steps obey the spacing and direction
    bounds; ties go to the larger total volume."""
    ordered = sorted(labels, key=spine_position)
    best: list[tuple[int, float, int]] = []  # (length, volume, predecessor index or -1)
    for j, label in enumerate(ordered):
        candidate = (1, volumes[label], -1)
        for i in range(j):
            levels = max(1, spine_position(label) - spine_position(ordered[i]))
            if _step_ok(centroids[ordered[i]], centroids[label], levels):
                length, volume, _ = best[i]
                if (length + 1, volume + volumes[label]) > candidate[:2]:
                    candidate = (length + 1, volume + volumes[label], i)
        best.append(candidate)
    if not best:
        return []
    index = max(range(len(best)), key=lambda k: best[k][:2])
    chain = []
    while index >= 0:
        chain.append(ordered[index])
        index = best[index][2]
    return chain[::-1]


def assess(verse_map: np.ndarray, image: sitk.Image, num_components: int | None = None) -> Plausibility:
    """Check every vertebra label of ``verse_map`` (VerSe ids on ``image``'s grid). ``num_components``: how many
    candidate components the segmentation produced before labelling (None: the number of labels)."""
    result = Plausibility()
    ct = sitk.GetArrayViewFromImage(image)
    use_hu = looks_like_ct_hu(ct)
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    centroids, volumes = {}, {}
    boxes = ndimage.find_objects(verse_map.astype(np.int32), max_label=MAX_VERSE_ID)
    for label, box in enumerate(boxes, start=1):
        if box is None or not is_vertebra(label):
            continue
        local = verse_map[box] == label
        indices = np.argwhere(local) + np.array([b.start for b in box])
        points = array_indices_to_world(image, indices)
        volume_ml = len(indices) * voxel_ml
        truncated = touches_border(verse_map.shape, box)
        reason, extents = _shape_reason(points, volume_ml, truncated, image)
        p90 = float(np.percentile(ct[box][local], 90)) if use_hu else None
        if reason is None and use_hu and p90 < BONE_MIN_P90_HU:
            reason = f"not bone (90th percentile {p90:.0f} HU < {BONE_MIN_P90_HU:.0f} HU)"
        result.measures[label] = {"volume_ml": round(volume_ml, 2), "extent_mm": [round(e, 1) for e in
                                                                                  sorted(extents)[::-1]],
                                  "p90_hu": None if p90 is None else round(p90, 1)}
        if reason:
            result.vertebrae[label] = reason
        elif not truncated:  # a cut vertebra's centroid is biased by the cut: not a chain member
            centroids[label], volumes[label] = points.mean(axis=0), volume_ml
    chain = set(longest_chain(list(centroids), centroids, volumes))
    for label in centroids:
        if label not in chain:
            result.vertebrae[label] = ("off the spine: not in line with the other vertebrae (spacing or direction "
                                       "to its neighbours outside anatomical bounds)")
    total = len(result.measures)
    components = total if num_components is None else int(num_components)
    if components > MAX_COMPONENTS:
        result.case_reason = (f"the segmentation holds {components} components, more than twice the vertebrae of a "
                              "whole spine")
    elif total and len(result.vertebrae) * 2 > total:
        result.case_reason = (f"{len(result.vertebrae)} of {total} labelled structures are not plausible vertebrae "
                              "(the segmentation does not outline a spine)")
    return result


def describe(result: Plausibility) -> list[str]:
    """One line per finding, for logs."""
    lines = [f"{name_of(label)}: {reason}" for label, reason in sorted(result.vertebrae.items(),
                                                                      key=lambda item: spine_position(item[0]))]
    return ([f"case: {result.case_reason}"] if result.case_reason else []) + lines
