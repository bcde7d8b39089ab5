"""VerSe 2019 / 2020 (the restructured "complete" release, BIDS-like) -> ``nnUNet_raw/Dataset502_VerSe``.

Input layout (one or more roots; split folders optional, any of ``training``/``validation``/``test``,
``01_training``/``02_validation``/``03_test``, ``dataset-verse19test``...):

    ROOT/[SPLIT/]rawdata/sub-verse004/sub-verse004_ct.nii.gz
    ROOT/[SPLIT/]derivatives/sub-verse004/sub-verse004_seg-vert_msk.nii.gz
    ROOT/[SPLIT/]derivatives/sub-verse004/sub-verse004_seg-subreg_ctd.json
    (VerSe 2020 / split scans: sub-gl003_dir-ax_ct.nii.gz, sub-verse401_split-verse253_ct.nii.gz, ...)

Case id = the scan's file stem without ``sub-`` (``verse004``, ``gl003_dir-ax``, ``verse401_split-verse253``);
subject = the ``sub-*`` folder. Scans of a ``test`` split go to imagesTs/labelsTs, all others to imagesTr/labelsTr.

Centroids: VerSe's ``*_ctd.json`` starts with ``{"direction": ["P", "I", "R"]}`` (nibabel axis codes: the direction
in which each voxel axis grows) followed by ``{"label", "X", "Y", "Z"}`` in voxel coordinates of the scan reoriented
(axes permuted and flipped, spacing unchanged) to those codes. They are mapped back to the scan's own voxel grid
(a flipped axis of n voxels maps c to n - 1 - c) and to world coordinates with SimpleITK (LPS, mm).

Grades: a CSV ``subject,label,grade[,fracture_type]`` (see :func:`read_grade_sheet`).
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from vfscreen import labels, paths
from vfscreen.conversion.common import (CERVICAL_VERSE_IDS, ProblemLog, SourceCase, build_raw_dataset,
                                        converter_parser, local_files, output_folder, summary_text)
from vfscreen.core.cli import command
from vfscreen.errors import ConfigError, InputError

DATASET_NAME = "VerSe"
DEFAULT_DATASET_ID = 502
CT_SUFFIXES = ("_ct.nii.gz", "_ct.nii")
MASK_SUFFIXES = ("_seg-vert_msk.nii.gz", "_seg-vert_msk.nii")
CENTROID_SUFFIX = "_seg-subreg_ctd.json"
# world unit vector (LPS) of each nibabel/SimpleITK axis code: the direction in which the voxel index grows
_AXIS_CODE_VECTORS = {"L": (1, 0, 0), "R": (-1, 0, 0), "P": (0, 1, 0), "A": (0, -1, 0), "S": (0, 0, 1),
                      "I": (0, 0, -1)}
GRADE_SHEET_COLUMNS = {  # accepted spellings (lower case) of the grade sheet's columns
    "subject": ("subject", "sub", "subject_id", "case", "case_id", "id", "scan"),
    "label": ("label", "vertebra", "level", "verse_id"),
    "grade": ("grade", "genant", "genant_grade", "fx-g", "fx_grade", "fracture_grade"),
    "fracture_type": ("fracture_type", "type", "fx-t", "fx_type", "morphology"),
}


@dataclass
class VerseScan:
    stem: str  # file stem without the _ct suffix, e.g. "sub-gl003_dir-ax"
    subject: str  # e.g. "gl003"
    split: str  # "Tr" or "Ts"
    split_folder: str  # the split folder's name ("" without split folders)
    ct_path: Path
    mask_path: Path | None
    centroid_path: Path | None

    @property
    def case_id(self) -> str:
        return self.stem[4:] if self.stem.startswith("sub-") else self.stem

    @property
    def description(self) -> str:
        return str(self.ct_path)


def split_of_folder(folder_name: str) -> str:
    """'Ts' for a VerSe test split folder (``test``, ``03_test``, ``dataset-verse19test``), else 'Tr'."""
    return "Ts" if "test" in folder_name.lower() else "Tr"


def find_scans(roots: list[Path], problems: ProblemLog) -> list[VerseScan]:
    """Every ``rawdata/**/*_ct.nii.gz`` under the roots (split folders up to two levels deep), with its files."""
    scans = []
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            raise ConfigError(f"{root}: VerSe folder does not exist")
        rawdata_folders = sorted({p for pattern in ("rawdata", "*/rawdata", "*/*/rawdata") for p in root.glob(pattern)
                                  if p.is_dir()}, key=lambda p: (split_of_folder(p.parent.name) == "Ts", str(p)))
        if not rawdata_folders:
            raise ConfigError(f"{root}: no 'rawdata' folder found (expected ROOT/rawdata or ROOT/<split>/rawdata, "
                              "as in the VerSe download)")
        for rawdata in rawdata_folders:
            split_folder = rawdata.parent.name  # the root itself when it is a split (e.g. dataset-verse19test)
            derivatives = rawdata.parent / "derivatives"
            for ct_path in sorted(p for p in rawdata.rglob("*") if p.name.endswith(CT_SUFFIXES)):
                stem = _strip_suffix(ct_path.name, CT_SUFFIXES)
                subject_folder = ct_path.parent.name if ct_path.parent != rawdata else stem.split("_")[0]
                subject = subject_folder[4:] if subject_folder.startswith("sub-") else subject_folder
                mask_path = _first_existing(derivatives / subject_folder / f"{stem}{s}" for s in MASK_SUFFIXES) \
                    or _first_existing(derivatives / f"{stem}{s}" for s in MASK_SUFFIXES)
                centroid_path = _first_existing([derivatives / subject_folder / f"{stem}{CENTROID_SUFFIX}",
                                                 derivatives / f"{stem}{CENTROID_SUFFIX}"])
                scans.append(VerseScan(stem, subject, split_of_folder(split_folder), split_folder, ct_path,
                                       mask_path, centroid_path))
    return scans


def _strip_suffix(name: str, suffixes) -> str:
    for suffix in suffixes:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _first_existing(paths) -> Path | None:
    return next((p for p in paths if p.is_file()), None)


def centroids_to_world(centroid_file: Path, image) -> dict[int, list[float]]:
    """Read a VerSe ``*_ctd.json`` and return VerSe id -> world point (LPS, mm) on ``image``'s grid."""
    try:
        entries = json.loads(Path(centroid_file).read_text())
        axis_codes = [str(c).upper() for c in entries[0]["direction"]]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as error:
        raise InputError(f"{centroid_file}: not a VerSe centroid file ({error})") from None
    if len(axis_codes) != 3 or any(c not in _AXIS_CODE_VECTORS for c in axis_codes):
        raise InputError(f"{centroid_file}: direction {axis_codes} is not three axis codes like ['P', 'I', 'R']")
    direction = np.array(image.GetDirection()).reshape(3, 3)  # columns: world direction of each voxel axis
    size = image.GetSize()
    image_axis, sign = [], []
    for code in axis_codes:
        projections = direction.T @ np.array(_AXIS_CODE_VECTORS[code], dtype=float)  # per image axis
        axis = int(np.argmax(np.abs(projections)))
        image_axis.append(axis)
        sign.append(1 if projections[axis] > 0 else -1)
    if sorted(image_axis) != [0, 1, 2]:
        raise InputError(f"{centroid_file}: direction {axis_codes} does not name three different axes of the image "
                         f"(image orientation {image.GetDirection()})")
    world = {}
    for entry in entries[1:]:
        try:
            verse_id = int(entry["label"])
            coordinates = [float(entry[key]) for key in ("X", "Y", "Z")]
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{centroid_file}: entry {entry} is not {{'label', 'X', 'Y', 'Z'}}") from None
        if not labels.is_vertebra(verse_id) or not all(np.isfinite(coordinates)):
            continue  # sacrum/coccyx/subregion centroids and VerSe's NaN placeholders
        index = [0.0, 0.0, 0.0]
        for coordinate, axis, axis_sign in zip(coordinates, image_axis, sign):
            index[axis] = coordinate if axis_sign > 0 else (size[axis] - 1) - coordinate
        world[verse_id] = list(image.TransformContinuousIndexToPhysicalPoint(index))
    return world


