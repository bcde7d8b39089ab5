"""Planner choices: how the networks follow the budget and the data's spacing."""
import numpy as np
import pytest

from planning_dataset import fullres_configuration, nnunet_plans, synthetic_fingerprint
from vfscreen.errors import ConfigError
from vfscreen.experiment_planning import budget as B
from vfscreen.experiment_planning import planner as P
from vfscreen.core.plans import validate_plans
from vfscreen.experiment_planning.presets import load_preset

DATASET = "Dataset990_PlanTest"
TARGETS = B.PlanningTargets()


def _size(grader):
    cost = B.grader_cost(grader)
    return cost.forward_flops


def test_grader_grows_with_the_budget_and_fits_it():
    fingerprint = synthetic_fingerprint()
    devices = [B.DeviceBudget("cpu", 16, 2), B.DeviceBudget("cuda", 6, 8), B.DeviceBudget("cuda", 12, 8),
               B.DeviceBudget("cuda", 80, 8)]
    graders = [P.plan_grader(fingerprint, device, TARGETS, 5) for device in devices]
    memory = [g["estimated_memory_gb"] for g in graders]  # a larger budget is used for a larger network
    assert memory == sorted(memory) and len(set(memory)) == len(memory)
    edges = [g["crop"]["patch_size"][0] for g in graders[1:]]
    assert edges == sorted(edges)
    for device, grader in zip(devices, graders):
        assert grader["estimated_memory_gb"] <= device.usable_memory_gb
    assert graders[0]["network"]["block"] == "BasicBlockD" and graders[-1]["network"]["block"] == "BottleneckD"


def test_80gb_gpu_gives_the_papers_configuration():
    grader = P.plan_grader(synthetic_fingerprint(), B.DeviceBudget("cuda", 80, 8), TARGETS, 5)
    assert grader["network"]["name"] == "se_resnet50"
    assert grader["network"]["n_blocks_per_stage"] == [1, 3, 4, 6, 3]
    assert grader["crop"]["patch_size"] == [128, 128, 128] and grader["crop"]["mode"] == "fit"
    assert grader["sampler"] == {"samples_per_class": 6, "views": 2}
    assert grader["num_epochs"] == 1000 and grader["loss"] == {"name": "supcon", "temperature": 0.07}
    assert grader["optimizer"]["lr_decay_at"] == [0.8, 0.9]
    assert [w["width"] for w in grader["crop"]["windows"]] == [1500, 200]
    assert P.uses_stock_nnunet(B.DeviceBudget("cuda", 80, 8))


def test_faint_features_preset_fixes_the_papers_configuration_on_any_data():
    preset = load_preset("faint_features_2022")
    device = B.DeviceBudget("cuda", preset["device"]["memory_gb"], 8)
    small_vertebrae = synthetic_fingerprint(p95_extent_mm=30, min_spacing_mm=1.5)
    plans = P.assemble_plans(DATASET, small_vertebrae, nnunet_plans(), "3d_fullres", device, TARGETS, preset)
    validate_plans(plans, DATASET)
    grader = plans["configurations"]["3d"]["grader"]
    assert grader["crop"]["patch_size"] == [128, 128, 128] and grader["network"]["name"] == "se_resnet50"
    # the authors' code: 3 crops per grade x 2 views per GPU (24 views, SupCon per GPU), 2 GPUs with SyncBatchNorm
    assert grader["sampler"]["samples_per_class"] * 4 * 2 == 24 and grader["num_epochs"] == 1000
    assert grader["sync_batchnorm"] and grader["optimizer"]["lr"] == 0.005
    augmentation = grader["augmentation"]
    assert (augmentation["switch"], augmentation["mask_box_probability"], augmentation["isotropic_zoom"]) == \
        ("shared", 0.5, True)
    assert augmentation["mask_box_size"] == [1, 20]  # the planner's values where the preset is silent
    assert grader["crop"]["margin_mm"] == 3.0  # left open by the preset: from the fingerprint
    assert plans["configurations"]["3d"]["segmentation"]["trainer"] == "nnUNetTrainer"
    assert plans["preset"] == "faint_features_2022"


