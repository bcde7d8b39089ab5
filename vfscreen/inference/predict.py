"""``vfscreen.inference.predict.predict``: CT scans in -> per-vertebra grades, heights, labels and a report out.

One pass per case, in memory: segment + label (nnU-Net fold ensemble) -> consistent labels (chain model) ->
morphometry -> crops (THE crop function of vfscreen.preprocessing.crops) -> fold-ensemble grading -> optional
Grad-CAM -> outputs (see vfscreen.inference.outputs). A failing case is recorded in errors.csv and the run goes on.
"""
from __future__ import annotations

import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
import torch
from tqdm import tqdm

from vfscreen import __version__
from vfscreen.core.plans import includes_truncated
from vfscreen.errors import ConfigError, InputError, VfscreenError
from vfscreen.inference import case_worker, deformity, outputs, resources, spine_region
from vfscreen.inference.grading import grade_crops
from vfscreen.inference.label_consistency import make_labels_consistent
from vfscreen.inference.landmarks import naming_of_given_labels
from vfscreen.inference.morphometry import measure_vertebrae
from vfscreen.inference.plausibility import assess as assess_plausibility
from vfscreen.inference.resources import StageMeter
from vfscreen.inference.screening import describe_rule, screen
from vfscreen.inference.masks import find_masks
from vfscreen.inference.model_setup import load_prediction_models
from vfscreen.inference.report import render_report
from vfscreen.inference.segmentation import Models
from vfscreen.inference.spine_labels import SpineLabels
from vfscreen.inference.spine_region import SpineSegmentation
from vfscreen.labels import CLASS_TO_VERSE, name_of
from vfscreen.preprocessing.crops import extract_vertebra_crops
from vfscreen.utils.image_io import check_case_id, check_ct_intensities, ensure_3d, orientation_code, read_image
from vfscreen.utils.progress import progress_bar

NIFTI_SUFFIXES = (".nii.gz", ".nii")
NNUNET_CHANNEL_SUFFIX = "_0000"

@dataclass
class InputCase:
    case_id: str
    source: Path  # a NIfTI file or a DICOM series folder
    kind: str  # "nifti" | "dicom"
    series_id: str | None = None


def _nifti_case_id(path: Path) -> str:
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name[: -len(NNUNET_CHANNEL_SUFFIX)] if name.endswith(NNUNET_CHANNEL_SUFFIX) else name


def _dicom_series(folder: Path) -> list[str]:
    return list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or [])


def list_cases(input_path: str | Path) -> list[InputCase]:
    """Cases of a NIfTI file, a folder of NIfTI files, a DICOM series folder or a folder of DICOM series folders."""
    input_path = Path(input_path)
    if not input_path.exists():
        raise ConfigError(f"input {input_path} does not exist")
    if input_path.is_file():
        if not input_path.name.endswith(NIFTI_SUFFIXES):
            raise ConfigError(f"input {input_path} is not a NIfTI file (.nii.gz / .nii) or a folder")
        return [InputCase(_nifti_case_id(input_path), input_path, "nifti")]
    cases = []
    for path in sorted(input_path.iterdir()):
        if path.is_file() and path.name.endswith(NIFTI_SUFFIXES) and not path.name.startswith("."):
            stem = path.name[: -len(next(s for s in NIFTI_SUFFIXES if path.name.endswith(s)))]
            if "_" in stem and stem.rsplit("_", 1)[1].isdigit() and len(stem.rsplit("_", 1)[1]) == 4 \
                    and not stem.endswith(NNUNET_CHANNEL_SUFFIX):
                continue  # nnU-Net channel 0001, 0002...: vfscreen uses the CT channel 0000 only
            cases.append(InputCase(_nifti_case_id(path), path, "nifti"))
        elif path.is_dir():
            for series in _dicom_series(path):
                suffix = "" if len(_dicom_series(path)) == 1 else f"_{series[-8:]}"
                cases.append(InputCase(f"{path.name}{suffix}", path, "dicom", series))
    if not cases:
        cases = [InputCase(input_path.name, input_path, "dicom", series) for series in _dicom_series(input_path)]
    if not cases:
        raise ConfigError(f"input folder {input_path} holds no NIfTI files (*.nii.gz, *.nii) and no DICOM series")
    seen = {}
    for case in cases:
        if case.case_id in seen:
            raise ConfigError(f"input {input_path}: case id {case.case_id!r} occurs twice ({seen[case.case_id].name} "
                              f"and {case.source.name}); rename one")
        seen[case.case_id] = case.source
    return cases


