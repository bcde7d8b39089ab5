"""Reading what evaluation compares: reference label masks + grades, prediction outputs (contract 5) and the grader
folds' validation predictions (contract 4). Every problem raises ConfigError/InputError naming the file.

Reference folder (``vfscreen_evaluate -ref REFERENCE``):
- a raw dataset folder (has ``labelsTr/`` and/or ``labelsTs/``): masks of ``labelsTs/`` when it holds masks, else of
  ``labelsTr/`` (``split`` chooses: "Tr", "Ts" or "all"); ``grades.csv`` of the dataset folder;
- any other folder: the masks ``<case>.nii.gz`` directly in it (files named ``*_0000.nii.gz`` are images and are
  skipped); ``grades.csv`` in the folder, else in its parent (so ``-ref .../labelsTs`` works).
Label ids of the masks: nnU-Net class ids when the dataset folder (the folder, or its parent for a ``labels*``
folder) has a ``dataset.json`` with a ``"vfscreen"`` entry - the vfscreen raw format -, else VerSe ids (1-25, 28;
sacrum 26 and coccyx 27 are not graded vertebrae and are ignored). Grades of cases without a reference mask are not
part of the evaluation (a raw dataset's grades.csv covers training and test cases).

Truncated vertebrae: a reference vertebra marked ``truncated`` in grades.csv (cut by the field of view) that the
method did not grade (not graded, or not found) is excluded from the grading metrics and listed - vfscreen does not
grade vertebrae it cannot see whole when its plan says so; one it did grade is evaluated. ``include_truncated``
counts them against the method instead. Segmentation metrics always include every reference vertebra.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from vfscreen import labels
from vfscreen.dataset import FILE_ENDING, GRADES_FILE, read_grades
from vfscreen.errors import ConfigError, InputError
from vfscreen.utils.image_io import read_image

NON_VERTEBRA_VERSE_IDS = (26, 27)  # sacrum, coccyx
IMAGE_SUFFIX = "_0000" + FILE_ENDING
PROBABILITY_TOLERANCE = 1e-3


@dataclass
class Reference:
    masks: dict[str, Path]  # case id -> mask file
    class_ids: bool  # True: masks hold nnU-Net class ids; False: VerSe ids
    grades: pd.DataFrame  # case_id, label (VerSe id), grade of the cases that have a mask
    grades_path: Path
    ignored_grade_cases: list[str] = field(default_factory=list)


def masks_use_class_ids(folder: Path) -> bool:
    """True when ``folder`` has a dataset.json with a "vfscreen" entry (masks in nnU-Net class ids)."""
    path = folder / "dataset.json"
    if not path.is_file():
        return False
    try:
        return "vfscreen" in json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not valid JSON ({error})") from None


def _masks_in(folder: Path) -> dict[str, Path]:
    return {p.name[: -len(FILE_ENDING)]: p for p in sorted(folder.glob("*" + FILE_ENDING))
            if not p.name.endswith(IMAGE_SUFFIX)}


def load_reference(reference: str | Path, split: str | None = None) -> Reference:
    reference = Path(reference)
    if not reference.is_dir():
        raise ConfigError(f"{reference}: reference folder does not exist (give a raw dataset folder or a folder of "
                          "label masks <case>.nii.gz with a grades.csv)")
    if split not in (None, "Tr", "Ts", "all"):
        raise ConfigError(f"split {split!r}: expected Tr, Ts or all")
    is_dataset = (reference / "labelsTr").is_dir() or (reference / "labelsTs").is_dir()
    if is_dataset:
        chosen = split or ("Ts" if _masks_in(reference / "labelsTs") else "Tr")
        masks = {}
        for part in (("Tr", "Ts") if chosen == "all" else (chosen,)):
            for case_id, path in _masks_in(reference / f"labels{part}").items():
                if case_id in masks:
                    raise InputError(f"{path}: case {case_id} is in both labelsTr and labelsTs")
                masks[case_id] = path
        grades_path, dataset_folder = reference / GRADES_FILE, reference
    else:
        masks = _masks_in(reference)
        grades_path = reference / GRADES_FILE
        if not grades_path.is_file() and (reference.parent / GRADES_FILE).is_file():
            grades_path = reference.parent / GRADES_FILE
        dataset_folder = reference.parent if reference.name.startswith("labels") else reference
    if not masks:
        raise ConfigError(f"{reference}: no label masks (*{FILE_ENDING}) found"
                          + (f" in labels{split or 'Ts/labelsTr'}" if is_dataset else ""))
    grades = read_grades(grades_path)
    grades["reference_truncated"] = truncated_flags(grades)
    in_reference = grades["case_id"].isin(masks.keys())
    return Reference(masks=masks, class_ids=masks_use_class_ids(dataset_folder),
                     grades=grades[in_reference].reset_index(drop=True), grades_path=grades_path,
                     ignored_grade_cases=sorted(set(grades.loc[~in_reference, "case_id"])))


def truncated_flags(grades: pd.DataFrame) -> pd.Series:
    """grades.csv's optional ``truncated`` column (True/False, 1/0, yes/no) as booleans; False when absent."""
    if "truncated" not in grades.columns:
        return pd.Series(False, index=grades.index)
    return grades["truncated"].astype(str).str.strip().str.lower().isin(("1", "true", "yes"))


