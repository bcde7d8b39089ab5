"""Speed of prediction, stage by stage: ``python -m vfscreen.evaluation.benchmark speed -d 501 -c 3d -i INPUT``.

For each input case (vfscreen_predict's input conventions): seconds to read the image, the stages of
``vfscreen.inference.predict.predict_case`` (segmentation, label consistency, morphometry, grading [crops + grader],
saliency when asked), the report PNG, and the crops per second of THE crop function on the predicted mask alone;
peak resident memory from model loading on (Linux: VmHWM reset first; elsewhere since process start) and peak GPU
memory on CUDA. The machine is described in the JSON. Training throughput (samples per second of the grader and of
nnU-Net) is not measured here: the trainers log it. A plan without a trained model is timed by
vfscreen.evaluation.untrained (``speed --untrained_preset NAME``), which injects its models and masks through
``model_loader`` and ``prepare_case``.
"""
from __future__ import annotations

import datetime
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vfscreen.errors import ConfigError
from vfscreen.inference import resources
from vfscreen.inference.cases import list_cases, read_case_image
from vfscreen.inference.pipeline import predict_case
from vfscreen.inference.report import render_report
from vfscreen.inference.segmentation import load_models
from vfscreen.preprocessing.crops import extract_vertebra_crops
from vfscreen.utils.progress import progress_bar


def reset_peak_memory() -> bool:
    """Linux: reset this process's peak resident memory (VmHWM) to its current resident memory, so the peak
    reported afterwards belongs to what runs afterwards. False where the kernel does not offer it."""
    return resources.reset_peak() and resources.peak_bytes() is not None


