"""The budget's memory model against measurement: one training step of each network of the CPU plan."""
import sys

import pytest

from vfscreen import labels
from vfscreen.experiment_planning import budget as B
from vfscreen.experiment_planning.benchmark_budget import measure_peak_memory_gb, typical_cpu_plan, typical_segmentation

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS via /proc is Linux-only")


@pytest.fixture(scope="module")
def cpu_plan():
    return typical_cpu_plan("cpu_demo")


def test_training_step_memory_within_model_estimate(cpu_plan):
    """One training step of the CPU plan's grader and segmentation nets: measured peak RSS = model +-50%."""
    seg, grader, _, _ = cpu_plan
    network = grader["network"]
    grader_estimate = B.residual_encoder_cost(
        grader["crop"]["patch_size"], network["features_per_stage"], network["strides"],
        network["n_blocks_per_stage"], block=network["block"]).training_memory_gb(
        B.grader_views_per_batch(grader["sampler"]["samples_per_class"], grader["sampler"]["views"]), 4)
    arch = seg["architecture"]["arch_kwargs"]
    group_labels, regions = labels.grouped_labels_dict(seg["vfscreen"]["label_grouping"])  # the network's outputs
    heads = len(regions) if regions else len(group_labels)
    seg_estimate = B.unet_cost(seg["patch_size"], arch["features_per_stage"], arch["strides"], arch["kernel_sizes"],
                               arch["n_conv_per_stage"], arch["n_conv_per_stage_decoder"], heads).training_memory_gb(
        seg["batch_size"], 4)
    measured = measure_peak_memory_gb({"grader": grader, "seg": typical_segmentation(seg)})
    assert 0.5 * grader_estimate <= measured["grader"] <= 1.5 * grader_estimate, (measured, grader_estimate)
    assert 0.5 * seg_estimate <= measured["seg"] <= 1.5 * seg_estimate, (measured, seg_estimate)


def test_model_scales_with_batch_and_patch():
    small = B.residual_encoder_cost([32] * 3, [16, 32, 64, 128], [1, 2, 2, 2], [1, 1, 2, 1])
    large = B.residual_encoder_cost([64] * 3, [16, 32, 64, 128], [1, 2, 2, 2], [1, 1, 2, 1])
    assert large.activation_elements == pytest.approx(8 * small.activation_elements, rel=0.01)
    assert small.training_memory_gb(8) > small.training_memory_gb(4) > small.training_memory_gb(2)
    assert small.training_memory_gb(4, bytes_per_activation=2) < small.training_memory_gb(4, bytes_per_activation=4)
    assert B.DeviceBudget("cuda", 12, 8).usable_memory_gb < 12