def _find_column(table: pd.DataFrame, role: str, path: Path, required: bool = True) -> str | None:
    lowered = {str(c).strip().lower(): c for c in table.columns}
    for spelling in GRADE_SHEET_COLUMNS[role]:
        if spelling in lowered:
            return lowered[spelling]
    if required:
        raise InputError(f"{path}: no '{role}' column (found {list(table.columns)}; expected columns "
                         "subject,label,grade[,fracture_type])")
    return None


def _vertebra_columns(table: pd.DataFrame, subject_column: str) -> list[str]:
    columns = []
    for column in table.columns:
        try:
            if column != subject_column and not str(column).strip().isdigit():
                labels.parse_vertebra(column)
                columns.append(column)
        except ValueError:
            pass
    return columns


def scan_aliases(scans: list[VerseScan]) -> dict[str, list[VerseScan]]:
    """Lower-case names a grade sheet may use for a scan: its stem, case id, subject (with or without 'sub-'), the
    VerSe 2019 'split-' entity (the old challenge id)."""
    aliases: dict[str, list[VerseScan]] = {}
    for scan in scans:
        names = {scan.stem, scan.case_id, scan.subject, f"sub-{scan.subject}"}
        names.update(re.findall(r"split-([A-Za-z0-9]+)", scan.stem))
        for name in names:
            aliases.setdefault(name.lower(), []).append(scan)
    return aliases


