"""Matching predicted to reference vertebrae, identification rate and Dice.

A reference vertebra is *identified* when the predicted vertebra with the same label exists and its centroid lies
within 20 mm of the reference centroid (the 20 mm criterion of the VerSe challenge, Sekuboyina et al. 2021; VerSe
additionally asks that no other predicted centroid be closer, which this simpler rule does not).
An identified vertebra is *matched* to that predicted vertebra; its grade, probabilities and morphometry are compared
with the reference. A reference vertebra that is not identified is *missed* (a missed fractured vertebra is a false
negative: it is scored as predicted G0 with P(fracture) = 0). A predicted vertebra that is not matched is *extra*
(a vertebra given the wrong label counts once as missed and once as extra).

Rule ``position`` (detection, names ignored) pairs every reference vertebra with at most one predicted vertebra by
centroid distance alone (an optimal one-to-one assignment, scipy's ``linear_sum_assignment``, pairs farther than
20 mm dropped): it separates finding and grading vertebrae from naming them, and is reported beside, never instead of,
the label rule.

Centroids are in world coordinates (mm, LPS as SimpleITK reports them), so the check does not depend on the image
direction or spacing. Dice is computed per reference vertebra label by SimpleITK's LabelOverlapMeasuresImageFilter
on the two label maps (VerSe ids, same voxel grid); a reference vertebra absent from the prediction has Dice 0.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import SimpleITK as sitk

from vfscreen import labels
from vfscreen.errors import InputError
from vfscreen.evaluation.metrics import defined, undefined
from vfscreen.utils.image_io import same_geometry

MAX_CENTROID_DISTANCE_MM = 20.0
MATCHING_RULES = ("label", "position")


def label_centroids_mm(label_image: sitk.Image) -> dict[int, np.ndarray]:
    """Centroid of every non-zero label, world coordinates in mm (SimpleITK/LPS), keyed by label value."""
    statistics = sitk.LabelShapeStatisticsImageFilter()
    statistics.Execute(sitk.Cast(label_image, sitk.sitkUInt32))
    return {int(label): np.asarray(statistics.GetCentroid(label), dtype=float) for label in statistics.GetLabels()}


def dice_per_label(reference: sitk.Image, prediction: sitk.Image, label_values) -> dict[int, float]:
    """Dice of each label of ``label_values`` between two label maps on the same voxel grid (0 when the label is
    absent from the prediction)."""
    if not same_geometry(reference, prediction):
        raise InputError(f"predicted segmentation (size {prediction.GetSize()}, spacing "
                         f"{np.round(prediction.GetSpacing(), 4).tolist()}) is not on the reference mask's voxel grid "
                         f"(size {reference.GetSize()}, spacing {np.round(reference.GetSpacing(), 4).tolist()})")
    reference_cast = sitk.Cast(reference, sitk.sitkUInt16)
    prediction_cast = sitk.Cast(prediction, sitk.sitkUInt16)
    prediction_cast.CopyInformation(reference_cast)  # equal within tolerance; the filter wants them identical
    overlap = sitk.LabelOverlapMeasuresImageFilter()
    overlap.Execute(reference_cast, prediction_cast)
    predicted_labels = set(label_centroids_mm(prediction).keys())
    return {int(label): float(overlap.GetDiceCoefficient(int(label))) if int(label) in predicted_labels else 0.0
            for label in label_values}


@dataclass
class CaseMatch:
    """Result of matching one case. Labels are VerSe ids."""

    case_id: str
    reference_labels: list[int]
    identified: dict[int, float] = field(default_factory=dict)  # label -> centroid distance (mm)
    missed: list[int] = field(default_factory=list)
    extra: list[int] = field(default_factory=list)
    dice: dict[int, float] = field(default_factory=dict)  # empty when no predicted segmentation was available
    distances_mm: dict[int, float] = field(default_factory=dict)  # every same-label pair, also those too far
    partner: dict[int, int] = field(default_factory=dict)  # identified reference label -> its predicted label

    def vertebra_rows(self) -> list[dict]:
        return [{"case_id": self.case_id, "label": label, "name": labels.name_of(label),
                 "identified": label in self.identified,
                 "centroid_distance_mm": self.distances_mm.get(label, float("nan")),
                 "dice": self.dice.get(label, float("nan"))} for label in self.reference_labels]

    def extra_rows(self) -> list[dict]:
        return [{"case_id": self.case_id, "label": label, "name": labels.name_of(label),
                 "centroid_distance_mm": self.distances_mm.get(label, float("nan"))} for label in self.extra]


def match_vertebrae(case_id: str, reference_centroids: dict[int, np.ndarray],
                    predicted_centroids: dict[int, np.ndarray],
                    max_distance_mm: float = MAX_CENTROID_DISTANCE_MM) -> CaseMatch:
    """Match by label with the centroid-distance check (see the module docstring)."""
    match = CaseMatch(case_id=case_id, reference_labels=sorted(reference_centroids, key=labels.spine_position))
    for label in match.reference_labels:
        if label in predicted_centroids:
            distance = float(np.linalg.norm(np.asarray(predicted_centroids[label], dtype=float)
                                            - reference_centroids[label]))
            match.distances_mm[label] = distance
            if distance <= max_distance_mm:
                match.identified[label] = distance
                match.partner[label] = label
                continue
        match.missed.append(label)
    match.extra = sorted((label for label in predicted_centroids if label not in match.identified),
                         key=labels.spine_position)
    return match


def match_by_position(case_id: str, reference_centroids: dict[int, np.ndarray],
                      predicted_centroids: dict[int, np.ndarray],
                      max_distance_mm: float = MAX_CENTROID_DISTANCE_MM) -> CaseMatch:
    """Detection: the one-to-one pairing of reference and predicted centroids with the least total distance, pairs
    within ``max_distance_mm`` kept, labels ignored (see the module docstring)."""
    from scipy.optimize import linear_sum_assignment

    match = CaseMatch(case_id=case_id, reference_labels=sorted(reference_centroids, key=labels.spine_position))
    predicted = sorted(predicted_centroids, key=labels.spine_position)
    if match.reference_labels and predicted:
        distances = np.array([[float(np.linalg.norm(np.asarray(predicted_centroids[p], dtype=float)
                                                    - reference_centroids[r])) for p in predicted]
                              for r in match.reference_labels])  # (R, P)
        for row, column in zip(*linear_sum_assignment(distances)):
            reference_label = match.reference_labels[row]
            match.distances_mm[reference_label] = float(distances[row, column])
            if distances[row, column] <= max_distance_mm:
                match.identified[reference_label] = float(distances[row, column])
                match.partner[reference_label] = predicted[column]
    match.missed = [label for label in match.reference_labels if label not in match.identified]
    paired = set(match.partner.values())
    match.extra = [label for label in predicted if label not in paired]
    return match


def match_case(case_id: str, reference: sitk.Image, prediction: sitk.Image | None = None,
               predicted_centroids: dict[int, np.ndarray] | None = None,
               max_distance_mm: float = MAX_CENTROID_DISTANCE_MM, rule: str = "label") -> CaseMatch:
    """Match one case. ``reference`` and ``prediction`` are label maps in VerSe ids. Predicted centroids come from
    ``prediction`` when given, else from ``predicted_centroids`` (e.g. the prediction JSON); Dice needs
    ``prediction``. A missing prediction (both None) makes every reference vertebra missed with Dice 0."""
    reference_centroids = label_centroids_mm(reference)
    if prediction is not None:
        predicted_centroids = label_centroids_mm(prediction)
    if rule not in MATCHING_RULES:
        raise ValueError(f"matching rule {rule!r}: expected one of {MATCHING_RULES}")
    matcher = match_vertebrae if rule == "label" else match_by_position
    match = matcher(case_id, reference_centroids, predicted_centroids or {}, max_distance_mm)
    if prediction is not None and rule == "label":
        match.dice = dice_per_label(reference, prediction, match.reference_labels)
    elif prediction is not None:
        match.dice = _dice_of_pairs(reference, prediction, match, predicted_centroids)
    elif predicted_centroids is None:
        match.dice = {label: 0.0 for label in match.reference_labels}
    return match


def segmentation_metrics(vertebra_table: pd.DataFrame, extra_table: pd.DataFrame,
                         naming_table: pd.DataFrame | None = None) -> dict:
    """Pooled identification rate, mean Dice and Dice per vertebra name, missed and extra counts.

    ``vertebra_table``: one row per reference vertebra (columns case_id, label, identified, dice);
    ``extra_table``: one row per extra predicted vertebra (column case_id);
    ``naming_table`` (label matching only): one row per predicted vertebra (columns case_id, level_uncertain,
    named_right = it identifies a reference vertebra). Its metric, ``identification_rate_unflagged``, is the share of
    predicted vertebrae *not* flagged ``level_uncertain`` that carry the right name (an unflagged extra vertebra counts
    as wrong): a prediction must be right or say that it may not be.
    """
    num_reference = int(len(vertebra_table))
    identified = int(vertebra_table["identified"].sum()) if num_reference else 0
    result = {"num_reference_vertebrae": num_reference, "num_identified": identified,
              "num_missed": num_reference - identified, "num_extra": int(len(extra_table))}
    result["identification_rate"] = defined(identified / num_reference) if num_reference else \
        undefined("no reference vertebrae")
    dice = vertebra_table["dice"].to_numpy(dtype=float) if num_reference else np.zeros(0)
    known = np.isfinite(dice)
    if known.any():
        result["dice_mean"] = defined(float(dice[known].mean()))
        result["num_vertebrae_with_dice"] = int(known.sum())
        by_name = vertebra_table[known].groupby("label")["dice"].mean()
        result["dice_per_vertebra"] = {labels.name_of(int(label)): defined(value)
                                       for label, value in sorted(by_name.items(),
                                                                  key=lambda item: labels.spine_position(item[0]))}
    else:
        result["dice_mean"] = undefined("no predicted segmentation (<case>_seg.nii.gz) to compute Dice")
    if naming_table is not None:
        unflagged = ~naming_table["level_uncertain"].to_numpy(dtype=bool)
        result["num_predicted_level_uncertain"] = int((~unflagged).sum())
        result["num_predicted_unflagged"] = int(unflagged.sum())
        result["identification_rate_unflagged"] = (
            defined(float(naming_table["named_right"].to_numpy(dtype=bool)[unflagged].mean())) if unflagged.any()
            else undefined("every predicted vertebra is flagged level_uncertain (or none was predicted)"))
    return result


def _dice_of_pairs(reference: sitk.Image, prediction: sitk.Image, match: CaseMatch,
                   predicted_labels) -> dict[int, float]:
    """Dice of each reference vertebra with its position-matched predicted vertebra (0 when unmatched): the
    prediction relabelled with its partners' reference labels (unpaired vertebrae -> 0), then :func:`dice_per_label`."""
    to_reference = {predicted: reference_label for reference_label, predicted in match.partner.items()}
    change = {float(label): float(to_reference.get(label, 0)) for label in predicted_labels}
    return dice_per_label(reference, sitk.ChangeLabel(prediction, changeMap=change), match.reference_labels)