def test_crop_size_follows_vertebra_size_and_spacing():
    device = B.DeviceBudget("cuda", 80, 8)
    coarse = P.plan_grader(synthetic_fingerprint(p95_extent_mm=40, min_spacing_mm=1.0), device, TARGETS, 5)
    fine = P.plan_grader(synthetic_fingerprint(p95_extent_mm=40, min_spacing_mm=0.5), device, TARGETS, 5)
    assert coarse["crop"]["patch_size"][0] < fine["crop"]["patch_size"][0]
    stride = B.total_stride(fine["network"]["strides"])
    assert fine["crop"]["patch_size"][0] % stride == 0
    # the crop covers the 95th-percentile vertebra plus margins
    for grader in (coarse, fine):
        covered = grader["crop"]["patch_size"][0] * grader["crop"]["spacing_mm"]
        assert covered >= 40 + 2 * grader["crop"]["margin_mm"] - 1e-6


def test_cpu_grader_meets_the_speed_target():
    device = B.DeviceBudget("cpu", 16, 2)
    grader = P.plan_grader(synthetic_fingerprint(p95_extent_mm=50, min_spacing_mm=1.0), device, TARGETS, 5)
    views = B.grader_views_per_batch(grader["sampler"]["samples_per_class"], grader["sampler"]["views"])
    seconds = B.grader_cost(grader).training_seconds(views, 2)
    assert views / 2 / seconds >= TARGETS.grader_samples_per_second
    slower = B.PlanningTargets(cpu_gelements_per_thread=TARGETS.cpu_gelements_per_thread / 4)
    smaller = P.plan_grader(synthetic_fingerprint(p95_extent_mm=50, min_spacing_mm=1.0), device, slower, 5)
    assert _size(smaller) < _size(grader)


def test_samples_per_class_follow_the_rarest_grade_and_missing_grades_fail():
    few = P.plan_grader(synthetic_fingerprint(grade_counts=(100, 5, 9, 20)), B.DeviceBudget("cuda", 80, 8),
                        TARGETS, 5)
    assert few["sampler"]["samples_per_class"] == 4  # 5 G1 vertebrae, 4 in a training fold
    with pytest.raises(ConfigError, match="grade"):
        P.plan_grader(synthetic_fingerprint(grade_counts=(100, 0, 9, 20)), B.DeviceBudget("cpu", 8, 2), TARGETS, 5)


def test_budget_too_small_is_a_clear_error():
    with pytest.raises(ConfigError, match="budget too small"):
        P.plan_grader(synthetic_fingerprint(), B.DeviceBudget("cuda", 0.5, 8), TARGETS, 5)
    hopeless = B.PlanningTargets(seg_seconds_per_iteration=1e-6)
    with pytest.raises(ConfigError, match="budget too small"):
        P.plan_segmentation_cpu(fullres_configuration(), B.DeviceBudget("cpu", 8, 2), hopeless)


def test_cpu_segmentation_fits_the_time_budget_and_coarsens_large_images():
    device = B.DeviceBudget("cpu", 8, 2)
    small = P.plan_segmentation_cpu(fullres_configuration(median_shape=(48, 48, 48)), device, TARGETS)
    large = P.plan_segmentation_cpu(fullres_configuration(median_shape=(300, 250, 250)), device, TARGETS)
    assert small["spacing"] == [1.0, 1.0, 1.0]  # a small image is covered at full resolution
    assert min(large["spacing"]) > 1.0 and max(large["spacing"]) <= TARGETS.max_seg_spacing_mm
    for configuration in (small, large):
        arch = configuration["architecture"]["arch_kwargs"]
        cost = B.unet_cost(configuration["patch_size"], arch["features_per_stage"], arch["strides"],
                           arch["kernel_sizes"], 2, 2, 27)
        assert cost.training_seconds(configuration["batch_size"], 2) <= TARGETS.seg_seconds_per_iteration
        assert configuration["inherits_from"] == "3d_fullres"
        assert len(arch["features_per_stage"]) == len(arch["strides"]) == arch["n_stages"]
        assert max(arch["features_per_stage"]) < 320  # narrower than stock nnU-Net
    faster = P.plan_segmentation_cpu(fullres_configuration(median_shape=(300, 250, 250)), device,
                                     B.PlanningTargets(seg_seconds_per_iteration=2.0))
    assert np.prod(faster["patch_size"]) * faster["architecture"]["arch_kwargs"]["features_per_stage"][0] >= \
        np.prod(large["patch_size"]) * large["architecture"]["arch_kwargs"]["features_per_stage"][0]


