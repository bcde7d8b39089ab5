"""The self-configuring planner: fingerprint + device budget (+ preset) -> vfscreenPlans.json and nnUNetPlans.json.

Segmentation: nnunetv2's own ``ExperimentPlanner`` plans the dataset (2d / 3d_fullres / 3d_lowres, written to
``nnUNetPlans.json``). On a GPU with >= STOCK_NNUNET_MIN_GPU_GB the stock ``3d_fullres`` is used unchanged with
``nnUNetTrainer``. Otherwise a configuration ``3d_vfscreen`` (``inherits_from: 3d_fullres``) is added to nnU-Net's
plans and trained by ``vfscreenSegTrainer``:
  * small GPU: nnU-Net's own ``get_plans_for_configuration`` at the GPU's memory (nnU-Net's VRAM model);
  * CPU: the speed model of :mod:`.budget` binds. For each candidate spacing (3d_fullres' spacing, then coarser up to
    ``max_seg_spacing_mm``) and base width (16, then 8 features) the patch is shrunk like nnU-Net does (the axis with
    the largest patch / median-image ratio first, topology from nnunetv2's ``get_pool_and_conv_props``) until one
    training step fits the time budget; the first combination whose patch covers >= 1/4 of the median image wins.
  Iterations per epoch and epochs follow from the time budget (``seg_minutes``): from the speed model here, from a
  measured training step when planning measured one (``apply_segmentation_speed``; .calibration, .schedule).
Grader: crop spacing = the median finest voxel spacing; margin = 10% of the 95th-percentile vertebra extent (2-10 mm);
patch = (p95 extent + 2 margins) / spacing rounded up to the backbone's total stride, then the largest backbone of
the device's tier (SE-ResNet50-like on >= 24 GB GPUs, narrower below, small on CPU) and the largest patch <= that
which fit the memory (GPU) or speed (CPU) budget are chosen. Epochs follow from the time budget on CPU (speed model,
or a measured step: .schedule.apply_grader_speed); 1000 (the paper) on a GPU.
"""
from __future__ import annotations

import math

import numpy as np

from vfscreen import __version__, labels, paths
from vfscreen.errors import ConfigError
from vfscreen.experiment_planning import budget as B
from vfscreen.experiment_planning import schedule as S
from vfscreen.core.nnunet_models import VFSCREEN_SEG_TRAINER
from vfscreen.core.plans import CONFIGURATION, PLANS_NAME, SCHEMA_VERSION
from vfscreen.experiment_planning.presets import deep_merge
from vfscreen.dataset import NNUNET_READER_WRITER, SEGMENTATION_ORIENTATION

paths.export_for_nnunet()  # nnunetv2 (imported on use, below) reads its folders once, at import

NNUNET_PLANS_IDENTIFIER = "nnUNetPlans"
VFSCREEN_SEG_CONFIGURATION = "3d_vfscreen"
STOCK_NNUNET_MIN_GPU_GB = 11.0  # nnU-Net's planner targets 8 GB; + CUDA context and headroom
NNUNET_NUM_CLASSES = labels.NUM_CLASSES  # background + 26 vertebrae + the landmarks (vfscreen.labels)
# Below this many training iterations a segmentation network is trained on the coarse regions vertebra / thoracic /
# lumbar (vfscreen.labels.SPINE_REGIONS) and vertebrae are named by the label chain model, because 26 classes from
# scratch do not train in so few (the README's demo results show what the regions reach). Stock nnU-Net trains
# 250,000 (1,000 epochs of 250).
MIN_ITERATIONS_FOR_VERTEBRA_CLASSES = 25_000


def label_grouping_for(num_iterations: int) -> str:
    return "vertebrae" if num_iterations >= MIN_ITERATIONS_FOR_VERTEBRA_CLASSES else "spine_regions"
MIN_SEG_COVERAGE = 0.25  # fraction of the median image a CPU patch should cover (nnU-Net's lowres threshold)
MIN_SEG_PATCH_EDGE = 16
DEFAULT_SEED = 12345
DEFAULT_NUM_FOLDS = 5