def read_reference_mask(path: Path, class_ids: bool) -> sitk.Image:
    """The mask as a VerSe-id label image (same geometry as the file)."""
    image = read_image(path, "reference mask")
    array = sitk.GetArrayFromImage(image)
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise InputError(f"{path}: label mask has non-integer values")
    array = array.astype(np.int64)
    try:
        if class_ids:
            verse = labels.class_to_verse(array)
        else:
            array[np.isin(array, NON_VERTEBRA_VERSE_IDS)] = 0
            labels.verse_to_class(array)  # validates
            verse = array.astype(np.uint8)
    except ValueError as error:
        convention = "nnU-Net class ids (dataset.json has a vfscreen entry)" if class_ids else "VerSe ids"
        raise InputError(f"{path}: {error} (expected {convention})") from None
    out = sitk.GetImageFromArray(verse.astype(np.uint8))
    out.CopyInformation(image)
    return out


# ---------------------------------------------------------------------------------------------------------------
# prediction outputs (contract 5)
# ---------------------------------------------------------------------------------------------------------------

def _probabilities(values, source) -> np.ndarray:
    try:
        probabilities = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise InputError(f"{source}: probabilities {values!r} are not numbers") from None
    if probabilities.shape != (4,) or not np.all(np.isfinite(probabilities)) or probabilities.min() < 0 \
            or abs(probabilities.sum() - 1.0) > PROBABILITY_TOLERANCE:
        raise InputError(f"{source}: probabilities must be 4 finite non-negative numbers summing to 1, got {values!r}")
    return probabilities


def _optional_float(value, source, name) -> float:
    if value is None:
        return float("nan")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InputError(f"{source}: {name} {value!r} is not a number") from None


