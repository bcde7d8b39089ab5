"""Vertebra sizes as evidence of the level (vfscreen.core.vertebra_sizes): fitting, the file, and the chain."""
import json

import numpy as np
import pytest
import SimpleITK as sitk

from vfscreen.core import vertebra_sizes
from vfscreen.errors import ConfigError
from vfscreen.inference.chain_model import LEVEL_CERTAIN_POSTERIOR, assign_labels
from vfscreen.inference.label_consistency import cut_by_field_of_view
from vfscreen.inference.landmarks import LandmarkEvidence, LandmarkLikelihoods, landmark_log_factors
from vfscreen.labels import CLASS_TO_VERSE, NAME_TO_VERSE, NUM_VERTEBRA_CLASSES, VERSE_NAMES, VERSE_TO_CLASS
from vfscreen.training.segmentation import record_vertebra_sizes


def _class(name):
    return VERSE_TO_CLASS[NAME_TO_VERSE[name]]


def _names(classes):
    return [VERSE_NAMES[CLASS_TO_VERSE[int(c)]] if c else "-" for c in classes]


# log volume grows 0.12 per level from T1 (class 8) on: a made-up anatomy, exact so that the fit can be checked
def _true_log_volume(class_id):
    return 8.0 + 0.12 * (class_id - _class("T1"))


def _cases(num_cases=30, seed=0, patient_sd=0.15, vertebra_sd=0.05):
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(num_cases):
        offset = rng.normal(0, patient_sd)
        first = int(rng.integers(_class("T1"), _class("L1")))
        cases.append({c: float(np.exp(_true_log_volume(c) + offset + rng.normal(0, vertebra_sd)))
                      for c in range(first, min(first + 8, _class("L5") + 1)) if c != _class("T13")})
    return cases


def test_fit_recovers_class_sizes_patient_spread_and_the_network_line():
    cases = _cases(num_cases=200)
    pairs = [(v, float(np.exp(1.0 + 0.9 * np.log(v)))) for table in cases[:20] for v in table.values()]
    model = vertebra_sizes.fit_size_model(cases, pairs)
    seen = [c for c in model.classes_seen if c != _class("T13")]
    fitted = np.array(model.class_log_volume)[np.array(seen) - 1]
    expected = np.array([_true_log_volume(c) for c in seen])
    # class means are identified up to the mean patient offset: compare shapes after removing the mean
    assert np.allclose(fitted - fitted.mean(), expected - expected.mean(), atol=0.02)
    assert model.patient_sd == pytest.approx(0.15, abs=0.03)
    assert model.reference_sd == pytest.approx(0.05, abs=0.01)
    assert (model.alpha, model.beta) == pytest.approx((1.0, 0.9), abs=1e-3)
    # classes never seen (cervical, T13) are filled: below T1 along the first classes' slope, T13 between T12 and L1
    volumes = np.array(model.class_log_volume)
    assert volumes[_class("C7") - 1] == pytest.approx(volumes[_class("T1") - 1] - 0.12, abs=0.03)
    assert volumes[_class("T12") - 1] < volumes[_class("T13") - 1] < volumes[_class("L1") - 1]
    assert vertebra_sizes.fit_size_model(cases, pairs[:vertebra_sizes.MIN_CALIBRATION_VERTEBRAE - 1]) is None
    assert vertebra_sizes.fit_size_model([cases[0]] if len(cases[0]) < 10 else [{}], pairs) is None


def _model(**changes):
    values = dict(class_log_volume=[_true_log_volume(c) for c in range(1, NUM_VERTEBRA_CLASSES + 1)],
                  patient_sd=0.15, reference_sd=0.05, alpha=0.0, beta=1.0, network_sd=0.05)
    values.update(changes)
    return vertebra_sizes.SizeModel(**values)


def test_factors_favour_the_right_level_and_say_nothing_for_cut_components():
    volumes = np.exp([_true_log_volume(c) for c in range(_class("T6"), _class("T6") + 4)])
    log_prior, factors = _model().log_factors(volumes, [True, True, True, False])
    assert log_prior.shape == (vertebra_sizes.SCALE_GRID_POINTS,)
    assert np.exp(log_prior).sum() == pytest.approx(1.0)
    assert factors.shape == (vertebra_sizes.SCALE_GRID_POINTS, 4, NUM_VERTEBRA_CLASSES)
    middle = vertebra_sizes.SCALE_GRID_POINTS // 2  # patient scale 0
    assert int(np.argmax(factors[middle, 0])) + 1 == _class("T6")
    assert np.all(factors[:, 3] == 0.0)


def test_sizes_name_a_mid_thoracic_field_that_nothing_else_anchors():
    """Eight rib-bearing components, both ends cut, no other evidence: without sizes every start is equally likely;
    with the sizes of an average patient, T3-T10."""
    classes = list(range(_class("T3"), _class("T3") + 8))
    flat = np.full((8, NUM_VERTEBRA_CLASSES), 1.0 / NUM_VERTEBRA_CLASSES)
    ribs = landmark_log_factors(LandmarkEvidence(8, [{"left", "right"}] * 8, ribs_in_view=True, cut_by_view=[0, 7]))
    _, confidence_without, _ = assign_labels(flat, None, ribs)
    assert max(confidence_without) < 0.3
    whole = [False] + [True] * 6 + [False]
    volumes = np.exp([_true_log_volume(c) for c in classes])
    named, confidence, marginals = assign_labels(flat, None, ribs, None, _model().log_factors(volumes, whole))
    assert _names(named) == _names(classes)
    assert min(confidence[1:7]) > 1.5 * max(confidence_without)  # sizes narrow the level, they do not fix it
    assert np.allclose(marginals.sum(axis=1), 1.0)


