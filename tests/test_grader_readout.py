"""Readouts on fixed tiny feature sets: the probe, the head's raw argmax, macro-F1 over present grades, the
representation statistics and the normalised SupCon loss give known results."""
import math

import numpy as np
import pytest
import torch

from vfscreen.core.grader_network import build_grader
from vfscreen.training.grader.optimization import build_optimizer, learning_rate_factor
from vfscreen.training.grader.readout import (cosine_within_across, fit_linear_probe, install_probe, softmax)
from vfscreen.training.grader.supcon import SupConLoss
from vfscreen.training.grader.validation import grading_metrics

# four grades as four corners of a square in 2-D, three points each (jittered, linearly separable)
CORNERS = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0], [4.0, 4.0]])
JITTER = np.array([[0.3, 0.1], [-0.2, 0.3], [0.1, -0.3]])
FEATURES = np.concatenate([corner + JITTER for corner in CORNERS]) + 10.0  # an offset the probe must absorb
GRADES = np.repeat(np.arange(4), 3)


def test_probe_separates_four_separable_grades_and_acts_on_raw_features():
    probe = fit_linear_probe(FEATURES, GRADES)
    assert probe.converged, probe.message
    logits = probe.logits(FEATURES)
    np.testing.assert_array_equal(logits.argmax(axis=1), GRADES)
    metrics = grading_metrics(GRADES, softmax(logits))
    assert metrics["multiclass"]["macro_f1"] == 1.0
    assert metrics["binary"]["auroc"] == 1.0


def test_probe_is_class_balanced():
    # 9 G0 points around one corner, one point for each other grade: a balanced fit still gives each its region
    features = np.concatenate([CORNERS[0] + np.random.default_rng(0).normal(0, 0.3, (9, 2)), CORNERS[1:]])
    grades = np.array([0] * 9 + [1, 2, 3])
    probe = fit_linear_probe(features, grades)
    assert probe.converged
    np.testing.assert_array_equal(probe.logits(CORNERS).argmax(axis=1), [0, 1, 2, 3])


def test_probe_that_does_not_converge_or_lacks_a_grade_is_refused():
    not_converged = fit_linear_probe(FEATURES, GRADES, max_iter=1)
    assert not not_converged.converged and "did not converge" in not_converged.message
    lacking = fit_linear_probe(FEATURES[GRADES != 2], GRADES[GRADES != 2])
    assert not lacking.converged and "every grade" in lacking.message


def test_installed_probe_is_the_networks_head():
    network = build_grader({"block": "BasicBlockD", "features_per_stage": [2, 2], "n_blocks_per_stage": [1, 1],
                            "strides": [1, 2], "kernel_sizes": [3, 3]}, "supcon")
    probe = fit_linear_probe(FEATURES, GRADES)
    install_probe(network, probe)
    with torch.no_grad():
        head_logits = network.classification_head(torch.tensor(FEATURES, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(head_logits, probe.logits(FEATURES), rtol=1e-4, atol=1e-3)


def test_head_argmax_uses_raw_logits_and_macro_f1_covers_present_grades():
    # logits that favour the right grade by 1 - a log-prior for a 90 % G0 population would turn every one into G0
    grades = np.array([0, 0, 1, 3])  # G2 absent from this validation set
    logits = np.full((4, 4), 0.0)
    logits[np.arange(4), grades] = 1.0
    metrics = grading_metrics(grades, softmax(logits))
    assert metrics["multiclass"]["macro_f1"] == 1.0
    assert metrics["multiclass"]["macro_over_grades"] == ["G0", "G1", "G3"]
    prior = np.log(np.array([0.9, 1 / 30, 1 / 30, 1 / 30]) * 4)
    corrected = grading_metrics(grades, softmax(logits + prior))
    assert np.asarray(corrected["multiclass"]["confusion_matrix"])[:, 0].sum() == 4  # all G0: why it is not used


def test_cosine_within_and_across_grades():
    features = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    assert cosine_within_across(features, np.array([0, 0, 1, 1])) == {"within": 1.0, "across": 0.0}
    assert cosine_within_across(features[:2], np.array([0, 1]))["within"] is None


def test_normalised_supcon_is_one_at_chance_and_near_zero_when_grades_are_separated():
    loss = SupConLoss(0.07)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    identical = torch.nn.functional.normalize(torch.ones(6, 2, 4), dim=2)
    assert loss.normalised(identical, labels) == pytest.approx(1.0)
    separated = torch.nn.functional.normalize(torch.eye(4)[labels][:, None, :].repeat(1, 2, 1), dim=2)
    assert loss.normalised(separated, labels) < 1e-3


def test_anchor_without_positive_is_skipped_and_counted():
    loss = SupConLoss(0.5)
    projections = torch.nn.functional.normalize(torch.randn(4, 1, 8, generator=torch.Generator().manual_seed(0)), dim=2)
    value = loss(projections, torch.tensor([0, 0, 1, 2]))  # one view each: grades 1 and 2 have a single crop
    assert loss.last_skipped_anchors == 2
    assert math.isfinite(value.item())


def test_head_has_its_own_parameter_group_and_schedules_warm_up_then_decay():
    network = build_grader({"block": "BasicBlockD", "features_per_stage": [2, 2], "n_blocks_per_stage": [1, 1],
                            "strides": [1, 2], "kernel_sizes": [3, 3]}, "supcon")
    optimizer = build_optimizer(network, {"name": "sgd", "lr": 0.1, "weight_decay": 1e-4, "head_lr": 0.5})
    body, head = optimizer.param_groups
    assert (head["lr"], head["weight_decay"], body["lr"], body["weight_decay"]) == (0.5, 0.0, 0.1, 1e-4)
    assert len(head["params"]) == 2  # weight and bias of the linear head
    cosine = {"schedule": "cosine", "warmup_fraction": 0.1}
    assert [round(learning_rate_factor(cosine, e, 10), 3) for e in (0, 1, 10)] == [0.5, 1.0, 0.0]
    step = {"lr_decay_at": [0.5], "lr_decay_factor": 0.1}
    assert [learning_rate_factor(step, e, 10) for e in (4, 5)] == [1.0, pytest.approx(0.1)]
    assert isinstance(build_optimizer(network, {"name": "adam", "lr": 1e-3}), torch.optim.Adam)