def read_grade_sheet(path: Path, scans: list[VerseScan], problems: ProblemLog
                     ) -> dict[str, dict[int, tuple[int, str | None]]]:
    """Grades per case id from ``subject,label,grade[,fracture_type]``.

    subject: as in the file names (``sub-verse004``, ``verse004``, ``gl003_dir-ax``, or the old challenge id
    ``verse253`` of a ``split-verse253`` scan); label: VerSe id or name (``20``, ``L1``); grade: Genant 0-3 (an empty
    grade = not graded). Also accepted: a wide sheet with one row per subject and one column per vertebra name
    (``subject,T11,T12,L1,...``). Bad rows are reported one by one and skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: grade sheet does not exist")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, sep=None, engine="python")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"{path}: not a readable CSV ({error})") from None
    subject_column = _find_column(table, "subject", path)
    records = [(line, row) for line, row in enumerate(table.to_dict("records"), start=2)]
    wide_columns = _vertebra_columns(table, subject_column)
    if _find_column(table, "label", path, required=False) is None and wide_columns:
        # wide sheet: one row per subject, one column per vertebra (C1 ... L6, T13), empty cell = not graded
        label_column, grade_column, type_column = "label", "grade", None
        records = [(line, {subject_column: row[subject_column], "label": column, "grade": row[column]})
                   for line, row in records for column in wide_columns]
    else:
        label_column, grade_column = _find_column(table, "label", path), _find_column(table, "grade", path)
        type_column = _find_column(table, "fracture_type", path, required=False)
    aliases = scan_aliases(scans)
    grades: dict[str, dict[int, tuple[int, str | None]]] = {}
    unknown_subjects: dict[str, int] = {}
    for line, row in records:
        where = f"{path.name}, line {line}"
        subject, grade_text = str(row[subject_column]).strip(), str(row[grade_column]).strip()
        if not subject or not grade_text or grade_text.lower() in ("nan", "na", "-"):
            continue  # empty row or vertebra without a grade
        matches = aliases.get(subject.lower(), [])
        if not matches:
            unknown_subjects[subject] = unknown_subjects.get(subject, line)
            continue
        if len({scan.case_id for scan in matches}) > 1:
            problems.skip(where, f"subject {subject!r} has several scans ({', '.join(s.case_id for s in matches)}); "
                                 "name the scan (e.g. its file stem)")
            continue
        try:
            verse_id = labels.parse_vertebra(row[label_column])
        except ValueError as error:
            problems.skip(where, str(error))
            continue
        try:
            grade = float(grade_text)
            if not grade.is_integer() or int(grade) not in (0, 1, 2, 3):
                raise ValueError
        except ValueError:
            problems.skip(where, f"grade {grade_text!r} of {subject} {row[label_column]} is not a Genant grade 0-3 "
                                 "-> row")
            continue
        case_grades = grades.setdefault(matches[0].case_id, {})
        if verse_id in case_grades:
            problems.skip(where, f"{subject} {labels.name_of(verse_id)} is graded twice; the first grade is kept")
            continue
        fracture_type = str(row[type_column]).strip() if type_column else ""
        case_grades[verse_id] = (int(grade), fracture_type or None)
    for subject, line in unknown_subjects.items():
        problems.skip(f"{path.name}, line {line}", f"subject {subject!r} does not exist in the VerSe folder(s); "
                                                   "all its rows")
    return grades


def read_exclusions(text: str | None, scans: list[VerseScan], problems: ProblemLog) -> dict[str, set[int] | None]:
    """``--exclude_implants``: a file (one ``subject[,label]`` per line) or a comma-separated list of ``subject`` or
    ``subject:label`` items. Returns case id -> excluded VerSe ids (None = the whole case)."""
    if not text:
        return {}
    if not Path(text).is_file() and re.search(r"\.(csv|txt|tsv)$", text, re.IGNORECASE):
        raise ConfigError(f"--exclude_implants {text}: file does not exist")
    if Path(text).is_file():
        items = []
        for line in Path(text).read_text().splitlines():
            fields = [f.strip() for f in re.split(r"[,;\t]", line.split("#")[0]) if f.strip()]
            if fields and fields[0].lower() not in GRADE_SHEET_COLUMNS["subject"]:
                items.append(fields[:2])
    else:
        items = [[f.strip() for f in item.split(":", 1)] for item in text.split(",") if item.strip()]
    aliases = scan_aliases(scans)
    excluded: dict[str, set[int] | None] = {}
    for fields in items:
        matches = aliases.get(fields[0].lower(), [])
        if not matches:
            problems.problem(f"--exclude_implants: subject {fields[0]!r} does not exist in the VerSe folder(s)")
            continue
        if len(fields) < 2 or not fields[1]:
            for scan in matches:
                excluded[scan.case_id] = None
            continue
        try:
            verse_id = labels.parse_vertebra(fields[1])
        except ValueError as error:
            problems.problem(f"--exclude_implants: {fields[0]}: {error}")
            continue
        for scan in matches:
            if excluded.get(scan.case_id, set()) is not None:
                excluded.setdefault(scan.case_id, set()).add(verse_id)
    return excluded


def convert_verse(roots: list[Path], grade_sheet: Path, dataset_id: int = DEFAULT_DATASET_ID,
                  exclude_implants: str | None = None, drop_cervical: bool = False, overwrite: bool = False,
                  raw_root: Path | None = None, verify: bool = True, progress: bool = True):
    """Convert VerSe folder(s) into ``raw_root/DatasetXXX_VerSe``. Returns (folder, written cases, problems)."""
    final_folder = output_folder(Path(raw_root) if raw_root else paths.nnUNet_raw, dataset_id, DATASET_NAME)
    if final_folder.exists() and any(final_folder.iterdir()) and not overwrite:
        raise ConfigError(f"{final_folder} exists and is not empty (use --overwrite to replace it)")
    problems = ProblemLog()
    scans = find_scans([Path(r) for r in roots], problems)
    if not scans:
        raise InputError(f"no VerSe CT (rawdata/sub-*/*_ct.nii.gz) found under {', '.join(map(str, roots))}")
    grades = read_grade_sheet(Path(grade_sheet), scans, problems)
    excluded = read_exclusions(exclude_implants, scans, problems)
    sources = []
    for scan in scans:
        if scan.mask_path is None:
            problems.skip(f"case {scan.case_id}", f"{scan.ct_path}: no vertebra mask "
                                                  f"(derivatives/.../{scan.stem}_seg-vert_msk.nii.gz)")
            continue
        not_graded: dict[int | None, str] = {}
        if drop_cervical:
            not_graded.update({v: "cervical (--drop_cervical)" for v in CERVICAL_VERSE_IDS})
        if scan.case_id in excluded:
            if excluded[scan.case_id] is None:
                not_graded[None] = "implant (--exclude_implants)"
            else:
                not_graded.update({v: "implant (--exclude_implants)" for v in excluded[scan.case_id]})
        centroid_path = scan.centroid_path
        sources.append(SourceCase(
            case_id=scan.case_id, subject=scan.subject, split=scan.split, description=scan.description,
            files=local_files(scan.ct_path, scan.mask_path), grades=grades.get(scan.case_id, {}),
            not_graded=not_graded, centroid_source="verse_ctd_json",
            centroids=(lambda image, path=centroid_path: centroids_to_world(path, image)) if centroid_path else None))
    written = build_raw_dataset(
        final_folder, sources, problems, overwrite=overwrite, verify=verify, progress=progress,
        description="VerSe 2019/2020 (Sekuboyina et al. 2021) with Genant grades (Loeffler et al. 2020), converted "
                    "by vfscreen; sacrum/coccyx set to background; test split -> imagesTs",
        dataset_json_extra={"source": "VerSe", "drop_cervical_grades": drop_cervical}, licence="CC BY-SA 4.0",
        reference="Sekuboyina et al., Med Image Anal 2021 (VerSe); Loeffler et al., Radiol Artif Intell 2020 (grades); "
                  "https://github.com/anjany/verse")
    return final_folder, written, problems


def build_parser() -> argparse.ArgumentParser:
    parser = converter_parser("Dataset502_VerSe.py",
                              "Convert VerSe 2019/2020 (+ a Genant grade sheet) into nnUNet_raw/Dataset502_VerSe.",
                              DEFAULT_DATASET_ID, "dataset id (default 502)",
                              "do not grade C1-C7 (they stay in the segmentation masks)")
    parser.add_argument("-i", "--input", nargs="+", required=True, type=Path, metavar="VERSE_ROOT",
                        help="VerSe folder(s): each holds rawdata/ + derivatives/, or split folders that do "
                             "(training/validation/test, 01_training/...). Test splits go to imagesTs.")
    parser.add_argument("--grades", required=True, type=Path, metavar="GRADES_CSV",
                        help="CSV with columns subject,label,grade[,fracture_type]; label = VerSe id or name "
                             "(L1, T12); grade = Genant 0-3. Vertebrae without a grade are not graded.")
    parser.add_argument("--exclude_implants", "--exclude-implants", metavar="LIST",
                        help="vertebrae with implants, not graded: a file with 'subject[,label]' lines or "
                             "'subject:label,subject,...' (a subject alone = all its vertebrae)")
    return parser


@command(build_parser)
def main(args: argparse.Namespace) -> int:
    folder, written, problems = convert_verse(args.input, args.grades, args.dataset_id, args.exclude_implants,
                                              args.drop_cervical, args.overwrite)
    print(summary_text(folder, written, problems))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
