"""Reading and validating images. Input validation lives here, in one place, used by preprocessing, prediction and
the converters. Every check raises :class:`vfscreen.errors.InputError` with a message naming the file."""
from __future__ import annotations

import gzip
import re
import warnings
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from vfscreen.errors import InputError

MAX_SPACING_MM = 10.0
GEOMETRY_TOLERANCE = 1e-3  # relative for spacing/direction, mm for origin
_SAFE_CASE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def check_case_id(case_id: str) -> str:
    """Return ``case_id`` if it is safe as a file name (no '/', '..', control characters), else raise InputError."""
    if not isinstance(case_id, str) or not _SAFE_CASE_ID.fullmatch(case_id) or ".." in case_id:
        raise InputError(f"case id {case_id!r} is not safe as a file name (use letters, digits, '.', '_', '-', '+')")
    return case_id


def read_image(path: str | Path, what: str = "image") -> sitk.Image:
    """Read a 3D image. A 4D image with a single volume is squeezed to 3D; anything else is rejected."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: {what} does not exist")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown reason"
        raise InputError(f"{path}: cannot read {what} ({first_line[:200]})") from None
    if path.name.endswith((".nii", ".nii.gz")):
        _check_nifti_data(path, what)
    return ensure_3d(image, path)


def _check_nifti_data(path: Path, what: str) -> None:
    """What SimpleITK's NIfTI reader lets through silently: a truncated file (the missing voxels become 0) and NaN
    voxels (turned into 0). Checked with nibabel (header + one streamed pass over the data)."""
    import nibabel

    try:
        nifti = nibabel.load(str(path))
        header = nifti.header
        expected_bytes = (int(header.get_data_offset())
                          + int(np.prod(header.get_data_shape())) * header.get_data_dtype().itemsize)
        if path.name.endswith(".gz"):
            size = 0
            with gzip.open(path, "rb") as stream:
                while chunk := stream.read(1 << 24):
                    size += len(chunk)
        else:
            size = path.stat().st_size
    except (OSError, EOFError, zlib.error, ValueError, nibabel.filebasedimages.ImageFileError) as error:
        raise InputError(f"{path}: {what} is truncated or corrupt ({str(error).splitlines()[0][:200]})") from None
    if size < expected_bytes:
        raise InputError(f"{path}: {what} is truncated ({size} of {expected_bytes} bytes)")
    if header.get_data_dtype().kind == "f" and not np.all(np.isfinite(np.asanyarray(nifti.dataobj))):
        raise InputError(f"{path}: {what} contains NaN or infinite voxels")


def ensure_3d(image: sitk.Image, source="image") -> sitk.Image:
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{source}: has {image.GetNumberOfComponentsPerPixel()} components per voxel, expected 1")
    if image.GetDimension() == 4:
        size = image.GetSize()
        if size[3] != 1:
            raise InputError(f"{source}: is 4D with {size[3]} volumes; vfscreen needs one 3D CT volume")
        image = sitk.Extract(image, list(size[:3]) + [0], [0, 0, 0, 0])
    if image.GetDimension() != 3:
        raise InputError(f"{source}: is {image.GetDimension()}D; vfscreen needs a 3D CT volume")
    if min(image.GetSize()) < 2:
        raise InputError(f"{source}: size {image.GetSize()} is not a 3D volume (a dimension has < 2 voxels)")
    spacing = image.GetSpacing()
    if not all(np.isfinite(s) and 0 < s <= MAX_SPACING_MM for s in spacing):
        raise InputError(f"{source}: spacing {tuple(round(s, 4) for s in spacing)} mm is not plausible "
                         f"(each must be > 0 and <= {MAX_SPACING_MM} mm)")
    return image


def check_ct_intensities(array: np.ndarray, source="image") -> None:
    """Reject non-finite voxels and all-constant images; warn when the range does not look like CT HU."""
    if not np.all(np.isfinite(array)):
        raise InputError(f"{source}: contains NaN or infinite voxels")
    low, high = np.percentile(array, [0.5, 99.5]) if array.size else (0, 0)
    if array.size == 0 or array.min() == array.max():
        raise InputError(f"{source}: all voxels have the same value; this is not a CT scan")
    # bone may fill far less than 0.5 % of a large field of view (a spine in a whole-body scan): "no bone" is
    # judged on the brightest voxel, the other bounds on the robust range
    if low > -500 or array.max() < 200 or high > 5000:
        warnings.warn(f"{source}: intensity range [{low:.0f}, {high:.0f}] does not look like CT Hounsfield units "
                      "(is this MR?); vfscreen's models expect CT HU", stacklevel=2)


def same_geometry(a: sitk.Image, b: sitk.Image, tolerance: float = GEOMETRY_TOLERANCE) -> bool:
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=tolerance, atol=0)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), rtol=0, atol=tolerance * max(1.0, max(a.GetSpacing())))
            and np.allclose(a.GetDirection(), b.GetDirection(), rtol=0, atol=tolerance))


def check_same_geometry(image: sitk.Image, label: sitk.Image, source="label") -> None:
    if not same_geometry(image, label):
        raise InputError(
            f"{source}: geometry differs from its image (size {label.GetSize()} vs {image.GetSize()}, spacing "
            f"{np.round(label.GetSpacing(), 4).tolist()} vs {np.round(image.GetSpacing(), 4).tolist()}, origin or "
            "direction); image and label must share one voxel grid")


def orientation_code(image: sitk.Image) -> str:
    """Three-letter orientation ('RAS', 'LPS', ...) of an image's direction cosines."""
    return sitk.DICOMOrientImageFilter_GetOrientationFromDirectionCosines(image.GetDirection())