# Grader backbones, largest first. BottleneckD features are after the x4 expansion (ResNet-50 style).
GRADER_NETWORKS = {
    "se_resnet50": {"block": "BottleneckD", "features_per_stage": [32, 256, 512, 1024, 2048],
                    "n_blocks_per_stage": [1, 3, 4, 6, 3], "strides": [2, 2, 2, 2, 2]},
    "se_resnet_medium": {"block": "BottleneckD", "features_per_stage": [32, 128, 256, 512],
                         "n_blocks_per_stage": [1, 2, 3, 2], "strides": [2, 2, 2, 2]},
    "se_resnet_small": {"block": "BasicBlockD", "features_per_stage": [16, 32, 64, 128],
                        "n_blocks_per_stage": [1, 1, 2, 1], "strides": [1, 2, 2, 2]},
    "se_resnet_tiny": {"block": "BasicBlockD", "features_per_stage": [8, 16, 32, 64],
                       "n_blocks_per_stage": [1, 1, 1, 1], "strides": [1, 2, 2, 2]},
}
PAPER_PATCH_EDGE = 128
PAPER_SAMPLES_PER_CLASS = 6
PAPER_EPOCHS = 1000


def grader_tier(device: B.DeviceBudget) -> list[str]:
    """Backbones the device may try, largest first (the memory/speed model then picks the first that fits)."""
    names = list(GRADER_NETWORKS)
    if device.type == "cpu":
        return names[2:]
    if device.memory_gb >= 24:
        return names
    if device.memory_gb >= 8:
        return names[1:]
    return names[2:]


# --------------------------------------------------------------------------------------------------------- grader
def plan_grader(fingerprint: dict, device: B.DeviceBudget, targets: B.PlanningTargets, num_folds: int) -> dict:
    """The ``grader`` section of the plans (contract 2)."""
    extent = fingerprint["vertebra_extent_mm"]["p95"]
    base_spacing = max(0.5, float(fingerprint["median_min_spacing_mm"]))
    margin_mm = float(np.clip(round(0.1 * extent, 1), 2.0, 10.0))
    field_mm = extent + 2 * margin_mm
    samples_per_class = _samples_per_class(fingerprint, num_folds)
    views = 2
    batch_views = B.grader_views_per_batch(samples_per_class, views)
    choice = None
    for name in grader_tier(device):
        network = GRADER_NETWORKS[name]
        stride = B.total_stride(network["strides"])
        wanted = _round_up(field_mm / base_spacing, stride)
        cap = PAPER_PATCH_EDGE if device.type != "cpu" else 64
        for edge in range(min(_round_up(wanted, stride), _round_up(cap, stride)), 2 * stride - 1, -stride):
            cost = B.residual_encoder_cost([edge] * 3, network["features_per_stage"], network["strides"],
                                           network["n_blocks_per_stage"], block=network["block"])
            memory_gb = cost.training_memory_gb(batch_views, device.bytes_per_activation)
            if memory_gb > device.usable_memory_gb:
                continue
            if device.type == "cpu":
                seconds = cost.training_seconds(batch_views, device.num_threads, targets.cpu_gflops_per_thread,
                                                targets.cpu_gelements_per_thread)
                if batch_views / views / seconds < targets.grader_samples_per_second:
                    continue
            choice = (name, edge, cost, memory_gb)
            break
        if choice is not None:
            break
    if choice is None:
        raise ConfigError(f"device budget too small for any grader network ({device.type}, {device.memory_gb} GB, "
                          f"{device.num_threads} threads): even the smallest backbone at "
                          f"{2 * B.total_stride(GRADER_NETWORKS['se_resnet_tiny']['strides'])}^3 does not fit; "
                          "raise --gpu_memory_gb or use a larger device")
    name, edge, cost, memory_gb = choice
    network = GRADER_NETWORKS[name]
    spacing_mm = round(max(base_spacing, field_mm / edge), 3)
    num_epochs = (S.epochs_for_steps(fingerprint, samples_per_class, num_folds, targets) if targets.grader_steps
                  else PAPER_EPOCHS if device.type != "cpu"
                  else S.grader_epochs_for_budget(fingerprint, samples_per_class, views, cost.training_seconds(
                      batch_views, device.num_threads, targets.cpu_gflops_per_thread,
                      targets.cpu_gelements_per_thread), num_folds, targets))
    return {
        "crop": {"mode": "fit", "spacing_mm": spacing_mm, "patch_size": [edge] * 3, "margin_mm": margin_mm,
                 "windows": [{"name": "bone", "width": 1500, "level": 400},
                             {"name": "soft_tissue", "width": 200, "level": 40}],
                 "mask_channel": "label_modulated", "use_truncated": False, "storage_dtype": "float16"},
        "network": {"backbone": "ResidualEncoder", "name": name, "block": network["block"],
                    "features_per_stage": list(network["features_per_stage"]),
                    "n_blocks_per_stage": list(network["n_blocks_per_stage"]), "strides": list(network["strides"]),
                    "kernel_sizes": [3] * len(network["strides"]), "squeeze_excitation": True,
                    "projection_dim": 128, "num_classes": 4},
        "loss": {"name": "supcon", "temperature": 0.07},
        "sampler": {"samples_per_class": samples_per_class, "views": views},
        "optimizer": {"name": "sgd", "lr": 0.001, "momentum": 0.9, "weight_decay": 0.0001, "lr_decay_at": [0.8, 0.9],
                      "lr_decay_factor": 0.1},
        "prior_correction": "none",
        "num_epochs": num_epochs,
        "validate_every": S.grader_validate_every(num_epochs),
        "num_workers": 1 if device.type == "cpu" else 6,
        "augmentation": grader_augmentation(edge),
        "estimated_memory_gb": round(memory_gb, 3),
    }


