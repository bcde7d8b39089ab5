"""A region network's trust, measured on its validation cases (vfscreen.core.region_confusion), in the chain."""
import json

import numpy as np
import pytest

from vfscreen.core import region_confusion
from vfscreen.errors import ConfigError
from vfscreen.inference.chain_model import assign_labels
from vfscreen.inference.label_consistency import _class_evidence
from vfscreen.inference.landmarks import LandmarkEvidence, landmark_log_factors
from vfscreen.labels import CLASS_TO_VERSE, NAME_TO_VERSE, SPINE_REGION_GROUP_IDS, VERSE_NAMES, VERSE_TO_CLASS


def _class(name):
    return VERSE_TO_CLASS[NAME_TO_VERSE[name]]


def test_counts_are_the_commonest_vertebra_group_per_reference_vertebra(tmp_path):
    reference = np.zeros((4, 4, 12), np.uint8)
    reference[..., 0:3] = _class("T11")
    reference[..., 4:7] = _class("L1")
    reference[..., 8:11] = _class("L2")  # missed entirely: not counted
    predicted = np.zeros_like(reference)
    predicted[..., 0:3] = SPINE_REGION_GROUP_IDS["thoracic"]
    predicted[..., 4:7] = SPINE_REGION_GROUP_IDS["thoracic"]  # a lumbar vertebra called thoracic
    predicted[0, 0, 4] = SPINE_REGION_GROUP_IDS["lumbar"]  # a minority voxel does not decide
    predicted[..., 8:11] = SPINE_REGION_GROUP_IDS["rib"]
    counts = region_confusion.confusion_counts(predicted, reference)
    assert counts.tolist() == [[0, 0, 0], [0, 1, 0], [0, 1, 0]]
    path = region_confusion.write_confusion(tmp_path / "fold_0", counts, ["a"])
    assert json.loads(path.read_text())["counts"] == counts.tolist()
    (tmp_path / "fold_1").mkdir()
    region_confusion.write_confusion(tmp_path / "fold_1", counts, ["b"])
    assert region_confusion.read_confusion(tmp_path, [0, 1, 2]).tolist() == (2 * counts).tolist()
    assert region_confusion.read_confusion(tmp_path, [3]) is None
    (tmp_path / "fold_1" / region_confusion.REGION_CONFUSION_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match="not a region-confusion file"):
        region_confusion.read_confusion(tmp_path, [1])


def test_a_network_that_calls_everything_thoracic_lets_the_ribs_decide():
    """Validation: every lumbar vertebra called thoracic. Its 'thoracic' output then says almost nothing, and the
    ribs on the first two of five components make them T11 / T12 and the rest L1-L3; taken at face value, its
    sigmoids make all five thoracic."""
    counts = np.array([[0, 2, 0], [0, 47, 0], [0, 31, 0]])  # rows true C / T / L, columns observed C / T / L
    likelihoods = region_confusion.observation_likelihoods(counts)
    outputs = np.array([1.0, 0.9, 0.05])  # mean sigmoids vertebra / thoracic / lumbar of every component
    calibrated = np.stack([_class_evidence(outputs, 2, "spine_regions", likelihoods)] * 5)
    at_face_value = np.stack([_class_evidence(outputs, 2, "spine_regions")] * 5)
    ribs = landmark_log_factors(LandmarkEvidence(5, [{"left", "right"}] * 2 + [set()] * 3, ribs_in_view=True))

    def names(evidence):
        return [VERSE_NAMES[CLASS_TO_VERSE[int(c)]] for c in assign_labels(evidence, None, ribs)[0]]

    assert names(calibrated) == ["T11", "T12", "L1", "L2", "L3"]
    assert all(name.startswith("T") for name in names(at_face_value))
