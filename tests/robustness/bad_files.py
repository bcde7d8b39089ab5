"""Bad input files of the robustness table: each writer turns a good CT (and its label mask) into one defect."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk


def _like(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image


def truncated(path: Path, image: sitk.Image) -> None:
    sitk.WriteImage(image, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def text_file(path: Path, image: sitk.Image) -> None:
    path.write_text("patient list\nthis is not an image\n")


def two_dimensional(path: Path, image: sitk.Image) -> None:
    sitk.WriteImage(image[:, :, image.GetSize()[2] // 2], str(path))


def four_d_three_volumes(path: Path, image: sitk.Image) -> None:
    sitk.WriteImage(sitk.JoinSeries([image, image, image]), str(path))


def nan_voxels(path: Path, image: sitk.Image) -> None:
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    array[10:14, 10:14, 10:14] = np.nan
    sitk.WriteImage(_like(array, image), str(path))


def all_zero(path: Path, image: sitk.Image) -> None:
    sitk.WriteImage(_like(np.zeros_like(sitk.GetArrayFromImage(image)), image), str(path))


def mr_like(path: Path, image: sitk.Image) -> None:
    """Same anatomy, intensities 0..~850 as in an MR scan (no negative values, no air at -1000)."""
    array = (sitk.GetArrayFromImage(image).astype(np.float32) + 1000) / 2
    sitk.WriteImage(_like(array.astype(np.int16), image), str(path))


def spacing_600mm(path: Path, image: sitk.Image) -> None:
    image = sitk.Image(image)
    image.SetSpacing(image.GetSpacing()[:2] + (600.0,))
    sitk.WriteImage(image, str(path))


IMAGE_DEFECTS = {
    "truncated_nii_gz": (truncated, r"is truncated"),
    "text_file_named_nii_gz": (text_file, r"cannot read"),
    "2d_image": (two_dimensional, r"is 2D"),
    "4d_three_volumes": (four_d_three_volumes, r"4D with 3 volumes"),
    "nan_voxels": (nan_voxels, r"NaN"),
    "all_zero": (all_zero, r"same value"),
    "slice_spacing_600mm": (spacing_600mm, r"spacing .*not plausible"),
}
