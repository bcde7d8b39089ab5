"""vfscreen's raw dataset format = nnU-Net's raw format + ``grades.csv``.

    nnUNet_raw/DatasetXXX_Name/
        imagesTr/<case>_0000.nii.gz   CT in HU (any orientation, any spacing)
        labelsTr/<case>.nii.gz        vertebra masks in nnU-Net class ids (see vfscreen.labels)
        imagesTs/, labelsTs/          held-out test cases, same layout (optional)
        dataset.json                  nnU-Net's dataset.json + "vfscreen": {"verse_ids": {class id: VerSe id}, ...}
        grades.csv                    case_id,label,grade[,anterior_mm,middle_mm,posterior_mm,morphology,truncated,...]
                                      label = VerSe id, grade = Genant grade 0-3

Label masks use nnU-Net's consecutive class ids on disk (nnU-Net requires them); ``grades.csv`` and every vfscreen
output speak VerSe ids. The mapping is the fixed table of :mod:`vfscreen.labels`.
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from vfscreen import labels, paths
from vfscreen.errors import ConfigError, InputError

paths.export_for_nnunet()  # nnunetv2 (imported below, on use) reads its folders once, at import

GRADES_FILE = "grades.csv"
GRADES_REQUIRED_COLUMNS = ("case_id", "label", "grade")
FILE_ENDING = ".nii.gz"
CHANNEL_SUFFIX = "_0000"
# nnunetv2's own reader that reorients every image to the closest canonical orientation (RAS) on read and back on
# write: the segmentation network then sees one anatomical axis layout whatever orientation a scanner stored.
# Prediction reorients with SimpleITK to the same layout (SEGMENTATION_ORIENTATION; tests/test_orientation.py
# checks that both give identical arrays).
NNUNET_READER_WRITER = "NibabelIOWithReorient"
SEGMENTATION_ORIENTATION = "RAS"


def resolve_dataset_name(dataset: str | int) -> str:
    """'501', 501 or 'Dataset501_SyntheticSpine' -> 'Dataset501_SyntheticSpine' (searched like nnU-Net does)."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    text = str(dataset).strip()
    if not re.fullmatch(r"\d+|Dataset\d{3}_\w+", text):
        raise ConfigError(f"{dataset!r} is not a dataset id (e.g. 501) or name (e.g. Dataset501_SyntheticSpine)")
    try:
        return str(maybe_convert_to_dataset_name(int(text) if text.isdigit() else text))  # nnunetv2 gives np.str_
    except RuntimeError as error:
        raise ConfigError(f"dataset {dataset} not found ({str(error).splitlines()[0]}); generate or convert it first, "
                          "e.g. python dataset_conversion/Dataset501_SyntheticSpine.py") from None


def dataset_id(dataset_name: str) -> int:
    """'Dataset501_SyntheticSpine' -> 501 (nnU-Net's naming: three digits after 'Dataset')."""
    match = re.fullmatch(r"Dataset(\d{3})_\w+", str(dataset_name))
    if match is None:
        raise ConfigError(f"{dataset_name!r} is not an nnU-Net dataset name (DatasetXXX_Name)")
    return int(match.group(1))


def raw_dataset_folder(dataset: str | int) -> Path:
    return paths.nnUNet_raw / resolve_dataset_name(dataset)


UNKNOWN_LICENCE = "unknown: see the terms of the source data"


def write_dataset_json(folder: Path, dataset_name: str, num_training_cases: int, description: str,
                       licence: str = UNKNOWN_LICENCE, reference: str | None = None, **extra) -> None:
    """nnU-Net's dataset.json (via nnunetv2's own generator) with vfscreen's label mapping added; ``licence`` and
    ``reference`` are the data's (nnU-Net's placeholders never reach the file), ``converted_by`` is vfscreen."""
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    generate_dataset_json(str(folder), channel_names={0: "CT"}, labels=labels.nnunet_labels_dict(),
                          num_training_cases=num_training_cases, file_ending=FILE_ENDING,
                          dataset_name=dataset_name, description=description,
                          overwrite_image_reader_writer=NNUNET_READER_WRITER, license=licence,
                          reference=reference, converted_by="vfscreen",
                          vfscreen={"verse_ids": labels.verse_ids_dict(), "landmark_classes": labels.LANDMARK_CLASSES,
                                    "grades_file": GRADES_FILE, **extra})


def read_csv_table(path: Path, required_columns, error=InputError, what: str = "CSV", hint: str = "") -> pd.DataFrame:
    """A CSV table (case ids as text) with ``required_columns``; ``error`` naming the file otherwise."""
    suffix = f"; {hint}" if hint else ""
    try:
        table = pd.read_csv(path, dtype={"case_id": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as problem:
        raise error(f"{path}: not a readable {what} ({problem}){suffix}") from None
    missing = [column for column in required_columns if column not in table.columns]
    if missing:
        raise error(f"{path}: missing column(s) {missing}{suffix}")
    return table


def read_grades(path: str | Path) -> pd.DataFrame:
    """Read and validate a ``grades.csv``. Raises InputError naming the file and row on any problem."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: grades file missing (columns: {', '.join(GRADES_REQUIRED_COLUMNS)})")
    table = read_csv_table(path, GRADES_REQUIRED_COLUMNS)
    for row_number, row in enumerate(table.itertuples(index=False), start=2):
        if not labels.is_vertebra(_as_int(row.label, path, row_number, "label")):
            raise InputError(f"{path}, line {row_number}: label {row.label} is not a VerSe vertebra id (1-25, 28)")
        if _as_int(row.grade, path, row_number, "grade") not in (0, 1, 2, 3):
            raise InputError(f"{path}, line {row_number}: grade {row.grade} is outside 0-3 (case {row.case_id})")
    table["label"] = table["label"].astype(int)
    table["grade"] = table["grade"].astype(int)
    duplicated = table.duplicated(["case_id", "label"])
    if duplicated.any():
        first = table[duplicated].iloc[0]
        raise InputError(f"{path}: vertebra {first.label} of case {first.case_id} is graded twice")
    return table


def _as_int(value, path, row_number, column) -> int:
    try:
        as_float = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{path}, line {row_number}: {column} {value!r} is not a number") from None
    if not as_float.is_integer():
        raise InputError(f"{path}, line {row_number}: {column} {value!r} is not an integer")
    return int(as_float)


def list_cases(dataset_folder: Path, split: str = "Tr") -> list[str]:
    """Case ids of ``imagesTr`` (split='Tr') or ``imagesTs`` (split='Ts'), sorted."""
    images = Path(dataset_folder) / f"images{split}"
    if not images.is_dir():
        return []
    suffix = CHANNEL_SUFFIX + FILE_ENDING
    return sorted(p.name[: -len(suffix)] for p in images.glob("*" + suffix))


def image_path(dataset_folder: Path, case_id: str, split: str = "Tr") -> Path:
    return Path(dataset_folder) / f"images{split}" / f"{case_id}{CHANNEL_SUFFIX}{FILE_ENDING}"


def label_path(dataset_folder: Path, case_id: str, split: str = "Tr") -> Path:
    return Path(dataset_folder) / f"labels{split}" / f"{case_id}{FILE_ENDING}"
