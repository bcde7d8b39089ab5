"""Grader crops from the ground-truth masks: ``nnUNet_preprocessed/<Dataset>/vfscreen_crops_<configuration>/``.

    <case>_<label:02d>.npy   float16 (or the plan's storage_dtype) (C, D, H, W) crop of one vertebra (see .crops)
    <case>.record.json       per-case record: plan hash, input file stats, the case's crops (incremental state)
    crop_plan.json           the crop plan the folder was made with
    crops.csv                the index, one row per vertebra: case_id, label, name, grade (empty = ungraded, not
                             used for grader training), fold (the fold whose validation set holds the case), truncated,
                             bbox (input voxel index box [[x0, x1], [y0, y1], [z0, z1]], stop exclusive),
                             crop_spacing_mm, shape ([D, H, W]), file, centroid_mm (world x, y, z), voxel_count,
                             plan_hash

Only training cases (imagesTr) are cropped. Incremental: a case whose record has the same plan hash and the same
input file stats (size, modification time) as now, and whose crop files exist, is not recomputed; grades and folds are
re-joined on every run. Atomic: every file is written under a temporary name and renamed; ``crops.csv`` is removed
before any crop changes and written last, so it never lists crops of another state.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from vfscreen import labels as vertebra_labels
from vfscreen import paths
from vfscreen.core.plans import crop_section
from vfscreen.dataset import GRADES_FILE, image_path, label_path, list_cases, read_grades, resolve_dataset_name
from vfscreen.errors import ConfigError, InputError
from vfscreen.preprocessing.crops import CROP_ALGORITHM_VERSION, extract_vertebra_crops, validate_crop_plan
from vfscreen.utils.atomic import atomic_save_npy, atomic_write_csv, atomic_write_json
from vfscreen.utils.image_io import check_same_geometry, read_image
from vfscreen.utils.progress import progress_bar

CROPS_INDEX = "crops.csv"
CROP_PLAN_FILE = "crop_plan.json"
SPLITS_FILE = "splits_final.json"
RECORD_SUFFIX = ".record.json"
STORAGE_DTYPES = ("float16", "float32")
INDEX_COLUMNS = ("case_id", "label", "name", "grade", "fold", "truncated", "bbox", "crop_spacing_mm", "shape", "file",
                 "centroid_mm", "voxel_count", "plan_hash")


def crops_folder_name(configuration: str = "3d") -> str:
    """The crops folder's name inside nnUNet_preprocessed/<Dataset>/ (one definition for writer and readers)."""
    return f"vfscreen_crops_{configuration}"


def crops_folder(dataset_name: str, configuration: str = "3d") -> Path:
    return paths.nnUNet_preprocessed / dataset_name / crops_folder_name(configuration)


