"""Dataset fingerprint: what the planner needs to know about a raw dataset.

``nnUNet_preprocessed/<Dataset>/vfscreen_fingerprint.json`` =
    {"dataset_name", "num_cases", "num_patients", "nnunet_fingerprint": "dataset_fingerprint.json",
     "cases": [{"case_id", "patient_id", "spacing_mm" [x, y, z], "shape" [x, y, z], "orientation" ("RAS", ...),
                "intensity_percentiles_in_vertebrae" {"0.5", "5", "50", "95", "99.5"} (HU),
                "vertebrae": [{"label" (VerSe id), "name", "extent_mm" [x, y, z] (bounding box along the image axes),
                               "volume_ml", "voxels", "touches_border", "grade" (or null)}]}],
     "label_histogram" {name: number of cases that contain it},
     "grade_histogram_vertebrae" {"0".."3": count}, "grade_histogram_patients" {"0".."3": patients by worst grade},
     "vertebra_extent_mm" {"p50", "p95", "max"} (longest side of the bounding boxes), "median_spacing_mm",
     "median_min_spacing_mm", "median_shape", "ungraded_vertebrae"}
Spacing, shape (after nnU-Net's crop to non-zero) and foreground intensities of the whole dataset are computed by
nnunetv2's own ``DatasetFingerprintExtractor`` (``dataset_fingerprint.json`` next to ours); this module adds what is
specific to vertebrae and grades. Every case is validated on the way (geometry, labels, grades).
"""
from __future__ import annotations

import contextlib
import io
import multiprocessing
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from vfscreen import labels, paths
from vfscreen.dataset import (GRADES_FILE, image_path, label_path, list_cases, raw_dataset_folder, read_grades,
                              resolve_dataset_name)
from vfscreen.errors import ConfigError, InputError
from vfscreen.utils.image_io import (check_case_id, check_ct_intensities, check_same_geometry, orientation_code,
                                     read_image)
from vfscreen.utils.progress import progress_bar

paths.export_for_nnunet()  # nnunetv2 (imported on use, below) reads its folders once, at import

PERCENTILES = (0.5, 5, 50, 95, 99.5)


def check_raw_dataset(dataset_name: str) -> list[str]:
    """Check the folder layout; return the training case ids. Raises ConfigError/InputError naming what is missing."""
    folder = raw_dataset_folder(dataset_name)
    if not (folder / "dataset.json").is_file():
        raise InputError(f"{folder / 'dataset.json'}: missing (every dataset needs nnU-Net's dataset.json)")
    if not (folder / GRADES_FILE).is_file():
        raise InputError(f"{folder / GRADES_FILE}: missing (columns case_id,label,grade; label = VerSe id)")
    cases = list_cases(folder, "Tr")
    if not cases:
        raise InputError(f"{folder / 'imagesTr'}: no training images (<case>_0000.nii.gz)")
    for case_id in cases:
        _check_case_id(case_id, image_path(folder, case_id))
        if not label_path(folder, case_id).is_file():
            raise InputError(f"{label_path(folder, case_id)}: label mask of training case {case_id} missing")
    for label_file in sorted((folder / "labelsTr").glob("*.nii.gz")):
        case_id = label_file.name[: -len(".nii.gz")]
        if case_id not in cases:
            raise InputError(f"{image_path(folder, case_id)}: CT image of training case {case_id} missing "
                             f"(its label {label_file.name} exists)")
    return cases


def _check_case_id(case_id: str, source: Path) -> None:
    try:
        check_case_id(case_id)
    except InputError as error:
        raise InputError(f"{source}: {error}") from None