def split_cases(cases: list, num_parts: int, part_id: int) -> list:
    """nnU-Net's split of a case list over ``num_parts`` machines: part ``part_id`` gets cases[part_id::num_parts]."""
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise ConfigError(f"-part_id must lie in 0..num_parts-1 (got -num_parts {num_parts} -part_id {part_id})")
    return cases[part_id::num_parts]


def read_case_image(case: InputCase) -> sitk.Image:
    if case.kind == "nifti":
        return read_image(case.source, what="CT image")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(case.source), case.series_id))
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise InputError(f"{case.source}: cannot read DICOM series {case.series_id} "
                         f"({str(error).strip().splitlines()[-1][:200]})") from None
    return ensure_3d(image, case.source)


def _json_float(value):
    return None if value is None else round(float(value), 4)


def _segment(segmenter, image: sitk.Image, check_region) -> SpineSegmentation:
    """The segmenter's result as a SpineSegmentation; a segmenter that returns full-grid (class map, probabilities)
    (tests, other segmenters) gets its region from its foreground."""
    import inspect

    try:
        accepts_check = "check_region" in inspect.signature(segmenter).parameters
    except (TypeError, ValueError):
        accepts_check = False
    result = segmenter(image, check_region=check_region) if accepts_check else segmenter(image)
    shape = sitk.GetArrayViewFromImage(image).shape
    if isinstance(result, SpineSegmentation):
        if tuple(result.shape) != shape or spine_region.box_shape(result.box) != result.class_map.shape:
            raise RuntimeError(f"segmenter returned a region of {result.class_map.shape} in {result.shape}, expected "
                               f"one inside the image's {shape}")
    else:
        class_map, probabilities = result
        if class_map.shape != shape:
            raise RuntimeError(f"segmenter returned shape {class_map.shape}, expected the image's {shape}")
        box = spine_region.foreground_region(class_map)
        result = SpineSegmentation(shape, box, class_map[box],
                                   None if probabilities is None else probabilities[(slice(None),) + box])
    if result.class_map.size == 0:  # nothing found: one background voxel stands for the region
        result.box = tuple(slice(0, 1) for _ in shape)
        result.class_map, result.probabilities = np.zeros((1, 1, 1), np.uint8), None
    return result


