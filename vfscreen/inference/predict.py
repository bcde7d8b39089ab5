"""``vfscreen.inference.predict.predict``: CT scans in -> per-vertebra grades, heights, labels and a report out.

Lists the input's cases (vfscreen.inference.cases), loads the models once, and runs each case
(vfscreen.inference.pipeline.predict_case, in a worker process by default: vfscreen.inference.case_worker) into
the output folder (vfscreen.inference.outputs). A failing case is recorded in errors.csv and the run goes on.
"""
from __future__ import annotations

import functools
import traceback
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from vfscreen.core.plans import load_plans
from vfscreen.dataset import resolve_dataset_name
from vfscreen.errors import ConfigError, InputError, VfscreenError
from vfscreen.inference import case_worker, outputs, resources
from vfscreen.inference.cases import list_cases, split_cases
from vfscreen.inference.masks import find_masks
from vfscreen.inference.model_setup import load_prediction_models
from vfscreen.inference.segmentation import Models
from vfscreen.utils.image_io import check_case_id
from vfscreen.utils.progress import progress_bar

__all__ = ["Models", "predict"]


def _safe(case_id: str) -> bool:
    try:
        check_case_id(case_id)
    except InputError:
        return False
    return True


def _check_output_folder(input_path: Path, output_folder: Path) -> None:
    input_folder = input_path if input_path.is_dir() else input_path.parent
    if output_folder.resolve() == input_folder.resolve():
        raise ConfigError(f"output folder {output_folder} is the input folder; choose another -o (inputs are never "
                          "modified and outputs would be mistaken for inputs)")


def predict(input, output, dataset=501, configuration: str = "3d", folds=None, device: str = "cpu",
            continue_prediction: bool = False, num_parts: int = 1, part_id: int = 0, num_threads: int | None = None,
            saliency: bool = False, save_probabilities: bool = False, checkpoint: str = "final",
            models: Models | None = None, verbose: bool = False, use_mirroring: bool | None = None,
            masks=None, mask_labels: str | None = None, seg_model=None, no_grader: bool = False,
            memory_budget_gb: float | None = None, isolate_cases: bool | None = None) -> pd.DataFrame:
    """Predict every case of ``input`` into ``output``; returns summary.csv's table of this run's finished cases.

    ``models`` (tests, notebooks) replaces loading the trained models of ``dataset``/``configuration``/``folds``.
    ``masks``: a mask file or folder (vfscreen.inference.masks) whose cases skip segmentation; ``mask_labels`` forces
    their label convention. ``seg_model``: another trained nnU-Net model folder as the segmentation stage
    (vfscreen.inference.seg_model). ``no_grader``: morphometry only, no learned grade.
    ``use_mirroring``: nnU-Net's test-time mirroring (True/False), None = the plans' choice (CPU plans: off).
    ``memory_budget_gb``: the memory a case may use (default: vfscreen.inference.resources.memory_budget_bytes); a
    case over it fails (errors.csv). ``isolate_cases``: the cases run in a worker process that holds the models, so
    that a case killed by the operating system fails alone (default: when vfscreen loads the models itself; injected
    ``models`` must then be picklable).
    The returned frame's ``attrs["errors"]`` lists failed cases ({case_id, input, error}); ``attrs["skipped"]`` the
    cases skipped by ``continue_prediction``.
    """
    input_path, output_folder = Path(input), Path(output)
    _check_output_folder(input_path, output_folder)
    all_cases = list_cases(input_path)
    cases = split_cases(all_cases, num_parts, part_id)
    if num_threads:
        torch.set_num_threads(int(num_threads))
    skipped = [case.case_id for case in cases if continue_prediction and _safe(case.case_id)
               and outputs.case_is_complete(output_folder, case.case_id, saliency, save_probabilities)]
    todo = [case for case in cases if case.case_id not in skipped]
    if mask_labels is not None and masks is None:
        raise ConfigError("--mask_labels needs --masks (it names the label convention of the given masks)")
    mask_sources = {}
    if masks is not None and todo:
        mask_sources = find_masks(masks, [case.case_id for case in todo])
    isolate = models is None if isolate_cases is None else bool(isolate_cases)
    model_source = models
    if todo and models is None:
        model_source = functools.partial(
            load_prediction_models, dataset, configuration, folds, device, checkpoint, saliency=saliency,
            use_mirroring=use_mirroring, seg_model=seg_model, no_grader=no_grader,
            need_segmenter=any(case.case_id not in mask_sources for case in todo), some_masks=bool(mask_sources))
        if not isolate:
            models = model_source()
    budget = resources.memory_budget_bytes(_device_memory_gb(models, dataset), memory_budget_gb)
    options = case_worker.CaseOptions(saliency, save_probabilities, mask_labels, budget)
    failures, finished = [], []
    worker = case_worker.CaseWorker(model_source, budget, num_threads, verbose) if isolate and todo else None
    try:
        if worker is not None:
            worker.start()  # the models' errors (ConfigError) stop the run here, as without a worker
        output_folder.mkdir(parents=True, exist_ok=True)
        for case in progress_bar(todo, desc="vfscreen_predict", unit="case", disable=not todo):
            try:
                check_case_id(case.case_id)
                mask_source = mask_sources.get(case.case_id)
                outcome = worker.run(case, output_folder, mask_source, options) if worker else \
                    case_worker.run_case(case, output_folder, models, mask_source, options)
                finished.append(case.case_id)
                if verbose:
                    timings = ", ".join(f"{k} {v:.1f}s" for k, v in outcome["timings_s"].items())
                    peaks = ", ".join(f"{k} {v:.2f}" for k, v in outcome["peak_rss_gb"].items())
                    tqdm.write(f"{case.case_id}: {outcome['message']} ({timings}; peak GB {peaks})")
            except KeyboardInterrupt:
                raise
            except Exception as error:  # noqa: BLE001 - one bad case must not stop the batch
                if verbose and not isinstance(error, case_worker.CaseFailed):
                    traceback.print_exc()
                failures.append({"case_id": case.case_id, "input": str(case.source),
                                 "error": case_worker.failure_message(error)})
                tqdm.write(f"vfscreen: case {case.case_id} failed: {failures[-1]['error']}")
    finally:
        if worker is not None:
            worker.close()
    if output_folder.is_dir():
        with outputs.folder_lock(output_folder):  # other parts may finish at the same time
            table = outputs.write_summary(output_folder, [case.case_id for case in all_cases if _safe(case.case_id)])
            outputs.update_errors(output_folder, [case.case_id for case in todo], failures,
                                  [case.case_id for case in all_cases])
    else:
        table = pd.DataFrame(columns=outputs.SUMMARY_COLUMNS)
    table = table[table["case_id"].isin(finished + skipped)].reset_index(drop=True)
    table.attrs["errors"] = failures
    table.attrs["skipped"] = skipped
    table.attrs["finished"] = finished
    return table


def _device_memory_gb(models: Models | None, dataset) -> float | None:
    """The plans' device memory (the grader's plans, or the dataset's plans when the models live in a worker;
    None when unknown)."""
    plans = getattr(getattr(models, "grader", None), "plans", None)
    if models is None:
        try:
            plans = load_plans(resolve_dataset_name(dataset))
        except (VfscreenError, OSError, KeyError, ValueError):
            plans = None
    device = plans.get("device") if isinstance(plans, dict) else None
    return device.get("memory_gb") if isinstance(device, dict) else None
