"""What every real-dataset converter shares: writing one case into vfscreen's raw format, collecting per-problem
messages, the summary, and building the output folder atomically (checked by nnU-Net's verify_dataset_integrity
before it appears under its final name).

Rules applied to every case (documented in the README, "Using real data"):
- the CT is written with its input's exact spacing, origin and direction; integer CTs keep their pixel type, float
  CTs are rounded to integer HU (int16, or int32 when the values do not fit);
- the mask is written in nnU-Net class ids (vfscreen.labels.verse_to_class) with the CT's exact geometry;
  sacrum (26) and coccyx (27) become background (vfscreen neither segments nor grades them); any other value that is
  not a VerSe vertebra id makes the case unusable;
- a grade is kept only for a vertebra present in the mask and not excluded; ungraded vertebrae stay in the mask
  (segmentation) and are absent from grades.csv (grading);
- ``centroids/<case>.json``: one centroid per vertebra in world coordinates (mm, the physical coordinates of
  SimpleITK = LPS: x grows to the patient's left, y to posterior, z to superior).
"""
from __future__ import annotations

import contextlib
import re
import shutil
import sys
import tempfile
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, ContextManager

import numpy as np
import pandas as pd
import SimpleITK as sitk

from vfscreen import labels, paths
from vfscreen.core.cli import CommandParser
from vfscreen.dataset import GRADES_FILE, UNKNOWN_LICENCE, image_path, label_path, write_dataset_json
from vfscreen.errors import ConfigError, InputError
from vfscreen.utils.atomic import atomic_directory, atomic_write_csv, atomic_write_image, atomic_write_json
from vfscreen.utils.image_io import check_case_id, check_ct_intensities, check_same_geometry, read_image
from vfscreen.utils.progress import progress_bar

paths.export_for_nnunet()  # nnunetv2 (imported on use, below) reads its folders once, at import

BACKGROUND_VERSE_IDS = {27: "coccyx"}
# kept as landmark classes of the label map (vfscreen.labels.LANDMARK_CLASSES); they anchor the naming, not graded
LANDMARK_VERSE_IDS = {labels.SACRUM_VERSE_ID: "sacrum"}
CENTROIDS_FOLDER = "centroids"
COORDINATE_SYSTEM = "LPS"  # SimpleITK physical points, millimetres
CERVICAL_VERSE_IDS = frozenset(range(1, 8))
NIFTI_SUFFIXES = (".nii.gz", ".nii")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


class ProblemLog:
    """One message per problem with the input; printed as found and again in the summary."""

    def __init__(self, stream=None):
        self.messages: list[str] = []
        self.skipped: list[tuple[str, str]] = []  # (what, why)
        self.stream = stream if stream is not None else sys.stderr

    def problem(self, message: str) -> None:
        self.messages.append(message)
        print(f"vfscreen: problem: {message}", file=self.stream)

    def skip(self, what: str, why: str) -> None:
        """Something (a case, a grade row...) left out of the output because of a problem."""
        self.skipped.append((what, why))
        self.problem(f"{what}: {why} (skipped)")


@dataclass
class SourceCase:
    """One input case as a converter found it, before anything was read.

    ``files``: a context manager factory yielding ``(ct_path, mask_path)`` readable local files (zip members are
    extracted to a temporary folder only while the case is written). ``grades``: VerSe id -> (grade 0-3, fracture
    type or None). ``not_graded``: VerSe id (or None = every vertebra of the case) -> why it must not be graded.
    ``centroids``: given the CT, VerSe id -> world point (LPS, mm) from the dataset's own centroid file (raises
    InputError when that file is bad); None = centers of mass of the mask.
    """

    case_id: str
    subject: str
    split: str  # "Tr" or "Ts"
    description: str  # where it came from, for messages
    files: Callable[[], ContextManager[tuple[Path, Path]]]
    grades: dict[int, tuple[int, str | None]] = field(default_factory=dict)
    not_graded: dict[int | None, str] = field(default_factory=dict)
    centroids: Callable[[sitk.Image], dict[int, list[float]]] | None = None
    centroid_source: str = "mask_center_of_mass"


@dataclass
class WrittenCase:
    case_id: str
    subject: str
    split: str
    vertebrae: list[int]
    grade_rows: list[dict]
    not_graded: Counter  # reason -> count
    background_ids: list[int]


def local_files(ct_path: Path, mask_path: Path) -> Callable[[], ContextManager[tuple[Path, Path]]]:
    return lambda: contextlib.nullcontext((Path(ct_path), Path(mask_path)))