def parse_prediction_vertebra(record: dict, source: str) -> dict:
    """One vertebra of a prediction JSON as a flat dict with label (VerSe id), graded (False when the grader did not
    grade it: probabilities null, e.g. cut by the field of view), probabilities (4,) or None, predicted_grade or None,
    p_fracture (NaN if not graded), genant_ratio (NaN if not measured), morph_grade (NaN), centroid_mm ((3,) or
    None), level_uncertain (the prediction's own flag that its name may be off by whole levels; False if absent)."""
    if not isinstance(record, dict) or "label" not in record:
        raise InputError(f"{source}: every vertebra needs a \"label\"")
    try:
        label = labels.parse_vertebra(record["label"])
    except ValueError as error:
        raise InputError(f"{source}: {error}") from None
    where = f"{source}, vertebra {labels.name_of(label)}"
    if "probabilities" not in record:
        raise InputError(f"{where}: \"probabilities\" missing (null for a vertebra that was not graded)")
    graded = record["probabilities"] is not None
    probabilities, predicted_grade, p_fracture = None, None, float("nan")
    if graded:
        probabilities = _probabilities(record["probabilities"], where)
        grade = record.get("grade")
        predicted_grade = int(np.argmax(probabilities)) if grade is None else \
            int(_optional_float(grade, where, "grade"))
        if predicted_grade not in (0, 1, 2, 3):
            raise InputError(f"{where}: grade {grade!r} is outside 0-3")
        p_fracture = record.get("p_fracture")
        p_fracture = 1.0 - probabilities[0] if p_fracture is None else \
            _optional_float(p_fracture, where, "p_fracture")
    centroid = record.get("centroid_mm")
    if centroid is not None:
        centroid = np.asarray([_optional_float(c, where, "centroid_mm") for c in centroid], dtype=float)
        if centroid.shape != (3,) or not np.all(np.isfinite(centroid)):
            raise InputError(f"{where}: centroid_mm must be 3 finite numbers")
    return {"label": label, "graded": graded, "probabilities": probabilities, "predicted_grade": predicted_grade,
            "p_fracture": p_fracture,
            "genant_ratio": _optional_float(record.get("genant_ratio"), where, "genant_ratio"),
            "morph_grade": _optional_float(record.get("morph_grade"), where, "morph_grade"),
            "centroid_mm": centroid, "level_uncertain": record.get("level_uncertain") is True}


@dataclass
class PredictionCase:
    case_id: str
    json_path: Path
    vertebrae: dict[int, dict]  # VerSe id -> parsed vertebra
    segmentation: Path | None
    model: dict