def grader_augmentation(patch_edge: int) -> dict:
    """The paper's augmentation set. Its voxel-valued parameters (masked boxes of 1-20 voxels, shifts of +-10
    voxels) were chosen for 128^3 patches; they scale with the patch so that a box or a shift covers the same
    fraction of the vertebra on a smaller patch (on 32^3, a 20-voxel box would hide most of the vertebra)."""
    scale = patch_edge / PAPER_PATCH_EDGE
    return {"probability": 0.7, "mask_boxes": 2, "mask_box_size": [1, max(2, round(20 * scale))],
            "zoom": [0.9, 1.1], "noise_sigma": 0.05, "shift_voxels": max(1, round(10 * scale)),
            "rotation_degrees": 10, "intensity_scale": [0.9, 1.1], "intensity_power": [0.8, 1.25]}


def _samples_per_class(fingerprint: dict, num_folds: int) -> int:
    """The paper's 6 per grade, fewer when the rarest grade of a training fold has fewer vertebrae."""
    smallest = min(fingerprint["grade_histogram_vertebrae"].values())
    if smallest == 0:
        missing = [g for g, n in fingerprint["grade_histogram_vertebrae"].items() if n == 0]
        raise ConfigError(f"no vertebra of grade(s) {', '.join(missing)} in the dataset; the per-class sampler of "
                          "the grader needs every Genant grade 0-3 (add graded cases)")
    per_training_fold = math.floor(smallest * (num_folds - 1) / num_folds)
    return int(max(1, min(PAPER_SAMPLES_PER_CLASS, per_training_fold)))


# --------------------------------------------------------------------------------------------------- segmentation
def plan_segmentation_cpu(fullres: dict, device: B.DeviceBudget, targets: B.PlanningTargets) -> dict:
    """A ``3d_vfscreen`` nnU-Net configuration (partial, inherits from 3d_fullres) for a CPU budget."""
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    fullres_spacing = np.array(fullres["spacing"], dtype=float)
    median_mm = np.array(fullres["median_image_size_in_voxels"], dtype=float) * fullres_spacing
    candidates = []
    for factor in (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0):
        spacing = np.maximum(fullres_spacing, fullres_spacing.min() * factor)
        if factor > 1 and spacing.max() > max(targets.max_seg_spacing_mm, fullres_spacing.max()):
            break
        for base in (16, 8):
            found = _fit_cpu_patch(spacing, median_mm / spacing, base, device, targets, get_pool_and_conv_props)
            if found is not None:
                candidates.append(found)
                if found["coverage"] >= MIN_SEG_COVERAGE:
                    return _nnunet_configuration(found, fullres, device, targets)
    if not candidates:
        raise ConfigError(f"device budget too small for the segmentation network ({device.type}, "
                          f"{device.num_threads} threads): no patch >= {MIN_SEG_PATCH_EDGE} voxels per axis trains at "
                          f"{targets.seg_seconds_per_iteration} s per iteration")
    best = max(candidates, key=lambda c: (c["coverage"], c["base"]))
    return _nnunet_configuration(best, fullres, device, targets)


