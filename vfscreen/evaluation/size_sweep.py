"""``vfscreen_benchmark speed --size_sweep 512x512x100 512x512x400 ...``: input size -> seconds and peak memory
per stage of prediction.

For each size a synthetic scan (made by the caller: the benchmark passes vfscreen.phantom.field_of_view's spine in a
body, or with ``--sweep_content noise`` its noise-and-column scan) of 0.8 x 0.8 x 1.0 mm is written to a temporary folder and predicted by a fresh process (spawned, so every size
starts from the same memory) exactly as ``vfscreen_predict`` does one case (vfscreen.inference.case_worker.run_case:
header pre-check, read, segmentation, label consistency, morphometry, grading, report + outputs). Peak resident
memory per stage is the process's peak during that stage (Linux VmHWM, reset at the start of each stage; the models
are loaded before). Post-processing = every stage after segmentation.
"""
from __future__ import annotations

import datetime
import multiprocessing
import sys
import tempfile
from pathlib import Path

import SimpleITK as sitk
import torch

from vfscreen.errors import ConfigError
from vfscreen.evaluation.speed import machine_description
from vfscreen.inference import resources
from vfscreen.inference.case_worker import CaseOptions, run_case
from vfscreen.inference.cases import list_cases
from vfscreen.inference.model_setup import load_prediction_models

POST_PROCESSING = ("label_consistency", "morphometry", "grading", "saliency", "report")
DEFAULT_SPACING = (0.8, 0.8, 1.0)
STAGES = ("read", "segmentation", "label_consistency", "morphometry", "grading", "report")


def parse_size(text: str) -> tuple[int, int, int]:
    try:
        size = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        size = ()
    if len(size) != 3 or min(size) < 2:
        raise ConfigError(f"--size_sweep {text!r}: sizes are XxYxZ voxels, e.g. 512x512x400")
    return size


def _measure(path: str, model_kwargs: dict, num_threads: int | None, budget_gb: float | None, queue) -> None:
    """In a fresh process: load the models, then predict one case as vfscreen_predict does."""
    try:
        if num_threads:
            torch.set_num_threads(int(num_threads))
        models = load_prediction_models(**model_kwargs)
        loaded_gb = (resources.resident_bytes() or 0) / resources.GB
        budget = resources.memory_budget_bytes(None, budget_gb)
        with tempfile.TemporaryDirectory(prefix="vfscreen_sweep_out_") as output:
            resources.reset_peak()
            outcome = run_case(list_cases(path)[0], Path(output), models, None, CaseOptions(memory_budget=budget))
            peak = resources.peak_bytes()
        queue.put({"models_loaded_gb": round(loaded_gb, 3), "seconds": outcome["timings_s"],
                   "peak_rss_gb": outcome["peak_rss_gb"], "message": outcome["message"],
                   "peak_rss_case_gb": None if peak is None else round(peak / resources.GB, 3),
                   "threads": torch.get_num_threads()})
    except BaseException as error:  # noqa: BLE001 - reported as this size's failure
        queue.put({"error": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"})


def run_size_sweep(sizes, make_scan, content: str, dataset=501, configuration: str = "3d", folds=None,
                   device: str = "cpu", num_threads: int | None = None, spacing=DEFAULT_SPACING,
                   memory_budget_gb: float | None = None) -> dict:
    """``make_scan(size_xyz, spacing_xyz) -> sitk.Image``: the scan of each size; ``content`` names it (table)."""
    model_kwargs = {"dataset": dataset, "configuration": configuration, "folds": folds, "device": device}
    rows = []
    context = multiprocessing.get_context("spawn")
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix="vfscreen_sweep_in_") as folder:
            path = Path(folder) / f"{content}_{'x'.join(map(str, size))}_0000.nii.gz"
            image = make_scan(size, spacing)
            sitk.WriteImage(image, str(path))
            del image
            queue = context.Queue()
            process = context.Process(target=_measure, args=(str(path), model_kwargs, num_threads, memory_budget_gb,
                                                               queue))
            process.start()
            process.join()
            result = queue.get() if not queue.empty() else \
                {"error": f"the measuring process died (exit code {process.exitcode})"}
        seconds = result.get("seconds", {})
        total = sum(seconds.values())
        post = sum(seconds.get(stage, 0.0) for stage in POST_PROCESSING)
        rows.append({"size": list(size), "spacing_mm": list(spacing), "content": content, **result,
                     "total_s": total, "post_processing_share": post / total if total else None})
    return {"schema_version": 1, "kind": "vfscreen_size_sweep",
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["vfscreen_benchmark"] + sys.argv[1:]), "dataset": str(dataset),
            "configuration": configuration, "folds": folds, "device": device, "machine": machine_description(),
            "rows": rows}


def format_size_sweep(sweep: dict, markdown: bool = False) -> str:
    """Two tables (seconds per stage; peak resident GB per stage) with one row per input size."""
    machine = sweep["machine"]
    header = ["input (voxels)", *STAGES, "total", "post-processing"]
    seconds_rows, memory_rows = [], []
    for row in sweep["rows"]:
        name = " x ".join(map(str, row["size"])) + ("" if row["content"] == "spine" else f" ({row['content']})")
        if "error" in row:
            seconds_rows.append([name, f"failed: {row['error']}"] + [""] * (len(header) - 2))
            memory_rows.append([name, "failed"] + [""] * (len(STAGES) + 1))
            continue
        seconds = row["seconds"]
        seconds_rows.append([name] + [f"{seconds.get(stage, 0.0):.1f}" for stage in STAGES]
                            + [f"{row['total_s']:.1f}", f"{row['post_processing_share']:.0%}"])
        peaks = row["peak_rss_gb"]
        memory_rows.append([name] + [f"{peaks[stage]:.2f}" if stage in peaks else "" for stage in STAGES]
                           + [f"{row['peak_rss_case_gb']:.2f}", f"{row['models_loaded_gb']:.2f}"])
    memory_header = ["input (voxels)", *STAGES, "case peak", "models loaded"]
    title = (f"Size sweep ({sweep['rows'][0]['content'] if sweep['rows'] else ''}, "
             f"{' x '.join(f'{s:g}' for s in sweep['rows'][0]['spacing_mm']) if sweep['rows'] else ''} mm), "
             f"dataset {sweep['dataset']} {sweep['configuration']}, device {sweep['device']}, "
             f"{machine['cpu_count']} CPU cores visible, torch threads "
             f"{sweep['rows'][0].get('threads') if sweep['rows'] else None}")
    if not markdown:
        width = max(len(header[0]), *(len(r[0]) for r in seconds_rows)) + 2
        lines = [title, "seconds per stage:", "".join(h.ljust(width if i == 0 else 18) for i, h in enumerate(header))]
        lines += ["".join(c.ljust(width if i == 0 else 18) for i, c in enumerate(r)) for r in seconds_rows]
        lines += ["peak resident memory per stage (GB):",
                  "".join(h.ljust(width if i == 0 else 18) for i, h in enumerate(memory_header))]
        lines += ["".join(c.ljust(width if i == 0 else 18) for i, c in enumerate(r)) for r in memory_rows]
        return "\n".join(lines)
    lines = [f"`{sweep['command']}`", "", f"Measured {sweep['created']}; {title}.", "",
             "Seconds per stage:", "", "| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in seconds_rows]
    lines += ["", "Peak resident memory per stage (GB, the whole process, models included):", "",
              "| " + " | ".join(memory_header) + " |", "|---" + "|---:" * (len(memory_header) - 1) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in memory_rows]
    return "\n".join(lines)