def integer_hu(ct: sitk.Image) -> tuple[sitk.Image, bool]:
    """Integer CTs unchanged; float CTs rounded to int16 (int32 if needed). Returns (image, was_rounded)."""
    if ct.GetPixelID() in (sitk.sitkInt8, sitk.sitkUInt8, sitk.sitkInt16, sitk.sitkUInt16, sitk.sitkInt32,
                           sitk.sitkUInt32, sitk.sitkInt64, sitk.sitkUInt64):
        return ct, False
    rounded = np.rint(sitk.GetArrayViewFromImage(ct))
    fits_int16 = rounded.min() >= np.iinfo(np.int16).min and rounded.max() <= np.iinfo(np.int16).max
    result = sitk.GetImageFromArray(rounded.astype(np.int16 if fits_int16 else np.int32))
    result.CopyInformation(ct)
    return result, True


def mask_to_verse_array(mask: sitk.Image, source: str) -> np.ndarray:
    """Integer VerSe-id array (z, y, x) of a mask; sacrum/coccyx still in it. Raises InputError on bad values."""
    array = sitk.GetArrayFromImage(mask)  # a copy, (z, y, x)
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.isfinite(array)) or not np.all(array == np.rint(array)):
            raise InputError(f"{source}: mask has non-integer values; expected VerSe ids (1-25, 28)")
        array = array.astype(np.int32)
    values = [int(v) for v in np.unique(array) if v != 0]
    unknown = [v for v in values if not labels.is_vertebra(v) and v not in BACKGROUND_VERSE_IDS
               and v not in LANDMARK_VERSE_IDS]
    if unknown:
        raise InputError(f"{source}: mask values {unknown[:10]} are not VerSe vertebra ids (1-25, 28; 26/27 = "
                         "sacrum/coccyx); is this the vertebra mask (seg-vert_msk)?")
    return array


def centroids_from_mask(verse_mask: sitk.Image) -> dict[int, list[float]]:
    """Center of mass of each vertebra in world coordinates (LPS, mm) via SimpleITK's label statistics."""
    statistics = sitk.LabelShapeStatisticsImageFilter()
    statistics.Execute(verse_mask)
    return {int(v): list(statistics.GetCentroid(v)) for v in statistics.GetLabels() if labels.is_vertebra(v)}


def write_case(source: SourceCase, folder: Path, problems: ProblemLog) -> WrittenCase | None:
    """Validate and write one case (image, label, centroids). Returns None (after logging why) when unusable."""
    try:
        check_case_id(source.case_id)
        with source.files() as (ct_path, mask_path):
            ct = read_image(ct_path, "CT")
            mask = read_image(mask_path, "vertebra mask")
            check_same_geometry(ct, mask, source=f"{source.description}: mask {Path(mask_path).name}")
            check_ct_intensities(sitk.GetArrayViewFromImage(ct), source=f"{source.description}: CT")
            verse_array = mask_to_verse_array(mask, f"{source.description}: mask {Path(mask_path).name}")
    except InputError as error:
        problems.skip(f"case {source.case_id}", str(error))
        return None

    # non-vertebra structures of the mask: set to background, or kept as landmarks (both listed in the summary)
    background_ids = sorted(int(v) for v in np.unique(verse_array)
                            if int(v) in BACKGROUND_VERSE_IDS or int(v) in LANDMARK_VERSE_IDS)
    verse_array[np.isin(verse_array, list(BACKGROUND_VERSE_IDS))] = 0
    present = sorted(int(v) for v in np.unique(verse_array) if labels.is_vertebra(v))
    if not present:
        problems.skip(f"case {source.case_id}", f"{source.description}: the mask contains no vertebra")
        return None

    grade_rows, not_graded = [], Counter()
    for verse_id, (grade, fracture_type) in sorted(source.grades.items()):
        if verse_id not in present:
            problems.problem(f"case {source.case_id}: grade given for {labels.name_of(verse_id)} ({verse_id}) but "
                             "the mask has no such vertebra -> grade ignored")
            continue
        reason = source.not_graded.get(verse_id, source.not_graded.get(None))
        if reason:
            not_graded[reason] += 1
            continue
        row = {"case_id": source.case_id, "label": verse_id, "grade": grade}
        if fracture_type:
            row["morphology"] = fracture_type
        grade_rows.append(row)
    graded_ids = {row["label"] for row in grade_rows}
    for verse_id in present:
        if verse_id not in graded_ids and verse_id not in source.grades:
            not_graded[source.not_graded.get(verse_id, source.not_graded.get(None)) or "no grade given"] += 1

    ct, was_rounded = integer_hu(ct)
    if was_rounded:
        print(f"vfscreen: note: case {source.case_id}: float CT rounded to integer HU", file=problems.stream)
    label_image = sitk.GetImageFromArray(labels.verse_to_class(verse_array, landmarks=True))
    label_image.CopyInformation(ct)
    verse_image = sitk.GetImageFromArray(verse_array.astype(np.uint8))
    verse_image.CopyInformation(ct)

    centroids, centroid_source = None, "mask_center_of_mass"
    if source.centroids is not None:
        try:
            centroids, centroid_source = source.centroids(ct), source.centroid_source
        except InputError as error:
            problems.problem(f"case {source.case_id}: {error}; centroids computed from the mask instead")
    if centroids is None:
        centroids = centroids_from_mask(verse_image)
    centroid_entries = [{"label": v, "name": labels.name_of(v), "centroid_mm": [float(c) for c in centroids[v]]}
                        for v in sorted((v for v in centroids if labels.is_vertebra(v)), key=labels.spine_position)]

    atomic_write_image(image_path(folder, source.case_id, source.split), ct)
    atomic_write_image(label_path(folder, source.case_id, source.split), label_image)
    atomic_write_json(folder / CENTROIDS_FOLDER / f"{source.case_id}.json", {
        "case_id": source.case_id, "coordinate_system": COORDINATE_SYSTEM, "units": "mm",
        "source": centroid_source, "centroids": centroid_entries})
    return WrittenCase(source.case_id, source.subject, source.split, present, grade_rows, not_graded,
                       background_ids)


