"""Inputs for the memory / size benchmarks: a synthetic spine embedded in a large field of view, and the issue's
'noise around 40 HU with a bright column'.

A clinical chest-abdomen-pelvis CT is a 512 x 512 matrix of ~0.8 mm with hundreds of 1 mm slices; the spine fills a
small part of it. :func:`embedded_spine` renders one phantom case (vfscreen.phantom, demo preset, a fixed seed) and
resamples it into such a field, inside an elliptic soft-tissue body surrounded by air, so that memory and time can be
measured against the field of view while the anatomy stays the same.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from vfscreen.phantom.acquisition import PRESETS
from vfscreen.phantom.generator import case_specs, generate_case

AIR_HU = -1000
SOFT_TISSUE_HU = 40
TISSUE_NOISE_HU = 15.0
BODY_FILL = 0.9  # body ellipse semi-axes as a fraction of the field's half-width / half-depth
SOURCE_AIR_BELOW_HU = -500  # source voxels below this are the phantom's air, not pasted
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def spine_source(seed: int = 0, preset: str = "demo") -> sitk.Image:
    """One rendered phantom CT (int16 HU) of ``preset``; the same for a given seed."""
    spec = case_specs(seed, 1, 0, PRESETS[preset].with_changes(orientation="LPS"))[0]
    return generate_case(spec).ct


def _field(size_xyz, spacing_xyz, centre_mm) -> sitk.Image:
    image = sitk.Image([int(s) for s in size_xyz], sitk.sitkInt16)
    image.SetSpacing([float(s) for s in spacing_xyz])
    image.SetDirection(IDENTITY)
    image.SetOrigin([float(c - (n - 1) / 2.0 * s) for c, n, s in zip(centre_mm, size_xyz, spacing_xyz)])
    return image


def _body_slice(shape_yx, rng: np.random.Generator) -> np.ndarray:
    """One axial slice: soft tissue with noise inside the body ellipse, air outside (int16)."""
    y, x = np.ogrid[:shape_yx[0], :shape_yx[1]]
    inside = (((y - (shape_yx[0] - 1) / 2) / (BODY_FILL * shape_yx[0] / 2)) ** 2
              + ((x - (shape_yx[1] - 1) / 2) / (BODY_FILL * shape_yx[1] / 2)) ** 2) <= 1.0
    tissue = SOFT_TISSUE_HU + TISSUE_NOISE_HU * rng.standard_normal(shape_yx, dtype=np.float32)
    return np.where(inside, np.rint(tissue), AIR_HU).astype(np.int16)


def embedded_spine(size_xyz, spacing_xyz=(0.8, 0.8, 1.0), source: sitk.Image | None = None,
                   seed: int = 0) -> sitk.Image:
    """``source`` (default :func:`spine_source`) resampled (linear) into a body of ``size_xyz`` voxels of
    ``spacing_xyz`` mm centred on it; int16 HU, LPS. Slices are filled one by one (memory: the output + one slice)."""
    source = spine_source(seed) if source is None else source
    centre = np.asarray(source.TransformContinuousIndexToPhysicalPoint(
        [(n - 1) / 2.0 for n in source.GetSize()]))
    field = _field(size_xyz, spacing_xyz, centre)
    array = sitk.GetArrayFromImage(field)  # (z, y, x) zeros, filled below
    rng = np.random.default_rng(seed)
    for z in range(array.shape[0]):
        array[z] = _body_slice(array.shape[1:], rng)
    # the source's own voxels where it has them: resample it onto the field's sub-grid that covers it
    corners = [source.TransformContinuousIndexToPhysicalPoint([c * (n - 1) for c, n in zip(corner, source.GetSize())])
               for corner in np.ndindex(2, 2, 2)]
    index = np.array([field.TransformPhysicalPointToContinuousIndex(c) for c in corners])
    start = np.clip(np.ceil(index.min(axis=0)).astype(int), 0, np.asarray(size_xyz))
    stop = np.clip(np.floor(index.max(axis=0)).astype(int) + 1, start, np.asarray(size_xyz))
    if np.all(stop > start):
        sub_grid = _field(stop - start, spacing_xyz, (0, 0, 0))
        sub_grid.SetOrigin(field.TransformIndexToPhysicalPoint([int(i) for i in start]))
        resampled = sitk.GetArrayFromImage(sitk.Resample(source, sub_grid, sitk.Transform(), sitk.sitkLinear,
                                                         float(AIR_HU), sitk.sitkInt16))
        box = array[start[2]:stop[2], start[1]:stop[1], start[0]:stop[0]]
        np.copyto(box, resampled, where=resampled > SOURCE_AIR_BELOW_HU)  # the source's air stays body tissue
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(field)
    return image


def noise_with_column(size_xyz, spacing_xyz=(0.8, 0.8, 1.0), seed: int = 0, column_hu: int = 1000,
                      column_radius_mm: float = 15.0) -> sitk.Image:
    """The issue's input: noise around 40 HU (no anatomy) with a bright vertical column in the middle (int16)."""
    field = _field(size_xyz, spacing_xyz, (0.0, 0.0, 0.0))
    rng = np.random.default_rng(seed)
    array = sitk.GetArrayFromImage(field)
    y, x = np.ogrid[:array.shape[1], :array.shape[2]]
    column = (((y - (array.shape[1] - 1) / 2) * spacing_xyz[1]) ** 2
              + ((x - (array.shape[2] - 1) / 2) * spacing_xyz[0]) ** 2) <= column_radius_mm ** 2
    for z in range(array.shape[0]):
        noise = SOFT_TISSUE_HU + 40.0 * rng.standard_normal(array.shape[1:], dtype=np.float32)
        array[z] = np.where(column, column_hu, np.rint(noise)).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(field)
    return image