def _fit_cpu_patch(spacing, median_shape, base, device, targets, get_pool_and_conv_props) -> dict | None:
    patch = np.array([min(int(round(s)), 128) for s in median_shape])
    while True:
        num_pool, strides, kernels, patch_size, divisible = get_pool_and_conv_props(
            list(spacing), list(patch), 4, 999999)
        patch_size = np.array(patch_size)
        features = [min(base * 2 ** i, base * 8) for i in range(len(strides))]
        cost = B.unet_cost(patch_size, features, strides, kernels, 2, 2, NNUNET_NUM_CLASSES)
        seconds = cost.training_seconds(2, device.num_threads, targets.cpu_gflops_per_thread,
                                        targets.cpu_gelements_per_thread)
        memory = cost.training_memory_gb(2, device.bytes_per_activation)
        if seconds <= targets.seg_seconds_per_iteration and memory <= device.usable_memory_gb:
            coverage = float(np.prod(np.minimum(patch_size, median_shape)) / np.prod(np.maximum(median_shape, 1)))
            return {"spacing": [float(s) for s in spacing], "patch_size": [int(p) for p in patch_size],
                    "strides": strides, "kernels": kernels, "features": features, "base": base,
                    "median_shape": [int(round(s)) for s in median_shape], "coverage": coverage,
                    "seconds": seconds, "memory_gb": memory, "batch_size": 2}
        axis = int(np.argmax(patch_size / np.maximum(median_shape, 1)))
        patch = patch_size.copy()
        patch[axis] -= divisible[axis]
        if patch[axis] < MIN_SEG_PATCH_EDGE:
            return None


def _nnunet_configuration(found: dict, fullres: dict, device, targets) -> dict:
    arch = dict(fullres["architecture"]["arch_kwargs"])
    n_stages = len(found["strides"])
    arch.update({"n_stages": n_stages, "features_per_stage": found["features"], "kernel_sizes": found["kernels"],
                 "strides": found["strides"], "n_conv_per_stage": [2] * n_stages,
                 "n_conv_per_stage_decoder": [2] * (n_stages - 1)})
    iterations = int(targets.seg_iterations_per_epoch)
    val_iterations = int(targets.seg_val_iterations_per_epoch)
    num_epochs, loop_seconds, minutes = S.segmentation_epochs(found["seconds"], targets)
    return {
        "inherits_from": "3d_fullres",
        "data_identifier": f"{NNUNET_PLANS_IDENTIFIER}_{VFSCREEN_SEG_CONFIGURATION}",
        "spacing": found["spacing"], "patch_size": found["patch_size"], "batch_size": found["batch_size"],
        "median_image_size_in_voxels": found["median_shape"],
        "architecture": {**fullres["architecture"], "arch_kwargs": arch},
        "vfscreen": {"iterations_per_epoch": iterations, "val_iterations_per_epoch": val_iterations,
                     "num_epochs": num_epochs, "label_grouping": label_grouping_for(num_epochs * iterations),
                     "estimated_memory_gb": round(found["memory_gb"], 3),
                     "estimated_seconds_per_iteration": round(found["seconds"], 3),
                     "speed": S.speed_entry("model", found["seconds"], None, loop_seconds, minutes),
                     "device": device.as_plan_entry()},
    }


