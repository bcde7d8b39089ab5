"""THE vertebra crop function of vfscreen (used by preprocessing on ground-truth masks and by prediction on predicted
masks), its crop geometry and the way back from a crop to the input image grid (for Grad-CAM).

A crop is the vertebra mask's bounding box plus ``margin_mm`` of context, resampled with SimpleITK onto a grid in the
**canonical orientation** (``CANONICAL_ORIENTATION`` = LPS, identity direction cosines: array axis D runs inferior ->
superior, H anterior -> posterior, W right -> left). The output grid is defined in world coordinates, so a crop of the
same anatomy is the same array whatever the input's direction cosines (including oblique ones) and spacing, up to
interpolation. Only the small region of interest around the vertebra is ever copied and resampled.

Grid sizes:
  * ``fit`` mode (the paper's "rescale the longest side to the patch size"): one isotropic spacing
    ``max_i(extent_i / patch_i)``, so the binding side equals the patch size and every other side is smaller;
  * ``spacing`` mode: fixed isotropic ``spacing_mm``; a crop larger than the patch is centre-cropped to it.

Channels of ``VertebraCrop.data`` (float32, shape (C, D, H, W), C = len(windows) + 1 = 3 for the standard plan):
one per window (bone W1500/L400, soft tissue W200/L40), each clipped to [level - width/2, level + width/2] and mapped
to [0, 1]; last channel = binary mask of THIS vertebra * (VerSe id / MAX_VERSE_ID) ("label_modulated", the paper's),
the plain binary mask ("binary"), or none ("none", an ablation; see :func:`num_channels`). CT is resampled linearly
(outside the field of view = air, -1024 HU, i.e. 0 after windowing); the mask is its linear interpolation
thresholded at 0.5 (nearest-neighbour-like, but without nearest neighbour's tie-breaking towards +index, which would
make the mask depend on the input's axis directions when crop voxel centres fall exactly on input voxel faces).
The mask channel holds only THIS vertebra; neighbours appear in the CT channels of the margin.

Array order vs. plan order: plans store ``patch_size`` as [x, y, z] (SimpleITK order); arrays are (D, H, W) =
(z, y, x). :func:`patch_shape` converts; :func:`place_in_patch` takes the array-order shape.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from vfscreen import labels as vertebra_labels
from vfscreen.core.plans import crop_num_channels as num_channels  # noqa: F401 - part of the crop API
from vfscreen.errors import ConfigError, InputError
from vfscreen.utils.image_io import check_same_geometry

CANONICAL_ORIENTATION = "LPS"
CANONICAL_DIRECTION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
AIR_HU = -1024.0
CROP_MODES = ("fit", "spacing")
MASK_CHANNELS = ("label_modulated", "binary", "none")
MASK_TIE_GUARD = 1e-4  # interpolated mask weights within this of 0.5 count as outside (exact ties)
CROP_ALGORITHM_VERSION = 1  # bump when the crop arrays change for an unchanged plan (invalidates stored crops)


# ----------------------------------------------------------------------------------------------- plan and windows
def validate_crop_plan(crop_plan: dict) -> dict:
    """Check the crop plan's fields; return it. Raises ConfigError naming the field."""
    if not isinstance(crop_plan, dict):
        raise ConfigError(f"crop plan must be a dict, got {type(crop_plan).__name__}")
    for key in ("mode", "patch_size", "margin_mm", "windows"):
        if key not in crop_plan:
            raise ConfigError(f"crop plan: missing field 'grader.crop.{key}'")
    if crop_plan["mode"] not in CROP_MODES:
        raise ConfigError(f"crop plan: grader.crop.mode {crop_plan['mode']!r} must be one of {CROP_MODES}")
    patch = crop_plan["patch_size"]
    if (not isinstance(patch, (list, tuple)) or len(patch) != 3
            or not all(isinstance(p, (int, np.integer)) and not isinstance(p, bool) and p > 0 for p in patch)):
        raise ConfigError(f"crop plan: grader.crop.patch_size {patch!r} must be three positive integers [x, y, z]")
    if not _is_number(crop_plan["margin_mm"]) or crop_plan["margin_mm"] < 0:
        raise ConfigError(f"crop plan: grader.crop.margin_mm {crop_plan['margin_mm']!r} must be a number >= 0")
    if crop_plan["mode"] == "spacing":
        spacing = crop_plan.get("spacing_mm")
        if not _is_number(spacing) or spacing <= 0:
            raise ConfigError(f"crop plan: grader.crop.spacing_mm {spacing!r} must be a number > 0 in 'spacing' mode")
    windows = crop_plan["windows"]
    if not isinstance(windows, (list, tuple)) or not windows:
        raise ConfigError("crop plan: grader.crop.windows must be a non-empty list of {name, width, level}")
    for number, window in enumerate(windows):
        if (not isinstance(window, dict) or not _is_number(window.get("width")) or window["width"] <= 0
                or not _is_number(window.get("level"))):
            raise ConfigError(f"crop plan: grader.crop.windows[{number}] = {window!r} needs a width > 0 and a level")
    mask_channel = crop_plan.get("mask_channel", "label_modulated")
    if mask_channel not in MASK_CHANNELS:
        raise ConfigError(f"crop plan: grader.crop.mask_channel {mask_channel!r} must be one of {MASK_CHANNELS}")
    return crop_plan


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
        and math.isfinite(float(value))