def output_folder(raw_root: Path, dataset_id: int, name: str) -> Path:
    """``raw_root/DatasetXXX_Name``; refuses an id already used by a dataset of another name."""
    if not 1 <= int(dataset_id) <= 999:
        raise ConfigError(f"dataset id {dataset_id} must lie in 1-999")
    dataset_name = f"Dataset{int(dataset_id):03d}_{name}"
    if raw_root.is_dir():
        clashes = [p.name for p in raw_root.glob(f"Dataset{int(dataset_id):03d}_*") if p.name != dataset_name
                   and not p.name.startswith(".")]
        if clashes:
            raise ConfigError(f"dataset id {dataset_id} is already used by {clashes[0]} in {raw_root}; "
                              "choose another id with -d")
    return raw_root / dataset_name


def verify_with_nnunet(folder: Path) -> None:
    """nnU-Net's own integrity check; any failure becomes an InputError (the folder is then discarded)."""
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    try:
        verify_dataset_integrity(str(folder), num_processes=1)
    except (AssertionError, RuntimeError, FileNotFoundError, ValueError) as error:
        raise InputError(f"nnU-Net's verify_dataset_integrity rejected the converted dataset: {error}") from None


def build_raw_dataset(final_folder: Path, sources: list[SourceCase], problems: ProblemLog, description: str,
                      overwrite: bool = False, verify: bool = True, dataset_json_extra: dict | None = None,
                      progress: bool = True, licence: str | None = None, reference: str | None = None
                      ) -> list[WrittenCase]:
    """Write every usable case into a temporary folder, add dataset.json and grades.csv, verify, rename into place.

    Raises InputError (nothing written) when no training case is usable.
    """
    
    sources = _drop_duplicate_cases(sources, problems)
    try:
        with atomic_directory(final_folder, overwrite=overwrite) as tmp_folder:
            written = []
            for source in progress_bar(sources, desc=f"converting {final_folder.name}", unit="case", disable=not progress):
                result = write_case(source, tmp_folder, problems)
                if result is not None:
                    written.append(result)
            num_training = sum(case.split == "Tr" for case in written)
            if num_training == 0:
                raise InputError(f"no usable training case among {len(sources)} input case(s); nothing was written "
                                 f"(see the problems above)")
            for split in ("Tr", "Ts"):
                for sub in ("images", "labels"):
                    (tmp_folder / f"{sub}{split}").mkdir(exist_ok=True)
            write_dataset_json(tmp_folder, final_folder.name, num_training, description,
                               licence=licence or UNKNOWN_LICENCE, reference=reference,
                               patients={case.case_id: case.subject for case in written},
                               centroids_folder=CENTROIDS_FOLDER, centroid_coordinate_system=COORDINATE_SYSTEM,
                               background_verse_ids=BACKGROUND_VERSE_IDS, **(dataset_json_extra or {}))
            rows = [row for case in written for row in case.grade_rows]
            grades = pd.DataFrame(rows, columns=["case_id", "label", "grade"] + (
                ["morphology"] if any("morphology" in row for row in rows) else []))
            atomic_write_csv(tmp_folder / GRADES_FILE, grades)
            if verify:
                verify_with_nnunet(tmp_folder)
    except FileExistsError as error:
        raise ConfigError(str(error)) from None
    return written