def apply_segmentation_speed(configuration: dict, measured, targets: B.PlanningTargets) -> dict:
    """Re-size a CPU ``3d_vfscreen`` configuration's epochs (and label grouping) from a measured training step
    (calibration.StepTiming) and record measured vs modelled speed in its ``vfscreen`` entry. Returns it."""
    extra = configuration["vfscreen"]
    modelled = float(extra.get("speed", {}).get("modelled_seconds_per_step", extra["estimated_seconds_per_iteration"]))
    num_epochs, loop_seconds, minutes = S.segmentation_epochs(measured.seconds_per_step, targets, measured=True)
    extra.update({"num_epochs": num_epochs,
                  "label_grouping": label_grouping_for(num_epochs * int(extra["iterations_per_epoch"])),
                  "speed": S.speed_entry("measured", modelled, measured, loop_seconds, minutes)})
    return configuration


def plan_segmentation_small_gpu(planner, fullres: dict, device: B.DeviceBudget, targets: B.PlanningTargets) -> dict:
    """``3d_vfscreen`` for a GPU below STOCK_NNUNET_MIN_GPU_GB: nnU-Net's own planner at the GPU's memory."""
    planner.UNet_vram_target_GB = max(1.0, device.usable_memory_gb)
    spacing = np.array(fullres["spacing"])
    median = np.array(fullres["median_image_size_in_voxels"])
    configuration = planner.get_plans_for_configuration(
        spacing, median, f"{NNUNET_PLANS_IDENTIFIER}_{VFSCREEN_SEG_CONFIGURATION}",
        float(np.prod(median)) * planner.dataset_json["numTraining"], {})
    arch = configuration["architecture"]["arch_kwargs"]
    cost = B.unet_cost(configuration["patch_size"], arch["features_per_stage"], arch["strides"],
                       arch["kernel_sizes"], arch["n_conv_per_stage"], arch["n_conv_per_stage_decoder"],
                       NNUNET_NUM_CLASSES)
    memory = cost.training_memory_gb(configuration["batch_size"], device.bytes_per_activation)
    configuration = {key: configuration[key] for key in ("data_identifier", "spacing", "patch_size", "batch_size",
                                                          "median_image_size_in_voxels", "architecture")}
    configuration["inherits_from"] = "3d_fullres"
    configuration["vfscreen"] = {"iterations_per_epoch": 250, "val_iterations_per_epoch": 50,
                                 "num_epochs": int(targets.max_seg_epochs),
                                 "label_grouping": label_grouping_for(250 * int(targets.max_seg_epochs)),
                                 "estimated_memory_gb": round(memory, 3),
                                 "device": device.as_plan_entry()}
    return configuration


def segmentation_section(nnunet_plans: dict, configuration_name: str, device: B.DeviceBudget) -> dict:
    """The ``segmentation`` section of vfscreenPlans.json describing one configuration of nnUNetPlans.json."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    configuration = PlansManager(nnunet_plans).get_configuration(configuration_name).configuration
    arch = configuration["architecture"]["arch_kwargs"]
    extra = configuration.get("vfscreen", {})
    memory = extra.get("estimated_memory_gb")
    if memory is None:
        cost = B.unet_cost(configuration["patch_size"], arch["features_per_stage"], arch["strides"],
                           arch["kernel_sizes"], arch["n_conv_per_stage"], arch["n_conv_per_stage_decoder"],
                           NNUNET_NUM_CLASSES)
        memory = round(cost.training_memory_gb(configuration["batch_size"], device.bytes_per_activation), 3)
    stock = configuration_name != VFSCREEN_SEG_CONFIGURATION
    return {"nnunet_plans_identifier": NNUNET_PLANS_IDENTIFIER, "nnunet_configuration": configuration_name,
            "trainer": "nnUNetTrainer" if stock else VFSCREEN_SEG_TRAINER,
            "target_spacing_mm": [float(s) for s in configuration["spacing"]],
            "patch_size": [int(p) for p in configuration["patch_size"]],
            "batch_size": int(configuration["batch_size"]),
            "features_per_stage": [int(f) for f in arch["features_per_stage"]],
            "iterations_per_epoch": int(extra.get("iterations_per_epoch", 250)),
            "val_iterations_per_epoch": int(extra.get("val_iterations_per_epoch", 50)),
            "num_epochs": int(extra.get("num_epochs", 1000)), "estimated_memory_gb": float(memory),
            "label_grouping": extra.get("label_grouping", "vertebrae"),
            **({"speed": extra["speed"]} if "speed" in extra else {}),
            # nnU-Net's test-time mirroring runs the network once per mirrored copy of every patch, which a CPU
            # cannot afford (README Results has the timing), so CPU plans predict without it
            "test_time_mirroring": device.type != "cpu",
            "axis_order": "nnU-Net array axes after transpose_forward (see nnUNetPlans.json)",
            **_orientation_entry(nnunet_plans)}


def _orientation_entry(nnunet_plans: dict) -> dict:
    """Images read by nnU-Net's reorienting reader are in one canonical layout; prediction must reorient likewise."""
    if nnunet_plans.get("image_reader_writer") == NNUNET_READER_WRITER:
        return {"orientation": SEGMENTATION_ORIENTATION}
    return {}


