"""Matching predicted to reference vertebrae on hand-made label maps with anisotropic spacing and a rotated,
flipped direction: centroids in world mm, identification rate, Dice, missed and extra vertebrae are exact."""
import math

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from vfscreen.errors import InputError
from vfscreen.evaluation.matching import (dice_per_label, label_centroids_mm, match_case, match_vertebrae,
                                          segmentation_metrics)

SPACING = (2.0, 3.0, 6.0)  # x, y, z in mm
ORIGIN = (10.0, -20.0, 30.0)
ANGLE = math.radians(30)
# columns = directions of the index axes: x rotated by 30 degrees about z, y flipped, z kept
DIRECTION = np.array([[math.cos(ANGLE), math.sin(ANGLE), 0.0],
                      [math.sin(ANGLE), -math.cos(ANGLE), 0.0],
                      [0.0, 0.0, 1.0]])
L1, L2, L3, L4 = 20, 21, 22, 23


def make_image(array_zyx: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array_zyx.astype(np.uint8))
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(DIRECTION.flatten().tolist())
    return image


def hand_centroid_mm(array_zyx: np.ndarray, label: int) -> np.ndarray:
    z, y, x = np.nonzero(array_zyx == label)
    index_centroid = np.array([x.mean(), y.mean(), z.mean()])
    return np.asarray(ORIGIN) + DIRECTION @ (np.asarray(SPACING) * index_centroid)


def hand_dice(reference: np.ndarray, prediction: np.ndarray, label: int) -> float:
    a, b = reference == label, prediction == label
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


@pytest.fixture
def label_maps():
    reference = np.zeros((12, 10, 8), dtype=np.uint8)
    reference[0:4, 2:8, 2:6] = L1
    reference[4:8, 2:8, 2:6] = L2
    reference[8:12, 2:8, 2:6] = L3
    prediction = np.zeros_like(reference)
    prediction[0:4, 2:8, 2:5] = L1  # right label, partial overlap
    prediction[8:12, 2:8, 2:6] = L2  # labelled L2 but where L3 is: 4 slices x 6 mm = 24 mm from L2 -> not identified
    prediction[5:7, 0:2, 0:2] = L4  # a vertebra that is not in the reference
    return reference, prediction


def test_centroids_are_world_coordinates(label_maps):
    reference, _ = label_maps
    centroids = label_centroids_mm(make_image(reference))
    assert sorted(centroids) == [L1, L2, L3]
    for label in (L1, L2, L3):
        np.testing.assert_allclose(centroids[label], hand_centroid_mm(reference, label), rtol=0, atol=1e-9)


def test_identification_dice_missed_extra_exact(label_maps):
    reference, prediction = label_maps
    match = match_case("case", make_image(reference), make_image(prediction))
    assert sorted(match.identified) == [L1]
    assert match.missed == [L2, L3] and match.extra == [L2, L4]
    distance_l2 = np.linalg.norm(hand_centroid_mm(prediction, L2) - hand_centroid_mm(reference, L2))
    assert distance_l2 == pytest.approx(24.0, abs=1e-9)
    assert match.distances_mm[L2] == pytest.approx(distance_l2, abs=1e-9)
    assert match.dice[L1] == pytest.approx(hand_dice(reference, prediction, L1), abs=1e-12)
    assert match.dice[L1] == pytest.approx(6 / 7, abs=1e-12)  # 2 * 72 / (96 + 72)
    assert match.dice[L2] == 0.0 and match.dice[L3] == 0.0
    metrics = segmentation_metrics(pd.DataFrame(match.vertebra_rows()), pd.DataFrame(match.extra_rows()))
    assert metrics["identification_rate"]["value"] == pytest.approx(1 / 3, abs=1e-12)
    assert metrics["dice_mean"]["value"] == pytest.approx((6 / 7) / 3, abs=1e-12)
    assert (metrics["num_missed"], metrics["num_extra"], metrics["num_reference_vertebrae"]) == (2, 2, 3)
    assert metrics["dice_per_vertebra"]["L1"]["value"] == pytest.approx(6 / 7, abs=1e-12)


