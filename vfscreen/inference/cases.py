"""The cases of a ``vfscreen_predict`` input: a NIfTI file, a folder of NIfTI files (nnU-Net's ``_0000`` channel
naming accepted), a DICOM series folder or a folder of DICOM series folders; and reading one case's CT."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from vfscreen.errors import ConfigError, InputError
from vfscreen.utils.image_io import ensure_3d, read_image

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