def uses_stock_nnunet(device: B.DeviceBudget) -> bool:
    return device.type in ("cuda", "mps") and device.memory_gb >= STOCK_NNUNET_MIN_GPU_GB


# ------------------------------------------------------------------------------------------------------ assembly
def assemble_plans(dataset_name: str, fingerprint: dict, nnunet_plans: dict, seg_configuration: str,
                   device: B.DeviceBudget, targets: B.PlanningTargets, preset: dict | None,
                   seed: int = DEFAULT_SEED, num_folds: int = DEFAULT_NUM_FOLDS) -> dict:
    """vfscreenPlans.json (contract 2): computed sections, then the preset's fixed values merged over them."""
    grader = plan_grader(fingerprint, device, targets, num_folds)
    segmentation = segmentation_section(nnunet_plans, seg_configuration, device)
    plans = {
        "schema_version": SCHEMA_VERSION, "vfscreen_version": __version__, "dataset_name": dataset_name,
        "plans_name": PLANS_NAME, "seed": int(seed), "num_folds": int(num_folds),
        "device": device.as_plan_entry(), "preset": (preset or {}).get("name"),
        "configurations": {CONFIGURATION: {"segmentation": segmentation, "grader": grader}},
    }
    if preset and preset.get("configurations"):
        plans["configurations"] = deep_merge(plans["configurations"], preset["configurations"])
        _refresh_after_preset(plans["configurations"][CONFIGURATION]["grader"],
                              preset["configurations"].get(CONFIGURATION, {}).get("grader", {}),
                              fingerprint, device, targets, num_folds)
    S.apply_grader_speed(plans["configurations"][CONFIGURATION]["grader"], fingerprint, device, targets, num_folds,
                       fixed=(preset or {}).get("configurations", {}).get(CONFIGURATION, {}).get("grader", {}))
    return plans


def _refresh_after_preset(grader: dict, fixed: dict, fingerprint: dict, device: B.DeviceBudget,
                          targets: B.PlanningTargets, num_folds: int) -> None:
    """After a preset fixed some grader values (``fixed``), recompute what was derived from the planner's own ones:
    the epochs of a step budget (the preset's batch changes the epoch length), the augmentation's voxel sizes (they
    scale with the patch the preset may fix) and the memory estimate."""
    if "patch_size" in fixed.get("crop", {}):
        scaled = grader_augmentation(int(min(grader["crop"]["patch_size"])))
        own = fixed.get("augmentation", {})
        grader["augmentation"].update({key: scaled[key] for key in ("mask_box_size", "shift_voxels")
                                       if key not in own})
    if targets.grader_steps and "num_epochs" not in fixed:
        grader["num_epochs"] = S.epochs_for_steps(fingerprint, grader["sampler"]["samples_per_class"], num_folds,
                                                 targets)
        if "validate_every" not in fixed:
            grader["validate_every"] = S.grader_validate_every(grader["num_epochs"])
    views = B.grader_views_per_batch(grader["sampler"]["samples_per_class"], grader["sampler"]["views"])
    grader["estimated_memory_gb"] = round(B.grader_cost(grader).training_memory_gb(views, device.bytes_per_activation), 3)


def _round_up(value: float, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)