def test_the_patient_scale_limits_what_sizes_can_say():
    """A patient 10 % larger in every direction (log volume + 0.3): a size model that believes every patient is
    average reads it as a field of view two or three levels lower; with a broad patient spread it stays unsure."""
    classes = list(range(_class("T3"), _class("T3") + 8))
    flat = np.full((8, NUM_VERTEBRA_CLASSES), 1.0 / NUM_VERTEBRA_CLASSES)
    ribs = landmark_log_factors(LandmarkEvidence(8, [{"left", "right"}] * 8, ribs_in_view=True, cut_by_view=[0, 7]))
    whole = [False] + [True] * 6 + [False]
    volumes = np.exp([_true_log_volume(c) + 0.3 for c in classes])
    rigid, _, _ = assign_labels(flat, None, ribs, None, _model(patient_sd=0.01).log_factors(volumes, whole))
    assert rigid[1] - classes[1] in (2, 3)
    _, confidence, _ = assign_labels(flat, None, ribs, None, _model(patient_sd=0.4).log_factors(volumes, whole))
    assert max(confidence) < LEVEL_CERTAIN_POSTERIOR


def test_a_cut_thoracic_vertebra_without_rib_costs_less_than_a_whole_one():
    likelihoods = LandmarkLikelihoods()
    evidence = LandmarkEvidence(3, [set(), {"left", "right"}, set()], ribs_in_view=True, cut_by_view=[0])
    factors = landmark_log_factors(evidence, likelihoods)
    thoracic = _class("T5") - 1
    assert factors[0, thoracic] == pytest.approx(np.log(likelihoods.no_rib_on_cut_thoracic))
    assert factors[2, thoracic] == pytest.approx(np.log(likelihoods.no_rib_on_thoracic))
    assert factors[0, _class("C7") - 1] == 0.0


def test_cut_by_field_of_view_is_the_image_border_along_the_spine():
    component_map = np.zeros((10, 6, 6), np.int32)
    component_map[0:3, 2:4, 2:4] = 1  # touches the region's first slice
    component_map[4:7, 0:4, 2:6] = 2  # touches the image's side borders only: a process cut, not the level
    component_map[7:10, 2:4, 2:4] = 3  # touches the region's last slice
    reference = sitk.Image((6, 6, 10), sitk.sitkUInt8)  # identity direction: numpy axis 0 runs head-feet
    assert cut_by_field_of_view(component_map, reference) == [0, 2]
    # the region starts inside the image and ends at its last slice: only the last component is cut
    box = (slice(5, 15), slice(0, 6), slice(0, 6))
    assert cut_by_field_of_view(component_map, reference, (box, (15, 6, 6))) == [2]
    # an image whose first index axis (numpy axis 2) runs head-feet: the side borders are now the spine's ends
    reference.SetDirection((0, 0, 1, 0, 1, 0, 1, 0, 0))
    assert vertebra_sizes.cranio_caudal_axis(reference) == 2
    assert cut_by_field_of_view(component_map, reference) == [1]


def _image(array, spacing=(2.0, 2.0, 2.0)):
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(spacing)
    return image


def _spine_labels(classes, scale, shape=(70, 16, 16)):
    """Boxes of growing size along z, one per class, with a margin (whole) or cut by the first slice."""
    labels = np.zeros(shape, np.uint8)
    z = 1
    for class_id in classes:
        half = int(round(scale * (2 + 0.25 * (class_id - _class("T1")))))
        labels[z:z + 6, 8 - half:8 + half, 8 - half:8 + half] = class_id
        z += 7
    return labels


def test_training_records_a_size_model_that_prediction_reads(tmp_path):
    preprocessed, fold = tmp_path / "preprocessed", tmp_path / "results" / "fold_0"
    (preprocessed / "gt_segmentations").mkdir(parents=True)
    (fold / "validation").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for case in range(8):
        first = int(rng.integers(_class("T1"), _class("T6")))
        labels = _spine_labels(range(first, first + 9), scale=rng.uniform(0.9, 1.1))
        sitk.WriteImage(_image(labels), str(preprocessed / "gt_segmentations" / f"case_{case}.nii.gz"))
        if case >= 6:  # validation: the network calls every vertebra voxel 'vertebra' (group 1), one voxel fatter
            predicted = (sitk.GetArrayFromImage(sitk.BinaryDilate(_image(labels > 0), [1, 1, 0])) > 0)
            sitk.WriteImage(_image(predicted.astype(np.uint8)), str(fold / "validation" / f"case_{case}.nii.gz"))
    path = record_vertebra_sizes(fold, preprocessed, "spine_regions")
    content = json.loads(path.read_text())
    assert content["validation_cases"] == ["case_6", "case_7"]
    assert content["num_validation_vertebrae"] == 18
    assert content["alpha"] > 0 and 0 < content["beta"] < 1  # the fatter shell inflates small vertebrae most
    model = vertebra_sizes.read_size_model(tmp_path / "results", [0, 1])
    assert model.class_log_volume == pytest.approx(content["class_log_volume"])
    assert vertebra_sizes.read_size_model(tmp_path / "results", [1]) is None
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not a vertebra-size file"):
        vertebra_sizes.read_size_model(tmp_path / "results", [0])
    path.write_text(json.dumps({**content, "class_log_volume": [1.0, 2.0]}))
    with pytest.raises(ConfigError, match="class_log_volume"):
        vertebra_sizes.read_size_model(tmp_path / "results", [0])