def case_fingerprint(task: tuple) -> dict:
    """Read, validate and describe one training case. ``task`` = (dataset folder, case id, graded labels)."""
    folder, case_id, graded = task
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    image_file, label_file = image_path(folder, case_id), label_path(folder, case_id)
    image = read_image(image_file, "CT image")
    mask = read_image(label_file, "label mask")
    check_same_geometry(image, mask, source=str(label_file))
    class_array = sitk.GetArrayViewFromImage(mask)
    if np.any(class_array < 0) or np.any(class_array >= labels.NUM_CLASSES) or not np.allclose(
            class_array, np.round(class_array)):
        raise InputError(f"{label_file}: label values must be nnU-Net class ids 0..{labels.NUM_CLASSES - 1}")
    verse_array = labels.class_to_verse(class_array.astype(np.int64))
    if not verse_array.any():
        raise InputError(f"{label_file}: the mask of case {case_id} is empty (no vertebra labelled)")
    ct_array = sitk.GetArrayViewFromImage(image)
    check_ct_intensities(ct_array, source=str(image_file))
    present = [int(v) for v in np.unique(verse_array) if v != 0]
    absent_graded = sorted(set(graded) - set(present))
    if absent_graded:
        names = ", ".join(labels.name_of(v) for v in absent_graded)
        raise InputError(f"{label_file}: grades.csv grades vertebra(e) {names} (VerSe {absent_graded}) of case "
                         f"{case_id}, but the mask does not contain them")
    inside = ct_array[verse_array > 0]
    spacing = np.array(image.GetSpacing())
    verse_image = sitk.GetImageFromArray(verse_array.astype(np.uint8))
    verse_image.CopyInformation(image)
    statistics = sitk.LabelShapeStatisticsImageFilter()
    statistics.Execute(verse_image)
    vertebrae = []
    for verse_id in present:
        x0, y0, z0, size_x, size_y, size_z = statistics.GetBoundingBox(verse_id)
        size = np.array([size_x, size_y, size_z])
        touches = bool(min(x0, y0, z0) == 0 or np.any(np.array([x0, y0, z0]) + size >= np.array(image.GetSize())))
        vertebrae.append({
            "label": verse_id, "name": labels.name_of(verse_id),
            "extent_mm": [round(float(v), 2) for v in size * spacing],
            "volume_ml": round(float(statistics.GetNumberOfPixels(verse_id) * np.prod(spacing) / 1000.0), 3),
            "voxels": int(statistics.GetNumberOfPixels(verse_id)), "touches_border": touches,
            "grade": graded.get(verse_id)})
    return {"case_id": case_id, "spacing_mm": [float(s) for s in spacing], "shape": list(image.GetSize()),
            "orientation": orientation_code(image),
            "intensity_percentiles_in_vertebrae": {str(p): float(v) for p, v in
                                                   zip(PERCENTILES, np.percentile(inside, PERCENTILES))},
            "vertebrae": vertebrae}


def compute_fingerprint(dataset_name: str, num_processes: int = 2, with_nnunet_fingerprint: bool = True,
                        verify_dataset_integrity: bool = False) -> dict:
    """Validate every training case and fingerprint the dataset (see module docstring). Nothing is written here."""
    folder = raw_dataset_folder(dataset_name)
    cases = check_raw_dataset(dataset_name)
    grades = read_grades(folder / GRADES_FILE)
    for case_id in grades["case_id"].unique():
        _check_case_id(case_id, folder / GRADES_FILE)
    graded_by_case = {case: dict(zip(group["label"], group["grade"].astype(int)))
                      for case, group in grades.groupby("case_id")}
    if verify_dataset_integrity:
        _run_nnunet_integrity_check(folder, num_processes)
    tasks = [(folder, case_id, {int(k): int(v) for k, v in graded_by_case.get(case_id, {}).items()})
             for case_id in cases]
    case_entries = _map(case_fingerprint, tasks, num_processes, "fingerprint (vfscreen)")
    patients = _patient_ids(folder, cases)
    for entry in case_entries:
        entry["patient_id"] = patients[entry["case_id"]]
    fingerprint = _summarise(dataset_name, case_entries, folder)
    if with_nnunet_fingerprint:
        fingerprint["nnunet_fingerprint"] = run_nnunet_extractor(dataset_name, num_processes)
    return fingerprint


