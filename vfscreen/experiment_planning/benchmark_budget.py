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

from vfscreen.core.cli import CommandParser
from vfscreen import labels, paths
from vfscreen.errors import cli_entry
from vfscreen.experiment_planning import budget as B
from vfscreen.experiment_planning.calibration import grader_step, segmentation_step, time_steps
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
                                    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
                   "batch_dice": False}


def typical_cpu_plan(preset_name: str = "cpu_demo") -> tuple[dict, dict, B.DeviceBudget, B.PlanningTargets]:
    """(nnU-Net configuration, grader section, device, targets) of a CPU plan for the typical fingerprint."""
    preset = load_preset(preset_name)
    device_entry = preset.get("device", {})
    device = B.DeviceBudget("cpu", float(device_entry.get("memory_gb", 8)), int(device_entry.get("num_threads", 2)))
    targets = B.PlanningTargets.from_preset(preset.get("budget"))
    seg = P.plan_segmentation_cpu(TYPICAL_FULLRES, device, targets)
    grader = P.plan_grader(TYPICAL_FINGERPRINT, device, targets, 5)
    return seg, grader, device, targets


def typical_segmentation(seg_configuration: dict) -> dict:
    """What calibration.segmentation_step needs for the typical plan: nnU-Net plans holding 3d_fullres and the
    planned configuration, and a dataset.json with one CT channel and vfscreen's labels."""
    nnunet_plans = {"dataset_name": "Dataset000_Typical", "plans_name": P.NNUNET_PLANS_IDENTIFIER,
                    "original_median_spacing_after_transp": TYPICAL_FULLRES["spacing"],
                    "original_median_shape_after_transp": TYPICAL_FULLRES["median_image_size_in_voxels"],
                    "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2],
                    "transpose_backward": [0, 1, 2], "label_manager": "LabelManager",
                    "foreground_intensity_properties_per_channel": {},
                    "configurations": {"3d_fullres": TYPICAL_FULLRES, P.VFSCREEN_SEG_CONFIGURATION: seg_configuration}}
    dataset_json = {"channel_names": {"0": "CT"}, "labels": labels.nnunet_labels_dict(), "numTraining": 1,
                    "file_ending": ".nii.gz"}
    return {"nnunet_plans": nnunet_plans, "configuration": P.VFSCREEN_SEG_CONFIGURATION, "dataset_json": dataset_json}


def _segmentation_step(segmentation: dict):
    return segmentation_step(segmentation["nnunet_plans"], segmentation["configuration"], segmentation["dataset_json"])


def measure_peak_memory_gb(configurations: dict[str, dict], threads: int = 1) -> dict[str, float]:
    """Peak RSS increase (GB) of one training step per network, in one fresh process.

    ``configurations``: {"seg": typical_segmentation(...) or segmentation_from_plans(...)[0], "grader": grader
    section} (either may be left out). glibc is
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
        step = _segmentation_step(plan) if which == "seg" else grader_step(plan)
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
        segmentation, grader = segmentation_from_plans(args.plans)
        targets = B.PlanningTargets()
    else:
        seg, grader, _, targets = typical_cpu_plan(args.preset)
        segmentation = typical_segmentation(seg)
    seg = segmentation["nnunet_plans"]["configurations"][segmentation["configuration"]]
    seg = {**segmentation["nnunet_plans"]["configurations"].get(seg.get("inherits_from"), {}), **seg}
    arch = seg["architecture"]["arch_kwargs"]
    seg_cost = B.unet_cost(seg["patch_size"], arch["features_per_stage"], arch["strides"], arch["kernel_sizes"],
                           arch["n_conv_per_stage"], arch["n_conv_per_stage_decoder"], P.NNUNET_NUM_CLASSES)
    network = grader["network"]
    grader_cost = B.grader_cost(grader)
    views = B.grader_views_per_batch(grader["sampler"]["samples_per_class"], grader["sampler"]["views"])
    crops = views // grader["sampler"]["views"]
    seg_seconds = time_steps(_segmentation_step(segmentation), args.steps, max_seconds=float("inf"),
                             min_steps=args.steps).seconds_per_step
    grader_seconds = time_steps(grader_step(grader), args.steps, max_seconds=float("inf"),
                                min_steps=args.steps).seconds_per_step
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
        measured = measure_peak_memory_gb({"seg": segmentation, "grader": grader})
        for name, key, cost, batch in (("segmentation", "seg", seg_cost, seg["batch_size"]),
                                       ("grader", "grader", grader_cost, views)):
            report[name]["measured_peak_memory_gb"] = round(measured[key], 3)
            report[name]["model_memory_gb"] = round(cost.training_memory_gb(batch, 4), 3)
    print(json.dumps(report, indent=2))
    return 0


def segmentation_from_plans(path) -> tuple[dict, dict]:
    """(segmentation as typical_segmentation returns it, grader section) of a vfscreenPlans.json, with the
    nnUNetPlans.json and dataset.json beside it."""
    from pathlib import Path

    plans = json.loads(Path(path).read_text())
    section = plans["configurations"]["3d"]
    folder = Path(path).parent
    nnunet_plans = json.loads((folder / (section["segmentation"]["nnunet_plans_identifier"] + ".json")).read_text())
    dataset_json = json.loads((folder / "dataset.json").read_text())
    return ({"nnunet_plans": nnunet_plans, "configuration": section["segmentation"]["nnunet_configuration"],
             "dataset_json": dataset_json}, section["grader"])


if __name__ == "__main__":
    main()