def test_small_shift_is_identified_at_the_hand_distance(label_maps):
    reference, _ = label_maps
    shifted = np.zeros_like(reference)
    shifted[0:4, 2:8, 3:7] = L1  # one column = 2 mm
    shifted[4:8, 3:9, 2:6] = L2  # one row = 3 mm
    shifted[8:12, 2:8, 2:6] = L3
    match = match_case("case", make_image(reference), make_image(shifted))
    assert sorted(match.identified) == [L1, L2, L3] and not match.missed and not match.extra
    assert match.identified[L1] == pytest.approx(2.0, abs=1e-9)
    assert match.identified[L2] == pytest.approx(3.0, abs=1e-9)
    assert match.dice[L1] == pytest.approx(hand_dice(reference, shifted, L1), abs=1e-12) == 0.75


def test_distance_limit_and_json_centroids():
    reference = {L1: np.array([0.0, 0.0, 0.0]), L2: np.array([0.0, 0.0, 30.0])}
    predicted = {L1: np.array([12.0, 16.0, 0.0]), L2: np.array([0.0, 0.0, 50.01])}  # 20 mm exactly; 20.01 mm
    match = match_vertebrae("case", reference, predicted)
    assert list(match.identified) == [L1] and match.missed == [L2] and match.extra == [L2]
    assert match.identified[L1] == pytest.approx(20.0, abs=1e-12)


def test_missing_prediction_misses_everything(label_maps):
    reference, _ = label_maps
    match = match_case("case", make_image(reference))
    assert match.missed == [L1, L2, L3] and match.dice == {L1: 0.0, L2: 0.0, L3: 0.0}


def test_prediction_on_another_grid_is_rejected(label_maps):
    reference, prediction = label_maps
    other = make_image(prediction)
    other.SetSpacing((2.0, 3.0, 5.0))
    with pytest.raises(InputError, match="voxel grid"):
        dice_per_label(make_image(reference), other, [L1])


def test_position_rule_pairs_misnamed_vertebrae_by_centroid():
    # the prediction finds the three vertebrae but names each one level too high (L2, L3, L4 for L1, L2, L3)
    reference = np.zeros((12, 10, 8), dtype=np.uint8)
    for index, label in enumerate((L1, L2, L3)):
        reference[4 * index: 4 * index + 4, 2:8, 2:6] = label
    prediction = np.zeros_like(reference)
    prediction[0:4, 2:8, 2:5] = L2  # partial overlap with L1
    prediction[4:8, 2:8, 2:6] = L3
    prediction[8:12, 2:8, 2:6] = L4
    by_label = match_case("c", make_image(reference), make_image(prediction))
    assert by_label.identified == {} and by_label.missed == [L1, L2, L3] and by_label.extra == [L2, L3, L4]
    by_position = match_case("c", make_image(reference), make_image(prediction), rule="position")
    assert by_position.partner == {L1: L2, L2: L3, L3: L4} and by_position.missed == [] and by_position.extra == []
    expected_l1 = hand_centroid_mm(prediction, L2) - hand_centroid_mm(reference, L1)
    assert by_position.identified[L1] == pytest.approx(float(np.linalg.norm(expected_l1)), abs=1e-9)
    a, b = reference == L1, prediction == L2
    assert by_position.dice[L1] == pytest.approx(2 * np.count_nonzero(a & b) / (a.sum() + b.sum()), abs=1e-12)
    assert by_position.dice[L2] == 1.0 and by_position.dice[L3] == 1.0
    # one-to-one: two predictions near one reference vertebra -> the nearer is paired, the other is extra
    from vfscreen.evaluation.matching import match_by_position
    crowded = match_by_position("c", {L1: np.zeros(3)}, {L2: np.array([0.0, 0, 5]), L3: np.array([0.0, 0, 3])})
    assert crowded.partner == {L1: L3} and crowded.extra == [L2]
    with pytest.raises(ValueError):
        match_case("c", make_image(reference), make_image(prediction), rule="nearest")