def peak_memory_gb(since_reset: bool = False, stage_peak_gb: float = 0.0) -> dict:
    """Peak resident memory of this process (VmHWM after :func:`reset_peak_memory` when ``since_reset``, else
    getrusage: Linux reports KiB, macOS bytes) and peak CUDA memory if used. ``stage_peak_gb``: the highest
    per-stage peak of prediction (predict_case resets VmHWM at each of its stages)."""
    peak = resources.peak_bytes() if since_reset else None
    if peak is not None:
        peak_bytes = max(peak, int(stage_peak_gb * 2**30))
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak_bytes = peak if sys.platform == "darwin" else peak * 1024
    memory = {"peak_rss_gb": round(peak_bytes / 2**30, 3),
              "peak_since": "model loading" if peak is not None else "process start"}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        memory["peak_cuda_allocated_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return memory


def machine_description() -> dict:
    return {"platform": platform.platform(), "python": platform.python_version(), "processor": platform.processor(),
            "cpu_model": _cpu_model(), "cpu_count": os.cpu_count(),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
            if hasattr(os, "sysconf") else None, "torch": torch.__version__, "cuda": torch.cuda.is_available(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def _cpu_model() -> str | None:
    """The CPU's model name (Linux /proc/cpuinfo; platform.processor() elsewhere)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def run_speed(input_path, dataset=501, configuration: str = "3d", folds=None, device: str = "cpu",
              num_cases: int | None = None, saliency: bool = False, models=None, num_threads: int | None = None,
              progress: bool = True, model_loader=None, prepare_case=None) -> dict:
    """Time prediction stage by stage on the cases of ``input_path``.

    ``models`` replaces loading trained ones; ``model_loader()`` (timed as model loading) builds them instead.
    ``prepare_case(case, image)`` runs untimed before each case (vfscreen.evaluation.untrained hands the case's
    ground truth to its segmenter there)."""
    if num_threads:
        torch.set_num_threads(int(num_threads))
    cases = list_cases(input_path)[: num_cases or None]
    if not cases:
        raise ConfigError(f"{input_path}: no input case found (NIfTI files or DICOM series)")
    load_before = os.getloadavg()
    peak_reset = reset_peak_memory()
    stage_peak_gb = 0.0
    start = time.perf_counter()
    if models is None and model_loader is not None:
        models = model_loader()
    elif models is None:
        models = load_models(dataset, configuration, folds, device, saliency=saliency)
    loading_s = time.perf_counter() - start
    per_case = []
    with tempfile.TemporaryDirectory(prefix="vfscreen_speed_") as scratch:
        for case in progress_bar(cases, desc="speed", unit="case", disable=not progress):
            timings = {}
            cpu_start = time.process_time()  # CPU seconds of all this process's threads
            start = time.perf_counter()
            image = read_case_image(case)
            timings["read"] = time.perf_counter() - start
            if prepare_case is not None:
                prepare_case(case, image)
            result = predict_case(image, case.case_id, models, saliency)
            stage_peak_gb = max([stage_peak_gb, *result.get("peak_rss_gb", {}).values()])
            timings.update(result["timings_s"])
            start = time.perf_counter()
            render_report(Path(scratch) / f"{case.case_id}_report.png", image, result["verse_map"], result["json"],
                          result["morphometry"])
            timings["report"] = time.perf_counter() - start
            start = time.perf_counter()
            cpu_seconds = time.process_time() - cpu_start
            crops = extract_vertebra_crops(image, result["seg_image"], models.grader.crop_plan)
            crop_seconds = time.perf_counter() - start
            per_case.append({"case_id": case.case_id, "size": list(image.GetSize()),
                             "spacing_mm": [round(s, 4) for s in image.GetSpacing()],
                             "num_vertebrae": len(result["json"]["vertebrae"]), "seconds": timings,
                             "total_s": sum(timings.values()), "cpu_s": cpu_seconds, "num_crops": len(crops),
                             "crops_per_second": len(crops) / crop_seconds if crop_seconds > 0 and crops else None})
    stages = sorted({stage for case in per_case for stage in case["seconds"]})
    crops_total = sum(case["num_crops"] for case in per_case)
    return {"schema_version": 1, "kind": "vfscreen_speed",
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["python -m vfscreen.evaluation.benchmark"] + sys.argv[1:]),
            "input": str(input_path), "device": device, "num_threads": _torch_threads(),
            "machine": machine_description(),
            "model": dict(getattr(models, "info", {}) or {}), "model_loading_s": loading_s,
            "num_cases": len(per_case),
            "mean_seconds_per_stage": {stage: float(np.mean([case["seconds"].get(stage, 0.0) for case in per_case]))
                                       for stage in stages},
            "mean_seconds_per_case": float(np.mean([case["total_s"] for case in per_case])),
            "crops_per_second": (crops_total / sum(case["num_crops"] / case["crops_per_second"] for case in per_case
                                                   if case["crops_per_second"])) if crops_total else None,
            "memory": peak_memory_gb(since_reset=peak_reset, stage_peak_gb=stage_peak_gb),
            "load_average_1_5_15_min": {"before": [round(v, 2) for v in load_before],
                                        "after": [round(v, 2) for v in os.getloadavg()]},
            "per_case": per_case,
            "not_measured": "training throughput (samples/s) of the grader and of nnU-Net: see their training logs"}


def _torch_threads() -> int | None:
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None


STAGE_ORDER = ("read", "segmentation", "label_consistency", "morphometry", "grading", "saliency", "report")


def ordered_stages(seconds_per_stage: dict) -> list[str]:
    """Stages in pipeline order (unknown ones last, alphabetically)."""
    return [s for s in STAGE_ORDER if s in seconds_per_stage] + sorted(set(seconds_per_stage) - set(STAGE_ORDER))


def format_speed(speed: dict, markdown: bool = False) -> str:
    """The printed table: one row per stage (mean seconds per case and share), total, loading, memory (markdown:
    :func:`format_speed_markdown`)."""
    if markdown:
        return format_speed_markdown(speed)
    stages = speed["mean_seconds_per_stage"]
    total = speed["mean_seconds_per_case"]
    lines = [f"Prediction speed on {speed['num_cases']} case(s), device {speed['device']} "
             f"({speed['machine']['cpu_count']} CPU cores visible, torch threads {speed.get('num_threads')}): "
             f"{total:.2f} s per case"]
    for key in ("weights", "downstream_on"):
        if key in speed:
            lines.append(f"  {key.replace('_', ' ')}: {speed[key]}")
    lines.append(f"  {'stage':<20}{'s per case':>12}{'share':>8}")
    for stage in ordered_stages(stages):
        share = stages[stage] / total if total > 0 else 0.0
        lines.append(f"  {stage:<20}{stages[stage]:>12.2f}{share:>8.0%}")
    lines.append(f"  {'total':<20}{total:>12.2f}")
    cpu = [case["cpu_s"] for case in speed["per_case"] if case.get("cpu_s") is not None]
    if cpu:
        lines.append(f"  CPU time {sum(cpu) / len(cpu):.2f} s per case (all threads); load average (1/5/15 min) "
                     f"before {speed['load_average_1_5_15_min']['before']}, after "
                     f"{speed['load_average_1_5_15_min']['after']}")
    lines.append(f"  model loading {speed['model_loading_s']:.2f} s (once per run); crops per second "
                 + (f"{speed['crops_per_second']:.1f}" if speed["crops_per_second"] else "n/a")
                 + f"; peak memory {speed['memory']}")
    return "\n".join(lines)


TARGET_SECONDS_PER_CASE = 60.0  # issue 5: <= 60 s per case on 2 CPU cores with 5 folds


def format_speed_markdown(speed: dict) -> str:
    """A README snippet from the JSON alone: command, date, machine, the stage table, memory and what was timed."""
    machine = speed["machine"]
    stages, total = speed["mean_seconds_per_stage"], speed["mean_seconds_per_case"]
    lines = [f"`{speed['command']}`", "",
             f"Measured {speed['created']} on {machine.get('cpu_model') or machine.get('processor') or 'a CPU'}, "
             f"{machine['cpu_count']} cores visible, {machine.get('memory_gb')} GB RAM, torch {machine['torch']} "
             f"({speed['num_threads']} threads), device {speed['device']}; {speed['num_cases']} case(s); load "
             f"average before/after {speed['load_average_1_5_15_min']['before'][0]}/"
             f"{speed['load_average_1_5_15_min']['after'][0]}.", "",
             "| stage | s per case | share |", "|---|---:|---:|"]
    lines += [f"| {stage} | {stages[stage]:.2f} | {stages[stage] / total:.0%} |" for stage in ordered_stages(stages)]
    lines += [f"| **total** | **{total:.2f}** | |", "",
              f"Model loading {speed['model_loading_s']:.2f} s once per run; peak memory "
              f"{speed['memory']['peak_rss_gb']:.2f} GB (resident, from {speed['memory']['peak_since']} on)."]
    untrained = speed.get("untrained")
    if untrained:
        seg, grader, case = untrained["segmentation"], untrained["grader"], untrained["case"]
        case_text = (f"phantom {case['case_id']} ({case['phantom_preset']} preset, {case['field_of_view']}, "
                     f"{'-'.join(case['whole_vertebrae'][::len(case['whole_vertebrae']) - 1])} whole, "
                     f"{' x '.join(map(str, case['size']))} voxels of "
                     f"{' x '.join(f'{s:.2f}' for s in case['spacing_mm'])} mm)") if isinstance(case, dict) else case
        device = untrained["planned_for_device"]
        device_text = f"{device['type']} ({device['memory_gb']:g} GB, {device['num_threads']} threads)"
        lines += ["", f"Plan: preset `{untrained['plans_preset']}` planned for {device_text} on "
                      f"{untrained['planning']['dataset']}; segmentation {seg['nnunet_configuration']} "
                      f"({seg['trainer']}, spacing {' x '.join(f'{s:.2f}' for s in seg['target_spacing_mm'])} mm, "
                      f"patch {seg['patch_size']}, features {seg['features_per_stage']}, tile step "
                      f"{seg['tile_step_size']}, mirroring {'on' if seg['mirroring'] else 'off'}); grader "
                      f"{grader['network']} on {grader['patch_size']} crops; folds {untrained['folds']}. Case: "
                      f"{case_text}.",
                  f"Weights: {speed['weights']}. Stages after segmentation ran on the {speed['downstream_on']}."]
    fold_list = untrained["folds"] if untrained else (speed.get("model") or {}).get("grader", {}).get("folds")
    folds = len(fold_list) if fold_list else None
    comparable = folds == 5 and (untrained is None or untrained["segmentation"]["mirroring"])
    verdict = ("meets it" if total <= TARGET_SECONDS_PER_CASE else "misses it") if comparable else \
        "cannot be compared with it (not 5 folds with mirroring)"
    lines += ["", f"Target <= {TARGET_SECONDS_PER_CASE:.0f} s per case on 2 CPU cores with 5 folds: this run "
                  f"{verdict} ({total:.1f} s" + (f", {folds} fold(s)" if folds else "") + ")."]
    return "\n".join(lines)