def _drop_duplicate_cases(sources: list[SourceCase], problems: ProblemLog) -> list[SourceCase]:
    first_seen: dict[str, SourceCase] = {}
    kept = []
    for source in sources:
        if source.case_id in first_seen:
            problems.skip(f"case {source.case_id} ({source.description})",
                          f"duplicate of {first_seen[source.case_id].description}; the first one is kept")
            continue
        first_seen[source.case_id] = source
        kept.append(source)
    return kept


def summary_text(dataset_folder: Path, written: list[WrittenCase], problems: ProblemLog) -> str:
    """Cases, vertebrae, grade histogram, what was not graded or dropped and why, what was skipped."""
    splits = Counter(case.split for case in written)
    grade_histogram = Counter(row["grade"] for case in written for row in case.grade_rows)
    not_graded = sum((case.not_graded for case in written), Counter())
    background = Counter(v for case in written for v in case.background_ids)
    lines = [f"{dataset_folder}:",
             f"  cases: {len(written)} ({splits['Tr']} training, {splits['Ts']} test), "
             f"patients: {len({case.subject for case in written})}",
             f"  vertebrae: {sum(len(case.vertebrae) for case in written)} segmented, "
             f"{sum(grade_histogram.values())} graded",
             "  grades: " + ", ".join(f"G{g} {grade_histogram.get(g, 0)}" for g in range(4))]
    if not_graded:
        lines.append("  not graded (kept for segmentation): "
                     + ", ".join(f"{count} {reason}" for reason, count in not_graded.most_common()))
    for title, names in (("set to background", BACKGROUND_VERSE_IDS), ("kept as landmark", LANDMARK_VERSE_IDS)):
        counts = sorted((v, count) for v, count in background.items() if v in names)
        if counts:
            lines.append(f"  {title}: " + ", ".join(f"{names[v]} ({v}) in {count} case(s)" for v, count in counts))
    if problems.skipped:
        lines.append(f"  skipped ({len(problems.skipped)}):")
        lines.extend(f"    - {what}: {why}" for what, why in problems.skipped)
    lines.append(f"  problems: {len(problems.messages)}" + (" (listed above)" if problems.messages else ""))
    return "\n".join(lines)


class InputTree:
    """A folder or a zip archive, read-only: relative POSIX paths of its files, text, and local copies."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.exists():
            raise ConfigError(f"{self.path}: Faint-Features input does not exist")
        self.is_zip = self.path.is_file()
        if self.is_zip:
            try:
                with zipfile.ZipFile(self.path) as archive:
                    names = [i.filename for i in archive.infolist() if not i.is_dir()]
            except zipfile.BadZipFile as error:
                raise InputError(f"{self.path}: not a readable zip archive ({error})") from None
        else:
            names = [p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file()]
        self.files = sorted(n for n in names if not any(part.startswith((".", "__MACOSX"))
                                                        for part in PurePosixPath(n).parts))

    def describe(self, name: str) -> str:
        return f"{self.path}!{name}" if self.is_zip else str(self.path / name)

    def read_text(self, name: str) -> str:
        if not self.is_zip:
            return (self.path / name).read_text()
        with zipfile.ZipFile(self.path) as archive:
            return archive.read(name).decode("utf-8")

    @contextlib.contextmanager
    def local(self, *names: str):
        """Yield readable local paths of the members (zip members copied to a temporary folder meanwhile)."""
        if not self.is_zip:
            yield tuple(self.path / n for n in names)
            return
        with tempfile.TemporaryDirectory(prefix="vfscreen_zip_") as folder, zipfile.ZipFile(self.path) as archive:
            paths = []
            for number, name in enumerate(names):
                local_path = Path(folder) / f"{number}_{PurePosixPath(name).name}"
                with archive.open(name) as source, open(local_path, "wb") as target:
                    shutil.copyfileobj(source, target)
                paths.append(local_path)
            yield tuple(paths)


def nifti_stem(name: str) -> str | None:
    base = PurePosixPath(name).name
    return next((base[: -len(s)] for s in NIFTI_SUFFIXES if base.endswith(s)), None)


def safe_case_id(name: str) -> str:
    return _UNSAFE.sub("_", name).lstrip("._-+") or "case"


def converter_parser(prog: str, description: str, dataset_id_default: int | None, dataset_id_help: str,
                     drop_cervical_help: str) -> CommandParser:
    """The parser of a dataset converter with the options every converter shares (output id, cervical grades,
    overwrite, verbose); the converter adds its input options."""
    parser = CommandParser(prog=prog, description=description)
    parser.add_argument("-d", "--dataset_id", "--dataset-id", type=int, default=dataset_id_default,
                        help=dataset_id_help)
    parser.add_argument("--drop_cervical", "--drop-cervical", action="store_true", help=drop_cervical_help)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output dataset")
    return parser