def crop_plan_hash(crop_plan: dict) -> str:
    """Hash of everything that determines the crop arrays (the crop plan and the crop algorithm's version)."""
    text = json.dumps({"crop": crop_plan, "algorithm": CROP_ALGORITHM_VERSION}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_crops_index(folder: str | Path) -> pd.DataFrame:
    """Read a ``crops.csv`` (grade and fold as nullable integers, truncated as bool)."""
    index = Path(folder) / CROPS_INDEX
    if not index.is_file():
        raise ConfigError(f"{index}: grader crops missing; run vfscreen_plan_and_preprocess first")
    table = pd.read_csv(index, dtype={"case_id": str})
    for column in ("grade", "fold"):
        table[column] = table[column].astype("Int64")
    table["truncated"] = table["truncated"].astype(bool)
    return table


def load_crop(path: str | Path) -> np.ndarray:
    """A stored crop as float32 (C, D, H, W)."""
    return np.load(path).astype(np.float32)


def preprocess_grader_crops(dataset_name, vfscreen_plans: dict, configuration: str = "3d", num_processes: int = 2,
                            overwrite: bool = False) -> Path:
    """Crop every vertebra of every training case; returns the crops folder. See the module docstring."""
    dataset_name = resolve_dataset_name(dataset_name)
    crop_plan = _crop_plan(vfscreen_plans, dataset_name, configuration)
    raw_folder = paths.nnUNet_raw / dataset_name
    if not raw_folder.is_dir():
        raise ConfigError(f"{raw_folder}: raw dataset folder missing")
    cases = list_cases(raw_folder, "Tr")
    if not cases:
        raise InputError(f"{raw_folder / 'imagesTr'}: no training cases (<case>_0000.nii.gz)")
    for case_id in cases:
        if not label_path(raw_folder, case_id).is_file():
            raise InputError(f"{label_path(raw_folder, case_id)}: label mask of case {case_id} missing")
    grades = read_grades(raw_folder / GRADES_FILE)
    _warn_unknown_grade_cases(grades, cases, list_cases(raw_folder, "Ts"), raw_folder / GRADES_FILE)
    folds = _read_folds(paths.nnUNet_preprocessed / dataset_name / SPLITS_FILE, cases)
    graded_labels = {case_id: sorted(group["label"].tolist()) for case_id, group in grades.groupby("case_id")}

    folder = crops_folder(dataset_name, configuration)
    folder.mkdir(parents=True, exist_ok=True)
    _remove_temporary_files(folder)
    plan_hash = crop_plan_hash(crop_plan)
    tasks, records = [], {}
    for case_id in cases:
        task = {"case_id": case_id, "image": str(image_path(raw_folder, case_id)),
                "label": str(label_path(raw_folder, case_id)), "folder": str(folder), "crop_plan": crop_plan,
                "plan_hash": plan_hash, "graded_labels": graded_labels.get(case_id, [])}
        record = None if overwrite else _up_to_date_record(task)
        if record is None:
            tasks.append(task)
        else:
            _check_graded_labels_present(case_id, task["graded_labels"], [c["label"] for c in record["crops"]],
                                         task["label"])
            records[case_id] = record
    stale_cases = _stale_case_records(folder, set(cases))
    if tasks or stale_cases:
        (folder / CROPS_INDEX).unlink(missing_ok=True)  # never an index that lists crops of another state
    try:
        for record in _run(tasks, num_processes):
            records[record["case_id"]] = record
    finally:
        _remove_temporary_files(folder)  # left by workers that were stopped mid-write
    for record_file in stale_cases:
        _remove_case(record_file)

    table = _index_table([records[case_id] for case_id in cases], grades, folds)
    ungraded = table[table["grade"].isna()]
    if len(ungraded):
        examples = ", ".join(f"{row.case_id}/{row.name}" for row in ungraded.head(5).itertuples())
        warnings.warn(f"{len(ungraded)} vertebra(e) have no grade in {raw_folder / GRADES_FILE} (e.g. {examples}); "
                      "they are kept in crops.csv with an empty grade and excluded from grader training", stacklevel=2)
    atomic_write_json(folder / CROP_PLAN_FILE, {"dataset_name": dataset_name, "configuration": configuration,
                                                "plan_hash": plan_hash, "crop": crop_plan})
    atomic_write_csv(folder / CROPS_INDEX, table)
    return folder


# ---------------------------------------------------------------------------------------------------- helpers
def _crop_plan(vfscreen_plans: dict, dataset_name: str, configuration: str) -> dict:
    planned_for = vfscreen_plans.get("dataset_name") if isinstance(vfscreen_plans, dict) else None
    if planned_for is not None and planned_for != dataset_name:
        raise ConfigError(f"plans: made for {planned_for}, not for {dataset_name}")
    crop = crop_section(vfscreen_plans, configuration)
    validate_crop_plan(crop)
    if crop.get("storage_dtype", "float16") not in STORAGE_DTYPES:
        raise ConfigError(f"crop plan: grader.crop.storage_dtype {crop['storage_dtype']!r} must be one of "
                          f"{STORAGE_DTYPES}")
    return crop


def _read_folds(splits_file: Path, cases: list[str]) -> dict[str, int]:
    """case -> the fold whose validation set holds it (nnU-Net's splits_final.json)."""
    if not splits_file.is_file():
        raise ConfigError(f"{splits_file}: splits missing; run the planner (vfscreen_plan_and_preprocess) first")
    try:
        splits = json.loads(splits_file.read_text())
        folds = {case_id: fold for fold, split in enumerate(splits) for case_id in split["val"]}
    except (json.JSONDecodeError, TypeError, KeyError) as error:
        raise ConfigError(f"{splits_file}: not a list of {{'train': [...], 'val': [...]}} ({error})") from None
    missing = [case_id for case_id in cases if case_id not in folds]
    if missing:
        warnings.warn(f"{splits_file}: case(s) {missing[:5]}{' ...' if len(missing) > 5 else ''} are in no "
                      "validation fold; their crops get an empty fold (re-run the planner to update the splits)",
                      stacklevel=3)
    return folds


def _warn_unknown_grade_cases(grades: pd.DataFrame, train_cases, test_cases, grades_file: Path) -> None:
    unknown = sorted(set(grades["case_id"]) - set(train_cases) - set(test_cases))
    if unknown:
        warnings.warn(f"{grades_file}: grades for case(s) {unknown[:5]} that are neither in imagesTr nor imagesTs "
                      "are ignored", stacklevel=3)


def _check_graded_labels_present(case_id, graded, present, label_file) -> None:
    absent = sorted(set(graded) - set(present))
    if absent:
        names = ", ".join(vertebra_labels.name_of(v) for v in absent)
        raise InputError(f"grades.csv: case {case_id} grades label(s) {absent} ({names}) that are not in its mask "
                         f"{label_file}")


def _input_stats(task: dict) -> dict:
    return {key: [os.stat(task[key]).st_size, os.stat(task[key]).st_mtime_ns] for key in ("image", "label")}


def _record_file(folder, case_id) -> Path:
    return Path(folder) / f"{case_id}{RECORD_SUFFIX}"


def _up_to_date_record(task: dict) -> dict | None:
    record_file = _record_file(task["folder"], task["case_id"])
    try:
        record = json.loads(record_file.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if (record.get("plan_hash") != task["plan_hash"] or record.get("inputs") != _input_stats(task)
            or record_file.stat().st_mtime_ns < max(s[1] for s in record["inputs"].values())):
        return None
    if not all((Path(task["folder"]) / crop["file"]).is_file() for crop in record.get("crops", [])):
        return None
    return record


def _stale_case_records(folder: Path, cases: set[str]) -> list[Path]:
    return [f for f in folder.glob("*" + RECORD_SUFFIX) if f.name[: -len(RECORD_SUFFIX)] not in cases]


def _remove_case(record_file: Path) -> None:
    try:
        record = json.loads(record_file.read_text())
        for crop in record.get("crops", []):
            (record_file.parent / crop["file"]).unlink(missing_ok=True)
    except (OSError, json.JSONDecodeError, TypeError):
        pass
    record_file.unlink(missing_ok=True)


def _remove_temporary_files(folder: Path) -> None:
    for leftover in folder.glob(".*.tmp*"):
        leftover.unlink(missing_ok=True)


def _run(tasks: list[dict], num_processes: int):
    """Yield each task's record, in a pool of ``num_processes`` (inline when 1 or when there is one task)."""
    progress = progress_bar(total=len(tasks), desc="grader crops", unit="case", disable=not tasks)
    with progress:
        if num_processes <= 1 or len(tasks) <= 1:
            for task in tasks:
                yield crop_case(task)
                progress.update()
            return
        context = multiprocessing.get_context("spawn")
        with context.Pool(min(num_processes, len(tasks)), initializer=_single_threaded_worker) as pool:
            for record in pool.imap_unordered(crop_case, tasks):
                yield record
                progress.update()


def _single_threaded_worker() -> None:
    sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(1)


def crop_case(task: dict) -> dict:
    """Crop one case (a pool task): read, validate, crop, write the .npy files, then the case record."""
    case_id, folder = task["case_id"], Path(task["folder"])
    inputs = _input_stats(task)
    ct = read_image(task["image"], what=f"CT image of case {case_id}")
    class_labels = read_image(task["label"], what=f"label mask of case {case_id}")
    check_same_geometry(ct, class_labels, source=task["label"])
    ct_array = sitk.GetArrayViewFromImage(ct)
    if np.issubdtype(ct_array.dtype, np.floating) and not np.all(np.isfinite(ct_array)):
        raise InputError(f"{task['image']}: contains NaN or infinite voxels (case {case_id})")
    class_array = sitk.GetArrayViewFromImage(class_labels)
    if not np.issubdtype(class_array.dtype, np.integer) and not np.array_equal(class_array, np.round(class_array)):
        raise InputError(f"{task['label']}: label values are not integers (case {case_id})")
    try:
        verse_array = vertebra_labels.class_to_verse(class_array.astype(np.int64))
    except ValueError as error:
        raise InputError(f"{task['label']}: {error} (case {case_id})") from None
    verse_labels = sitk.GetImageFromArray(verse_array)
    verse_labels.CopyInformation(class_labels)
    crops = extract_vertebra_crops(ct, verse_labels, task["crop_plan"])
    if not crops:
        raise InputError(f"{task['label']}: the label mask of case {case_id} is empty (no vertebra)")
    _check_graded_labels_present(case_id, task["graded_labels"], [c.label for c in crops], task["label"])

    storage_dtype = np.dtype(task["crop_plan"].get("storage_dtype", "float16"))
    rows = []
    for crop in crops:
        file_name = f"{case_id}_{crop.label:02d}.npy"
        atomic_save_npy(folder / file_name, crop.data.astype(storage_dtype))
        rows.append({"label": crop.label, "name": crop.name, "truncated": crop.truncated,
                     "bbox": json.dumps([list(b) for b in crop.bbox_index]),
                     "crop_spacing_mm": round(crop.spacing_mm[0], 6), "shape": json.dumps(list(crop.shape)),
                     "file": file_name, "centroid_mm": json.dumps([round(v, 3) for v in crop.centroid_mm]),
                     "voxel_count": crop.voxel_count})
    record_file = _record_file(folder, case_id)
    old_files = set()
    if record_file.is_file():
        try:
            old_files = {crop["file"] for crop in json.loads(record_file.read_text()).get("crops", [])}
        except (json.JSONDecodeError, TypeError, KeyError):
            pass
    record = {"case_id": case_id, "plan_hash": task["plan_hash"], "inputs": inputs, "crops": rows}
    atomic_write_json(record_file, record)
    for stale in old_files - {row["file"] for row in rows}:
        (folder / stale).unlink(missing_ok=True)
    return record


def _index_table(records: list[dict], grades: pd.DataFrame, folds: dict[str, int]) -> pd.DataFrame:
    rows = [{"case_id": record["case_id"], **crop, "plan_hash": record["plan_hash"]}
            for record in records for crop in record["crops"]]
    table = pd.DataFrame(rows)
    table = table.merge(grades[["case_id", "label", "grade"]], on=["case_id", "label"], how="left")
    table["grade"] = table["grade"].astype("Int64")
    table["fold"] = pd.array([folds.get(case_id) for case_id in table["case_id"]], dtype="Int64")
    return table[list(INDEX_COLUMNS)]