def _summarise(dataset_name: str, case_entries: list[dict], folder) -> dict:
    vertebrae = [v for entry in case_entries for v in entry["vertebrae"]]
    ungraded = [f"{entry['case_id']}/{v['name']}" for entry in case_entries for v in entry["vertebrae"]
                if v["grade"] is None]
    if ungraded:
        warnings.warn(f"{folder / GRADES_FILE}: {len(ungraded)} labelled vertebra(e) have no grade (e.g. "
                      f"{', '.join(ungraded[:5])}); they are excluded from grader training and kept for segmentation",
                      stacklevel=2)
    graded = [v["grade"] for v in vertebrae if v["grade"] is not None]
    if not graded:
        raise InputError(f"{folder / GRADES_FILE}: no vertebra of any training case is graded; the grader needs grades")
    worst_by_patient: dict[str, int] = {}
    for entry in case_entries:
        case_grades = [v["grade"] for v in entry["vertebrae"] if v["grade"] is not None]
        if case_grades:
            patient = entry["patient_id"]
            worst_by_patient[patient] = max(worst_by_patient.get(patient, 0), max(case_grades))
    longest_sides = np.array([max(v["extent_mm"]) for v in vertebrae])
    spacings = np.array([entry["spacing_mm"] for entry in case_entries])
    label_counts = Counter(v["name"] for v in vertebrae)
    return {
        "dataset_name": dataset_name,
        "num_cases": len(case_entries),
        "num_patients": len({entry["patient_id"] for entry in case_entries}),
        "cases": case_entries,
        "label_histogram": {labels.name_of(v): label_counts[labels.name_of(v)] for v in labels.SPINE_ORDER
                            if label_counts[labels.name_of(v)]},
        "grade_histogram_vertebrae": {str(g): int(sum(1 for x in graded if x == g)) for g in range(4)},
        "grade_histogram_patients": {str(g): int(sum(1 for x in worst_by_patient.values() if x == g))
                                     for g in range(4)},
        "vertebra_extent_mm": {"p50": float(np.percentile(longest_sides, 50)),
                               "p95": float(np.percentile(longest_sides, 95)), "max": float(longest_sides.max())},
        "median_spacing_mm": [float(v) for v in np.median(spacings, axis=0)],
        "median_min_spacing_mm": float(np.median(spacings.min(axis=1))),
        "median_shape": [float(v) for v in np.median([entry["shape"] for entry in case_entries], axis=0)],
        "ungraded_vertebrae": len(ungraded),
    }


def _patient_ids(folder, cases: list[str]) -> dict[str, str]:
    """case -> patient. dataset.json may map cases to patients under ``vfscreen.patients``; default: one per case."""
    import json

    dataset_json = json.loads((folder / "dataset.json").read_text())
    mapping = (dataset_json.get("vfscreen") or {}).get("patients") or {}
    if not isinstance(mapping, dict):
        raise InputError(f"{folder / 'dataset.json'}: field 'vfscreen.patients' must map case ids to patient ids")
    return {case_id: str(mapping.get(case_id, case_id)) for case_id in cases}


def _map(function, tasks: list, num_processes: int, description: str) -> list:
    if num_processes <= 1 or len(tasks) <= 1:
        return [function(task) for task in progress_bar(tasks, desc=description, unit="case")]
    context = multiprocessing.get_context("spawn")
    with context.Pool(min(num_processes, len(tasks))) as pool:
        return list(progress_bar(pool.imap(function, tasks), total=len(tasks), desc=description, unit="case"))


def run_nnunet_extractor(dataset_name: str, num_processes: int) -> str:
    """nnunetv2's DatasetFingerprintExtractor (spacings, shapes after cropping, foreground intensities); returns the
    name of the file it writes next to vfscreen's fingerprint."""
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor

    extractor = DatasetFingerprintExtractor(dataset_name, num_processes=max(1, num_processes), verbose=False)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            extractor.run(overwrite_existing=True)
    except (AssertionError, RuntimeError) as error:
        raise InputError(f"nnU-Net's fingerprint extractor failed on {dataset_name}: {error}") from None
    return "dataset_fingerprint.json"


def _run_nnunet_integrity_check(folder, num_processes: int) -> None:
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    try:
        verify_dataset_integrity(str(folder), max(1, num_processes))
    except (AssertionError, RuntimeError) as error:
        raise InputError(f"{folder}: nnU-Net's dataset integrity check failed: {error}") from None


def ensure_dataset_name(dataset) -> str:
    name = resolve_dataset_name(dataset)
    if not raw_dataset_folder(name).is_dir():
        raise ConfigError(f"{raw_dataset_folder(name)}: raw dataset folder missing")
    return name