def test_segmentation_section_of_a_budget_fitted_configuration():
    device = B.DeviceBudget("cpu", 8, 2)
    fullres = fullres_configuration()
    configurations = {"3d_fullres": fullres,
                      P.VFSCREEN_SEG_CONFIGURATION: P.plan_segmentation_cpu(fullres, device, TARGETS)}
    plans = P.assemble_plans(DATASET, synthetic_fingerprint(), nnunet_plans(configurations),
                             P.VFSCREEN_SEG_CONFIGURATION, device, TARGETS, None)
    validate_plans(plans, DATASET)
    seg = plans["configurations"]["3d"]["segmentation"]
    assert seg["trainer"] == "vfscreenSegTrainer" and seg["nnunet_configuration"] == "3d_vfscreen"
    assert seg["iterations_per_epoch"] == TARGETS.seg_iterations_per_epoch
    assert seg["num_epochs"] >= TARGETS.min_seg_epochs
    assert seg["patch_size"] == configurations["3d_vfscreen"]["patch_size"]
    # a CPU budget trains too few iterations for 26 classes: the coarse regions, named by the label chain model
    iterations = seg["num_epochs"] * seg["iterations_per_epoch"]
    assert iterations < P.MIN_ITERATIONS_FOR_VERTEBRA_CLASSES and seg["label_grouping"] == "spine_regions"
    assert configurations["3d_vfscreen"]["vfscreen"]["label_grouping"] == "spine_regions"
    # prediction on a CPU skips nnU-Net's test-time mirroring (~9x the segmentation time); a GPU plan keeps it
    assert seg["test_time_mirroring"] is False
    gpu = P.segmentation_section(nnunet_plans(configurations), "3d_fullres", B.DeviceBudget("cuda", 12, 8))
    assert gpu["test_time_mirroring"] is True


def test_label_grouping_follows_the_number_of_training_iterations():
    assert P.label_grouping_for(1500) == "spine_regions"
    assert P.label_grouping_for(P.MIN_ITERATIONS_FOR_VERTEBRA_CLASSES) == "vertebrae"
    assert P.label_grouping_for(250 * 1000) == "vertebrae"  # stock nnU-Net's schedule


def test_voxel_valued_augmentation_scales_with_the_patch():
    from vfscreen.experiment_planning.planner import grader_augmentation

    paper = grader_augmentation(128)
    assert paper["mask_box_size"] == [1, 20] and paper["shift_voxels"] == 10  # the paper's values at 128^3
    small = grader_augmentation(32)
    assert small["mask_box_size"] == [1, 5] and small["shift_voxels"] == 2
    assert small["rotation_degrees"] == paper["rotation_degrees"] and small["zoom"] == paper["zoom"]


@pytest.mark.parametrize("grade_counts, expected_epochs", [((367, 28, 16, 16), 100),  # the demo phantom: 4 batches
                                                           ((1676, 104, 65, 50), 31)])  # the full phantom: 13
def test_the_cpu_demo_step_budget_gives_400_sgd_steps_on_any_dataset_size(grade_counts, expected_epochs):
    # batches per pass = floor(rarest grade x 4/5 training folds / 3 per grade, the preset's); epochs = 400 / batches
    preset = load_preset("cpu_demo")
    targets = B.PlanningTargets.from_preset(preset["budget"])
    assert targets.grader_steps == 400
    plans = P.assemble_plans(DATASET, synthetic_fingerprint(grade_counts=grade_counts), nnunet_plans(), "3d_fullres",
                             B.DeviceBudget("cpu", 8, 2), targets, preset)
    grader = plans["configurations"]["3d"]["grader"]
    batches = int(min(grade_counts) * 4 / 5 // 3)
    assert grader["sampler"]["samples_per_class"] == 3 and grader["validate_every"] == 10  # fixed by the preset
    assert grader["num_epochs"] == expected_epochs and abs(grader["num_epochs"] * batches - 400) < batches
    # without a preset the planner's own batch (6 per grade) gives twice as many epochs for the same steps
    own = P.plan_grader(synthetic_fingerprint(grade_counts=grade_counts), B.DeviceBudget("cpu", 8, 2), targets, 5)
    assert own["sampler"]["samples_per_class"] == 6
    assert own["num_epochs"] == round(400 / int(min(grade_counts) * 4 / 5 // 6))
