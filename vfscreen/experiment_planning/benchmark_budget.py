"""Measure what the budget model predicts: training speed and peak memory of the planned networks on this machine.

    python -m vfscreen.experiment_planning.benchmark_budget [--preset cpu_demo | --plans vfscreenPlans.json]
                                                            [--threads 2] [--steps 5] [--memory]

Without ``--plans`` a CPU plan is made from ``--preset`` (default cpu_demo) for a typical synthetic fingerprint
(1 mm voxels, vertebrae up to 50 mm, median image 160 x 160 x 200 voxels). Reports segmentation iterations/s
(nnU-Net's PlainConvUNet + its DC+CE deep-supervision loss, SGD, the plan's batch and patch; data loading excluded)
and grader samples/s (crops/s: each crop is seen in ``views`` augmented copies, SupCon + CE step), next to the speed
model's prediction. ``--memory`` measures the peak resident memory of one training step of each net in a fresh
process (Linux: VmHWM after resetting it through /proc/self/clear_refs) next to the memory model's estimate.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from vfscreen.core.cli import CommandParser
from vfscreen import paths
from vfscreen.core.grader_network import build_grader
from vfscreen.errors import cli_entry
from vfscreen.experiment_planning import budget as B
from vfscreen.experiment_planning import planner as P
from vfscreen.experiment_planning.presets import load_preset

paths.export_for_nnunet()  # nnunetv2 (imported on use, below) reads its folders once, at import

TYPICAL_FINGERPRINT = {"vertebra_extent_mm": {"p95": 50.0}, "median_min_spacing_mm": 1.0,
                       "grade_histogram_vertebrae": {"0": 300, "1": 40, "2": 40, "3": 40}}
TYPICAL_FULLRES = {"spacing": [1.0, 1.0, 1.0], "median_image_size_in_voxels": [200, 160, 160],
                   "architecture": {"network_class_name":
                                    "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                                    "arch_kwargs": {"conv_op": "torch.nn.modules.conv.Conv3d", "conv_bias": True,
                                                    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                                                    "norm_op_kwargs": {"eps": 1e-05, "affine": True},
                                                    "dropout_op": None, "dropout_op_kwargs": None,
                                                    "nonlin": "torch.nn.LeakyReLU",
                                                    "nonlin_kwargs": {"inplace": True}},
                                    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}}


def typical_cpu_plan(preset_name: str = "cpu_demo") -> tuple[dict, dict, B.DeviceBudget, B.PlanningTargets]:
    """(nnU-Net configuration, grader section, device, targets) of a CPU plan for the typical fingerprint."""
    preset = load_preset(preset_name)
    device_entry = preset.get("device", {})
    device = B.DeviceBudget("cpu", float(device_entry.get("memory_gb", 8)), int(device_entry.get("num_threads", 2)))
    targets = B.PlanningTargets.from_preset(preset.get("budget"))
    seg = P.plan_segmentation_cpu(TYPICAL_FULLRES, device, targets)
    grader = P.plan_grader(TYPICAL_FINGERPRINT, device, targets, 5)
    return seg, grader, device, targets


def build_segmentation_network(seg_configuration: dict):
    """PlainConvUNet with deep supervision from an nnU-Net configuration dict (nnunetv2's own builder)."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    architecture = seg_configuration["architecture"]
    return get_network_from_plans(architecture["network_class_name"], architecture["arch_kwargs"],
                                  architecture["_kw_requires_import"], 1, 27, allow_init=True,
                                  deep_supervision=True)


def segmentation_step(seg_configuration: dict):
    """A closure running one nnU-Net training step (forward, DC+CE deep-supervision loss, backward, SGD)."""
    import torch
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    network = build_segmentation_network(seg_configuration)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.99, nesterov=True)
    strides = seg_configuration["architecture"]["arch_kwargs"]["strides"]
    loss = DeepSupervisionWrapper(DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False},
                                                 {}, weight_ce=1, weight_dice=1, ignore_label=None,
                                                 dice_class=MemoryEfficientSoftDiceLoss),
                                  [1 / 2 ** i for i in range(len(strides) - 1)])
    batch, patch = seg_configuration["batch_size"], seg_configuration["patch_size"]
    images = torch.randn(batch, 1, *patch)  # (B, 1, X, Y, Z)
    targets, shape = [], list(patch)
    for stride in strides[:-1]:
        shape = [s // st for s, st in zip(shape, stride)]
        targets.append(torch.randint(0, 27, (batch, 1, *shape)).float())  # (B, 1, *scale) per output

    def step():
        optimizer.zero_grad(set_to_none=True)
        output = network(images)
        loss(output, targets).backward()
        optimizer.step()
    return step


def grader_step(grader_plan: dict):
    """A closure running one grader step on batch = samples_per_class x 4 grades x views crops (SupCon + CE)."""
    import torch
    import torch.nn.functional as F

    network = build_grader(grader_plan["network"], "supcon")
    optimizer = torch.optim.SGD(network.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    views = B.grader_views_per_batch(grader_plan["sampler"]["samples_per_class"], grader_plan["sampler"]["views"])
    crops = torch.randn(views, 3, *grader_plan["crop"]["patch_size"])  # (B*views, 3, D, H, W)
    grades = torch.arange(views) % 4

    def step():
        optimizer.zero_grad(set_to_none=True)
        _, logits, projection = network(crops)
        similarity = projection @ projection.T / grader_plan["loss"]["temperature"]  # SupCon-like cost, (V, V)
        (F.cross_entropy(similarity, torch.arange(views)) + F.cross_entropy(logits, grades)).backward()
        optimizer.step()
    return step


def time_steps(step, steps: int) -> float:
    """Median seconds of ``steps`` steps after one warm-up step."""
    step()
    durations = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        durations.append(time.perf_counter() - start)
    return sorted(durations)[len(durations) // 2]


def measure_peak_memory_gb(configurations: dict[str, dict], threads: int = 1) -> dict[str, float]:
    """Peak RSS increase (GB) of one training step per network, in one fresh process.

    ``configurations``: {"seg": nnU-Net configuration, "grader": grader section} (either may be left out). glibc is
    told to serve every allocation >= 128 kB by mmap, so memory freed after one net's step goes back to the system
    before the next net is measured.
    """
    code = ("import json,sys; from vfscreen.experiment_planning.benchmark_budget import _peak_memory_child as c; "
            "print(json.dumps(c(json.loads(sys.argv[1]), int(sys.argv[2]))))")
    environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "VFSCREEN_QUIET": "1"}
    result = subprocess.run([sys.executable, "-c", code, json.dumps(configurations), str(threads)],
                            capture_output=True, text=True, encoding="utf-8", errors="replace", env=environment,
                            timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"memory measurement failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _read_status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _peak_memory_child(configurations: dict, threads: int) -> dict[str, float]:
    import gc

    import torch

    torch.set_num_threads(threads)
    measured = {}
    for which, plan in configurations.items():
        step = segmentation_step(plan) if which == "seg" else grader_step(plan)
        baseline_kb = _read_status_kb("VmRSS")
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # reset the peak (VmHWM) to the current RSS
        step()
        measured[which] = (_read_status_kb("VmHWM") - baseline_kb) / 1024 ** 2
        del step
        gc.collect()
    return measured


@cli_entry
def main(argv=None) -> int:
    parser = CommandParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu_demo")
    parser.add_argument("--plans", default=None, help="a vfscreenPlans.json (with its nnUNetPlans.json beside it)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--memory", action="store_true", help="also measure peak memory of one step of each net")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.plans:
        seg, grader = _configurations_from_plans(args.plans)
        targets = B.PlanningTargets()
    else:
        seg, grader, _, targets = typical_cpu_plan(args.preset)
    arch = seg["architecture"]["arch_kwargs"]
    seg_cost = B.unet_cost(seg["patch_size"], arch["features_per_stage"], arch["strides"], arch["kernel_sizes"],
                           arch["n_conv_per_stage"], arch["n_conv_per_stage_decoder"], 27)
    network = grader["network"]
    grader_cost = B.residual_encoder_cost(grader["crop"]["patch_size"], network["features_per_stage"],
                                          network["strides"], network["n_blocks_per_stage"], block=network["block"],
                                          bottleneck_channels=network.get("bottleneck_channels"))
    views = B.grader_views_per_batch(grader["sampler"]["samples_per_class"], grader["sampler"]["views"])
    crops = views // grader["sampler"]["views"]
    seg_seconds = time_steps(segmentation_step(seg), args.steps)
    grader_seconds = time_steps(grader_step(grader), args.steps)
    report = {
        "threads": args.threads,
        "segmentation": {"patch_size": seg["patch_size"], "batch_size": seg["batch_size"],
                         "features_per_stage": arch["features_per_stage"],
                         "iterations_per_second": round(1 / seg_seconds, 2),
                         "model_iterations_per_second": round(1 / seg_cost.training_seconds(
                             seg["batch_size"], args.threads, targets.cpu_gflops_per_thread,
                             targets.cpu_gelements_per_thread), 2)},
        "grader": {"patch_size": grader["crop"]["patch_size"], "features_per_stage": network["features_per_stage"],
                   "crops_per_step": crops, "views_per_step": views,
                   "samples_per_second": round(crops / grader_seconds, 2),
                   "model_samples_per_second": round(crops / grader_cost.training_seconds(
                       views, args.threads, targets.cpu_gflops_per_thread, targets.cpu_gelements_per_thread), 2)},
    }
    if args.memory:
        measured = measure_peak_memory_gb({"seg": seg, "grader": grader})
        for name, key, cost, batch in (("segmentation", "seg", seg_cost, seg["batch_size"]),
                                       ("grader", "grader", grader_cost, views)):
            report[name]["measured_peak_memory_gb"] = round(measured[key], 3)
            report[name]["model_memory_gb"] = round(cost.training_memory_gb(batch, 4), 3)
    print(json.dumps(report, indent=2))
    return 0


def _configurations_from_plans(path) -> tuple[dict, dict]:
    from pathlib import Path

    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = json.loads(Path(path).read_text())
    section = plans["configurations"]["3d"]
    nnunet_plans = Path(path).with_name(section["segmentation"]["nnunet_plans_identifier"] + ".json")
    configuration = PlansManager(str(nnunet_plans)).get_configuration(
        section["segmentation"]["nnunet_configuration"]).configuration
    return configuration, section["grader"]


if __name__ == "__main__":
    main()