def window_bounds(width: float, level: float) -> tuple[float, float]:
    """HU interval [level - width/2, level + width/2] that a window maps onto [0, 1]."""
    return level - width / 2.0, level + width / 2.0


def apply_window(hounsfield: np.ndarray, width: float, level: float) -> np.ndarray:
    """Clip HU to the window and map it linearly to [0, 1] (float32, same shape)."""
    low, high = window_bounds(width, level)
    return np.clip((np.asarray(hounsfield, dtype=np.float32) - low) / (high - low), 0.0, 1.0).astype(np.float32)


def patch_shape(crop_plan: dict) -> tuple[int, int, int]:
    """The plan's patch_size [x, y, z] as an array shape (D, H, W) = (z, y, x)."""
    return tuple(int(p) for p in reversed(crop_plan["patch_size"]))


# --------------------------------------------------------------------------------------------------- the crop
@dataclass
class VertebraCrop:
    """One vertebra crop and the geometry that maps its voxels to world coordinates.

    data:        float32 (C, D, H, W): windows..., mask channel; (D, H, W) = (z, y, x) of the crop grid.
    label:       VerSe id.
    truncated:   the vertebra touches the border of the input image (cut by the field of view).
    bbox_index:  the vertebra's box in input voxel indices, SimpleITK order ((x0, x1), (y0, y1), (z0, z1)), stop
                 exclusive.
    origin_mm:   world (x, y, z) of crop voxel [.., 0, 0, 0]; spacing_mm: (x, y, z) voxel size of the crop grid;
    direction:   the crop grid's direction cosines (always CANONICAL_DIRECTION).
    centroid_mm: world (x, y, z) centroid of the vertebra mask (input grid); voxel_count: its number of voxels.
    """

    label: int
    data: np.ndarray
    truncated: bool
    bbox_index: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
    origin_mm: tuple[float, float, float]
    spacing_mm: tuple[float, float, float]
    direction: tuple[float, ...]
    centroid_mm: tuple[float, float, float]
    voxel_count: int

    @property
    def name(self) -> str:
        return vertebra_labels.name_of(self.label)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(D, H, W) of the crop grid."""
        return tuple(self.data.shape[1:])

    def grid_image(self, values: np.ndarray | None = None) -> sitk.Image:
        """A SimpleITK image on the crop grid holding ``values`` ((D, H, W); default: the last channel)."""
        values = self.data[-1] if values is None else np.asarray(values)
        if values.shape != self.shape:
            raise ValueError(f"values of shape {values.shape} do not match the crop grid {self.shape} (D, H, W)")
        image = sitk.GetImageFromArray(np.ascontiguousarray(values, dtype=np.float32))
        image.SetOrigin(self.origin_mm)
        image.SetSpacing(self.spacing_mm)
        image.SetDirection(self.direction)
        return image

    def index_to_world(self, index_dhw) -> np.ndarray:
        """World (x, y, z) mm of a (possibly fractional) crop voxel index given in array order (d, h, w)."""
        index_xyz = np.asarray(index_dhw, dtype=float)[::-1]
        direction = np.asarray(self.direction).reshape(3, 3)
        return np.asarray(self.origin_mm) + direction @ (index_xyz * np.asarray(self.spacing_mm))


def extract_vertebra_crops(ct: sitk.Image, verse_labels: sitk.Image, crop_plan: dict,
                           labels=None) -> list[VertebraCrop]:
    """Crop every vertebra (or those in ``labels``) of ``verse_labels`` (VerSe ids, same grid as ``ct``).

    Values of ``verse_labels`` that are not vertebra ids (e.g. VerSe's 26 sacrum) are ignored. An empty mask gives [].
    Raises InputError on a geometry mismatch, a non-integer/negative label image or a requested label that is absent.
    """
    validate_crop_plan(crop_plan)
    check_same_geometry(ct, verse_labels, source="vertebra label image")
    label_array = _integer_label_array(verse_labels)
    boxes = ndimage.find_objects(label_array)  # boxes[v - 1] = (z, y, x) slices of value v, or None
    present = [v for v in range(1, len(boxes) + 1) if boxes[v - 1] is not None and vertebra_labels.is_vertebra(v)]
    if labels is None:
        wanted = present
    else:
        wanted = [int(v) for v in labels]
        missing = [v for v in wanted if v not in present]
        if missing:
            raise InputError(f"vertebra label image: requested label(s) {missing} are not in the mask "
                             f"(present: {present})")
    ct_array = sitk.GetArrayViewFromImage(ct)  # (z, y, x), no copy
    return [_crop_one(ct, ct_array, label_array, boxes[v - 1], v, crop_plan) for v in wanted]


def _integer_label_array(verse_labels: sitk.Image) -> np.ndarray:
    array = sitk.GetArrayViewFromImage(verse_labels)
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise InputError("vertebra label image: values are not integers (is this a label image?)")
        array = array.astype(np.int32)
    if array.size and array.min() < 0:
        raise InputError("vertebra label image: contains negative values")
    return array


def _crop_one(ct: sitk.Image, ct_array: np.ndarray, label_array: np.ndarray, box_zyx, label: int,
              crop_plan: dict) -> VertebraCrop:
    size_xyz = np.asarray(ct.GetSize())
    start_xyz = np.array([s.start for s in reversed(box_zyx)])
    stop_xyz = np.array([s.stop for s in reversed(box_zyx)])
    truncated = bool(np.any(start_xyz == 0) or np.any(stop_xyz == size_xyz))

    # World-axis extent of the vertebra's voxels (voxel edges included; exact for oblique grids too), plus margin.
    vertebra_mask = label_array[box_zyx] == label
    voxel_index_xyz = np.argwhere(vertebra_mask)[:, ::-1] + start_xyz
    index_to_world = np.asarray(ct.GetDirection()).reshape(3, 3) * np.asarray(ct.GetSpacing())  # columns scaled
    voxel_world = voxel_index_xyz @ index_to_world.T + np.asarray(ct.GetOrigin())
    half_voxel_mm = np.abs(index_to_world).sum(axis=1) / 2.0
    margin = float(crop_plan["margin_mm"])
    low_mm = voxel_world.min(axis=0) - half_voxel_mm - margin
    high_mm = voxel_world.max(axis=0) + half_voxel_mm + margin
    extent_mm = high_mm - low_mm
    centre_mm = (low_mm + high_mm) / 2.0

    patch_xyz = np.asarray(crop_plan["patch_size"], dtype=int)
    if crop_plan["mode"] == "fit":
        spacing = float(np.max(extent_mm / patch_xyz))
    else:
        spacing = float(crop_plan["spacing_mm"])
    grid_size = np.minimum(patch_xyz, np.maximum(1, np.round(extent_mm / spacing).astype(int)))
    grid_origin = centre_mm - (grid_size - 1) / 2.0 * spacing  # voxel centres symmetric about the box centre

    # The input region needed to interpolate the crop grid (+1 voxel), copied from the array view. Where it leaves
    # the image it gets one layer of air (mask: background) voxels, so that sampling near the image border blends
    # the edge voxel with air symmetrically (ITK's own half-voxel border test is half-open, i.e. asymmetric).
    grid_corners = _box_corners(grid_origin - spacing / 2.0, grid_origin + (grid_size - 0.5) * spacing)
    index = np.array([ct.TransformPhysicalPointToContinuousIndex(c.tolist()) for c in grid_corners])
    roi_start = np.clip(np.floor(index.min(axis=0)).astype(int) - 1, -1, size_xyz)
    roi_stop = np.clip(np.ceil(index.max(axis=0)).astype(int) + 2, roi_start + 1, size_xyz + 1)
    roi_origin = ct.TransformIndexToPhysicalPoint([int(i) for i in roi_start])
    roi_hounsfield = _padded_region(ct_array, roi_start, roi_stop, AIR_HU, np.float32)
    roi_mask = _padded_region(label_array, roi_start, roi_stop, 0, label_array.dtype) == label

    reference = sitk.Image([int(s) for s in grid_size], sitk.sitkFloat32)
    reference.SetOrigin(grid_origin.tolist())
    reference.SetSpacing([spacing] * 3)
    reference.SetDirection(CANONICAL_DIRECTION)
    hounsfield = _resample_roi(roi_hounsfield, ct, roi_origin, reference, sitk.sitkLinear, AIR_HU)
    # The mask: linear interpolation of the binary mask, then > 0.5 (+ a guard for rounding). Unlike nearest
    # neighbour, whose ties round towards +index, this is symmetric, so the mask does not depend on the input's
    # axis directions when crop voxel centres fall exactly on input voxel faces (common on round-number grids).
    mask_weight = _resample_roi(roi_mask.astype(np.float32), ct, roi_origin, reference, sitk.sitkLinear, 0.0)
    mask = mask_weight > 0.5 + MASK_TIE_GUARD

    channels = [apply_window(hounsfield, w["width"], w["level"]) for w in crop_plan["windows"]]
    mask_channel = crop_plan.get("mask_channel", "label_modulated")
    if mask_channel != "none":
        mask_scale = label / vertebra_labels.MAX_VERSE_ID if mask_channel == "label_modulated" else 1.0
        channels.append(mask.astype(np.float32) * np.float32(mask_scale))

    return VertebraCrop(
        label=int(label), data=np.stack(channels).astype(np.float32, copy=False), truncated=truncated,
        bbox_index=tuple((int(a), int(b)) for a, b in zip(start_xyz, stop_xyz)),
        origin_mm=tuple(float(v) for v in grid_origin), spacing_mm=(spacing,) * 3,
        direction=CANONICAL_DIRECTION,
        centroid_mm=tuple(float(v) for v in voxel_world.mean(axis=0)),
        voxel_count=int(vertebra_mask.sum()))


def _padded_region(array_zyx: np.ndarray, start_xyz, stop_xyz, fill_value, dtype) -> np.ndarray:
    """array[start:stop] (SimpleITK-order bounds, may reach outside the array) with ``fill_value`` outside."""
    start_zyx, stop_zyx = np.asarray(start_xyz)[::-1], np.asarray(stop_xyz)[::-1]
    region = np.full(tuple(stop_zyx - start_zyx), fill_value, dtype=dtype)
    inner_start = np.maximum(start_zyx, 0)
    inner_stop = np.minimum(stop_zyx, array_zyx.shape)
    if np.all(inner_stop > inner_start):
        region[tuple(slice(a - s, b - s) for a, b, s in zip(inner_start, inner_stop, start_zyx))] = \
            array_zyx[tuple(slice(a, b) for a, b in zip(inner_start, inner_stop))]
    return region


def _box_corners(low, high) -> np.ndarray:
    """The 8 corners (8, 3) of an axis-aligned box."""
    return np.array([[(low, high)[bit][axis] for axis, bit in enumerate(bits)]
                     for bits in np.ndindex(2, 2, 2)], dtype=float)


def _resample_roi(roi_values: np.ndarray, ct: sitk.Image, roi_origin, reference: sitk.Image, interpolator,
                  default_value: float) -> np.ndarray:
    """Resample a (z, y, x) region of the input grid onto ``reference``; returns (D, H, W) float32."""
    roi_image = sitk.GetImageFromArray(roi_values)
    roi_image.SetOrigin(roi_origin)
    roi_image.SetSpacing(ct.GetSpacing())
    roi_image.SetDirection(ct.GetDirection())
    resampled = sitk.Resample(roi_image, reference, sitk.Transform(), interpolator, float(default_value),
                              sitk.sitkFloat32)
    return sitk.GetArrayFromImage(resampled)


# ------------------------------------------------------------------------------------------ patches and paste-back
def centered_offset(crop_shape, patch_size) -> tuple[int, ...]:
    """Offset (array order) that centres a crop of ``crop_shape`` (D, H, W) in ``patch_size`` (D, H, W)."""
    return tuple((int(p) - int(c)) // 2 for c, p in zip(crop_shape, patch_size))


def place_in_patch(crop, patch_size, offset=None) -> np.ndarray:
    """Pad a crop to exactly ``patch_size`` (array order (D, H, W); use :func:`patch_shape` for a plan's [x, y, z]).

    ``crop``: a VertebraCrop or an array (C, D, H, W) or (D, H, W). Padding is 0 (= air after windowing for the CT
    channels, background for the mask). ``offset`` (D, H, W) is where the crop's first voxel lands; None = centred.
    Returns an array (C, *patch_size) (or (*patch_size) for a 3D input) of the crop's dtype.
    """
    data = crop.data if isinstance(crop, VertebraCrop) else np.asarray(crop)
    spatial = data.shape[-3:]
    patch_size = tuple(int(p) for p in patch_size)
    if len(patch_size) != 3 or data.ndim not in (3, 4):
        raise ValueError(f"place_in_patch needs a (C, D, H, W) or (D, H, W) crop and a 3-element patch size, got "
                         f"{data.shape} and {patch_size}")
    if any(c > p for c, p in zip(spatial, patch_size)):
        raise ValueError(f"crop {spatial} (D, H, W) is larger than the patch {patch_size}; patch_size is in array "
                         "order (D, H, W) - use patch_shape(crop_plan) for a plan's [x, y, z]")
    offset = centered_offset(spatial, patch_size) if offset is None else tuple(int(o) for o in offset)
    if any(o < 0 or o + c > p for o, c, p in zip(offset, spatial, patch_size)):
        raise ValueError(f"offset {offset} puts crop {spatial} outside the patch {patch_size}")
    patch = np.zeros(data.shape[:-3] + patch_size, dtype=data.dtype)
    patch[(..., *(slice(o, o + c) for o, c in zip(offset, spatial)))] = data
    return patch


def take_from_patch(patch_values: np.ndarray, crop_shape, offset=None) -> np.ndarray:
    """Inverse of :func:`place_in_patch`: the (..., D, H, W) part of a patch-sized array that the crop occupied."""
    patch_values = np.asarray(patch_values)
    crop_shape = tuple(int(c) for c in crop_shape)
    offset = centered_offset(crop_shape, patch_values.shape[-3:]) if offset is None else tuple(offset)
    return patch_values[(..., *(slice(int(o), int(o) + c) for o, c in zip(offset, crop_shape)))]


def paste_crop_to_image(values_in_crop_grid: np.ndarray, crop: VertebraCrop, reference_image: sitk.Image,
                        interpolator=sitk.sitkLinear, background: float = 0.0) -> sitk.Image:
    """Resample values given on a crop's grid ((D, H, W), e.g. an upsampled Grad-CAM) back onto the input image grid.

    Only the part of ``reference_image``'s grid that the crop covers is resampled. Returns a float32 image with
    ``reference_image``'s exact size, spacing, origin and direction; voxels outside the crop hold ``background``.
    """
    output = np.full(sitk.GetArrayViewFromImage(reference_image).shape, background, dtype=np.float32)
    region, values = _resample_to_reference_region(values_in_crop_grid, crop, reference_image, interpolator,
                                                   background)
    if region is not None:
        output[region] = values
    image = sitk.GetImageFromArray(output)
    image.CopyInformation(reference_image)
    return image


def paste_crops_to_image(items, reference_image: sitk.Image, interpolator=sitk.sitkLinear,
                         background: float = 0.0, reduce=np.maximum) -> sitk.Image:
    """Paste several (values (D, H, W), VertebraCrop) pairs into one image; overlaps combined with ``reduce``."""
    output = np.full(sitk.GetArrayViewFromImage(reference_image).shape, background, dtype=np.float32)
    for values_in_crop_grid, crop in items:
        region, values = _resample_to_reference_region(values_in_crop_grid, crop, reference_image, interpolator,
                                                       background)
        if region is not None:
            output[region] = reduce(output[region], values)
    image = sitk.GetImageFromArray(output)
    image.CopyInformation(reference_image)
    return image


def _resample_to_reference_region(values_in_crop_grid, crop: VertebraCrop, reference_image: sitk.Image,
                                  interpolator, background: float):
    """((z, y, x) slices of the reference grid, float32 values there) where the crop lies, or (None, None)."""
    crop_image = crop.grid_image(values_in_crop_grid)
    size_xyz = np.asarray(reference_image.GetSize())
    corner_low = -0.5 * np.ones(3)
    corner_high = np.asarray(crop.shape[::-1], dtype=float) - 0.5
    corners = [crop_image.TransformContinuousIndexToPhysicalPoint(c.tolist())
               for c in _box_corners(corner_low, corner_high)]
    index = np.array([reference_image.TransformPhysicalPointToContinuousIndex(c) for c in corners])
    start = np.clip(np.floor(index.min(axis=0)).astype(int), 0, size_xyz)
    stop = np.clip(np.ceil(index.max(axis=0)).astype(int) + 1, 0, size_xyz)
    if np.any(stop <= start):
        return None, None
    sub_grid = sitk.Image([int(s) for s in stop - start], sitk.sitkFloat32)
    sub_grid.SetOrigin(reference_image.TransformIndexToPhysicalPoint([int(i) for i in start]))
    sub_grid.SetSpacing(reference_image.GetSpacing())
    sub_grid.SetDirection(reference_image.GetDirection())
    resampled = sitk.Resample(crop_image, sub_grid, sitk.Transform(), interpolator, float(background),
                              sitk.sitkFloat32)
    region = tuple(slice(int(a), int(b)) for a, b in zip(reversed(start), reversed(stop)))
    return region, sitk.GetArrayFromImage(resampled)