def load_prediction_folder(folder: str | Path) -> tuple[dict[str, PredictionCase], dict[str, str]]:
    """Prediction cases of an output folder (``<case>.json`` with "case_id" and "vertebrae"; other JSON files such
    as metrics.json are skipped) and {case: message} of ``errors.csv`` (cases whose prediction failed)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder}: prediction folder does not exist")
    cases = {}
    for path in sorted(folder.glob("*.json")):
        try:
            content = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise InputError(f"{path}: not valid JSON ({error})") from None
        if not isinstance(content, dict) or "vertebrae" not in content or "case_id" not in content:
            continue
        case_id = str(content["case_id"])
        if path.name != f"{case_id}.json":
            raise InputError(f"{path}: holds case_id {case_id!r}; a prediction file must be named <case_id>.json")
        if not isinstance(content["vertebrae"], list):
            raise InputError(f"{path}: \"vertebrae\" must be a list")
        vertebrae = {}
        for record in content["vertebrae"]:
            parsed = parse_prediction_vertebra(record, str(path))
            if parsed["label"] in vertebrae:
                raise InputError(f"{path}: vertebra {labels.name_of(parsed['label'])} appears twice")
            vertebrae[parsed["label"]] = parsed
        segmentation = folder / f"{case_id}_seg{FILE_ENDING}"
        cases[case_id] = PredictionCase(case_id, path, vertebrae, segmentation if segmentation.is_file() else None,
                                        content.get("model") if isinstance(content.get("model"), dict) else {})
    failed = {}
    errors_csv = folder / "errors.csv"
    if errors_csv.is_file():
        try:
            errors = pd.read_csv(errors_csv, dtype=str).fillna("")
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
            errors = pd.DataFrame()
        if "case_id" in errors.columns:
            message_column = next((c for c in errors.columns if c != "case_id"), None)
            failed = {row["case_id"]: (row[message_column] if message_column else "") for _, row in errors.iterrows()}
    return cases, failed


def read_prediction_segmentation(path: Path) -> sitk.Image:
    """A predicted ``<case>_seg.nii.gz`` (VerSe ids) validated to hold vertebra ids only."""
    image = read_image(path, "predicted segmentation")
    array = sitk.GetArrayFromImage(image).astype(np.int64)
    try:
        labels.verse_to_class(array)
    except ValueError as error:
        raise InputError(f"{path}: {error}") from None
    return image


# ---------------------------------------------------------------------------------------------------------------
# grader validation predictions (contract 4): fold_k/validation/predictions.csv
# ---------------------------------------------------------------------------------------------------------------

# Accepted spellings (case-insensitive); the grader writes case_id,label,name,grade,predicted_grade,p_G0..p_G3,
# p_fracture,truncated; genant_ratio and morph_grade are optional (evaluation measures them on the reference masks
# when they are absent).
_TRUE_GRADE_COLUMNS = ("grade", "true_grade", "grade_true", "target")
_PREDICTED_GRADE_COLUMNS = ("predicted_grade", "pred_grade", "grade_pred", "prediction")
_PROBABILITY_PREFIXES = ("p_g", "prob_g", "probability_g", "p_", "prob_", "probability_", "p")


def read_validation_predictions(path: Path, fold: int) -> pd.DataFrame:
    """One fold's predictions.csv as columns case_id, label, fold, file_grade (NaN if absent), predicted_grade,
    p_g0..p_g3, p_fracture, genant_ratio (NaN if absent), morph_grade (NaN if absent)."""
    try:
        table = pd.read_csv(path, dtype={"case_id": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not a readable CSV ({error})") from None
    for column in ("case_id", "label"):
        if column not in table.columns:
            raise InputError(f"{path}: column {column!r} missing")
    table.columns = [str(c).strip().lower() for c in table.columns]  # p_G0 and p_g0 alike
    prefix = next((p for p in _PROBABILITY_PREFIXES if all(f"{p}{g}" in table.columns for g in range(4))), None)
    if prefix is None and "probabilities" in table.columns:
        probabilities = np.asarray([_probabilities(json.loads(v), f"{path}, row {i + 2}")
                                    for i, v in enumerate(table["probabilities"])], dtype=float).reshape(-1, 4)
    elif prefix is not None:
        probabilities = table[[f"{prefix}{g}" for g in range(4)]].to_numpy(dtype=float)
        for row_number, row in enumerate(probabilities, start=2):
            _probabilities(row, f"{path}, line {row_number}")
    else:
        raise InputError(f"{path}: no class probabilities (expected columns p_g0,p_g1,p_g2,p_g3)")
    try:
        label_ids = [labels.parse_vertebra(v) for v in table["label"]]
    except ValueError as error:
        raise InputError(f"{path}: {error}") from None
    out = pd.DataFrame({"case_id": table["case_id"].astype(str), "label": label_ids, "fold": int(fold)})
    for g in range(4):
        out[f"p_g{g}"] = probabilities[:, g]
    predicted_column = next((c for c in _PREDICTED_GRADE_COLUMNS if c in table.columns), None)
    out["predicted_grade"] = (table[predicted_column].to_numpy(dtype=int) if predicted_column
                              else probabilities.argmax(axis=1))
    out["p_fracture"] = (table["p_fracture"].to_numpy(dtype=float) if "p_fracture" in table.columns
                         else 1.0 - probabilities[:, 0])
    true_column = next((c for c in _TRUE_GRADE_COLUMNS if c in table.columns), None)
    out["file_grade"] = table[true_column].to_numpy(dtype=float) if true_column else np.nan
    for column in ("genant_ratio", "morph_grade"):
        out[column] = pd.to_numeric(table[column], errors="coerce") if column in table.columns else np.nan
    duplicated = out.duplicated(["case_id", "label"])
    if duplicated.any():
        first = out[duplicated].iloc[0]
        raise InputError(f"{path}: vertebra {labels.name_of(first.label)} of case {first.case_id} appears twice")
    return out