def predict_case(image: sitk.Image, case_id: str, models: Models, saliency: bool = False,
                 given: SpineLabels | None = None, memory_budget: int | None = None) -> dict:
    """Run the pipeline on one image. ``given``: the case's vertebrae from a mask (``--masks``), which replaces
    segmentation. Returns {"json", "seg_image", "verse_map", "morphometry", "gradcam", "probabilities" (of the spine
    region), "region" (its box), "components", "landmarks", "plausibility", "timings_s", "peak_rss_gb"}; writes
    nothing. Components and labels are computed inside the spine's region only (vfscreen.inference.spine_region);
    ``memory_budget`` (bytes) refuses a region that would not fit."""
    meter = StageMeter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_ct_intensities(sitk.GetArrayViewFromImage(image), source=case_id)
    case_warnings = [str(warning.message) for warning in caught]
    for message in case_warnings:
        warnings.warn(message, stacklevel=2)

    def check_region(num_voxels: int, num_channels: int) -> None:
        resources.check_estimate("the spine region", resources.region_estimate_bytes(num_voxels, num_channels),
                                 memory_budget, resources.resident_bytes() or 0, f"{num_voxels} voxels")

    shape = sitk.GetArrayViewFromImage(image).shape
    with meter.stage("segmentation"):
        spine = given if given is not None else models.named_segmenter(image) if models.named_segmenter else None
        if spine is None:
            if models.segmenter is None:
                raise ConfigError("no mask for this case in --masks and no segmentation model ("
                                  + models.info.get("segmentation_unavailable", "none loaded") + ")")
            segmentation = _segment(models.segmenter, image, check_region)
            case_warnings += segmentation.notes
    probabilities, components, confidence = None, [], {}
    with meter.stage("label_consistency"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if spine is None:
            box, probabilities = segmentation.box, segmentation.probabilities
            verse_region, components, naming = make_labels_consistent(
                segmentation.class_map, spine_region.region_image(image, box), probabilities,
                grouping=getattr(models.segmenter, "label_grouping", "vertebrae"),
                has_landmarks=getattr(models.segmenter, "has_landmarks", False))
            del segmentation
            verse_map = spine_region.paste(verse_region, box, shape)
            kept = {CLASS_TO_VERSE[c.new_class_id]: c for c in components if c.new_class_id > 0}
            confidence = {label: component.label_confidence for label, component in kept.items()}
            segmentation_info, landmarks = {"source": "vfscreen", "convention": "verse"}, None
            component_names = [name_of(CLASS_TO_VERSE[c.new_class_id]) if c.new_class_id else "" for c in components]
            naming_json = {**naming.summary(component_names), "anchored": naming.any_landmark}
        else:
            verse_map, segmentation_info, landmarks = spine.verse_map, spine.segmentation, spine.landmarks
            box = spine_region.foreground_region(verse_map)
            kept, naming_json = {}, naming_of_given_labels(spine, image)
            case_warnings += [f"the mask's names contradict its landmarks: {text}"
                              for text in naming_json["contradictions"]]
            case_warnings += spine.warnings
            for message in spine.warnings:
                warnings.warn(f"{case_id}: {message}", stacklevel=2)
        seg_image = sitk.GetImageFromArray(verse_map)
        seg_image.CopyInformation(image)
        plausibility = assess_plausibility(verse_map, image, len(components) if spine is None else None)
    case_warnings += [str(warning.message) for warning in caught]

    with meter.stage("morphometry"):
        morphometry = measure_vertebrae(verse_map, image, ct=image)

    with meter.stage("grading"):
        plausible = {label for label in morphometry if plausibility.reason(label) is None}
        crops = extract_vertebra_crops(image, seg_image, models.grader.crop_plan) \
            if plausible and models.grader is not None else []
        use_truncated = models.grader is not None and includes_truncated(models.grader.crop_plan)
        gradable = [crop for crop in crops if (use_truncated or not crop.truncated) and crop.label in plausible]
        predictions = dict(zip([crop.label for crop in gradable], grade_crops(gradable, models.grader))) \
            if gradable else {}
    gradcam = None
    if saliency:
        if models.saliency is None:
            raise ConfigError("--saliency needs a grader that supports Grad-CAM")
        with meter.stage("saliency"):
            gradcam = models.saliency(image, gradable, models.grader)

    crop_truncated = {crop.label: crop.truncated for crop in crops}
    vertebrae = []
    for label, measured in morphometry.items():
        prediction = predictions.get(label)
        implausible = plausibility.reason(label)
        heights = None if implausible else measured.heights_mm
        truncated = bool(measured.truncated or crop_truncated.get(label, False))
        notes = [measured.note] if measured.note and not implausible else []
        if implausible:
            notes.append(f"not graded: anatomically implausible ({implausible})")
        elif models.grader is None:
            notes.append("no learned grade (no grader); morphometry only")
        elif prediction is None:
            notes.append("not graded: cut by the field of view (the grader was trained on whole vertebrae)")
        vertebrae.append({
            "label": int(label), "name": name_of(label),
            "grade": prediction.grade if prediction else None,
            "probabilities": prediction.probabilities if prediction else None,
            "p_fracture": prediction.p_fracture if prediction else None,
            "uncertainty": prediction.uncertainty if prediction else None,
            "fold_disagreement": prediction.fold_disagreement if prediction else None,
            "label_confidence": _json_float(confidence.get(label)),
            # names from a given mask are the mask's own (never renamed): level_uncertain only for vfscreen's chain
            "level_uncertain": bool(kept[label].level_uncertain) if label in kept else spine is None,
            "heights_mm": heights, "genant_ratio": None if implausible else _json_float(measured.genant_ratio),
            "morph_grade": None if implausible else measured.morph_grade, "implausible": implausible,
            "morphology": measured.deformity["type"] if heights and measured.deformity else None,
            **deformity.vertebra_fields(None if implausible else measured),
            "centroid_mm": [round(float(v), 2) for v in measured.centroid_mm],
            "truncated": truncated, "note": "; ".join(notes)})
    screen(vertebrae, models.fusion)
    graded = [v for v in vertebrae if v["grade"] is not None]
    suspected = sorted((v for v in graded if v["suspected"]), key=lambda v: -_screening_score(v))
    morph_graded = [v["morph_grade"] for v in vertebrae if v["morph_grade"] is not None]
    worst = max((v["grade"] for v in graded), default=None)
    if not vertebrae:
        message = "no vertebra found in this scan"
    elif plausibility.case_reason:
        message = f"segmentation anatomically implausible ({plausibility.case_reason}): nothing graded"
    elif models.grader is None:
        message = ("no learned grade was made (no grader); morphometric worst grade: "
                   + (f"G{max(morph_graded)}" if morph_graded else "none measured"))
    elif worst is None:
        message = "vertebrae found but none could be graded (all cut by the field of view)"
    elif suspected:
        message = "fracture suspected: " + ", ".join(f"{v['name']} (G{v['grade']})" for v in suspected)
    else:
        message = "no fracture detected"
    uncertain = [v["name"] for v in vertebrae if v["level_uncertain"]]
    if uncertain:
        message += (f"; level uncertain for {len(uncertain)} of {len(vertebrae)} vertebrae "
                    f"({', '.join(uncertain)}): names may be off by whole levels"
                    + ("" if naming_json["anchored"] else " (no rib or sacrum in view)"))
    case_json = {
        "schema_version": outputs.JSON_SCHEMA_VERSION, "case_id": case_id,
        "input": {"size": list(image.GetSize()), "spacing_mm": [round(s, 4) for s in image.GetSpacing()],
                  "orientation": orientation_code(image)},
        "vertebrae": vertebrae,
        "patient": {"worst_grade": worst, "any_fracture": bool(suspected),
                    "suspected": [v["name"] for v in suspected], "num_vertebrae": len(vertebrae),
                    "p_fracture": max((v["p_fracture"] for v in graded), default=None),
                    "p_fracture_fused": max((v["p_fracture_fused"] for v in graded
                                             if v["p_fracture_fused"] is not None), default=None),
                    "morph_worst_grade": max(morph_graded, default=None),
                    "morphometry": deformity.case_fields(morphometry),
                    "implausible": plausibility.case_reason, "level_uncertain": bool(uncertain),
                    "message": message},
        "segmentation": segmentation_info,
        "landmarks": landmarks.summary(image) if landmarks is not None else [],
        "naming": naming_json,
        "model": {**models.info, "screening": describe_rule(models.fusion)}, "warnings": case_warnings,
        "vfscreen_version": __version__}
    return {"json": case_json, "seg_image": seg_image, "verse_map": verse_map, "morphometry": morphometry,
            "gradcam": gradcam, "probabilities": probabilities, "region": box, "components": components,
            "landmarks": landmarks, "plausibility": plausibility, "timings_s": meter.seconds,
            "peak_rss_gb": meter.peak_gb}


def _screening_score(vertebra: dict) -> float:
    return vertebra["p_fracture_fused"] if vertebra["p_fracture_fused"] is not None else vertebra["p_fracture"]


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
    ``use_mirroring``: nnU-Net's test-time mirroring (True/False), None = the plans' choice (CPU plans: off, ~9x
    faster segmentation on a CPU).
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
        raise ConfigError("--mask-labels needs --masks (it names the label convention of the given masks)")
    mask_sources = {}
    if masks is not None and todo:
        mask_sources = find_masks(masks, [case.case_id for case in todo])
    isolate = models is None if isolate_cases is None else bool(isolate_cases)
    model_source = models
    if todo and models is None:
        import functools

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
            from vfscreen.dataset import resolve_dataset_name
            from vfscreen.core.plans import load_plans
            plans = load_plans(resolve_dataset_name(dataset))
        except (VfscreenError, OSError, KeyError, ValueError):
            plans = None
    device = plans.get("device") if isinstance(plans, dict) else None
    return device.get("memory_gb") if isinstance(device, dict) else None
