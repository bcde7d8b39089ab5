"""Voxel <-> world geometry helpers shared by the prediction modules.

Arrays follow SimpleITK's numpy order: ``array[k, j, i]`` is voxel index ``(i, j, k)``. World coordinates are
SimpleITK's physical points (LPS, mm): ``world = origin + direction @ (spacing * (i, j, k))``.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

# LPS world axes: +x = patient left, +y = posterior, +z = superior.
WORLD_SUPERIOR = np.array([0.0, 0.0, 1.0])
WORLD_ANTERIOR = np.array([0.0, -1.0, 0.0])


def direction_matrix(image: sitk.Image) -> np.ndarray:
    """(3, 3) direction cosines, columns = world direction of the i, j, k index axes."""
    return np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)


def array_indices_to_world(image: sitk.Image, zyx_indices: np.ndarray) -> np.ndarray:
    """(N, 3) numpy-order voxel indices (k, j, i) -> (N, 3) world points (x, y, z) in mm."""
    ijk = np.asarray(zyx_indices, dtype=float)[:, ::-1]
    return np.asarray(image.GetOrigin()) + (ijk * np.asarray(image.GetSpacing())) @ direction_matrix(image).T


def array_indices_to_local_affine(image: sitk.Image, centre_mm: np.ndarray, frame: np.ndarray
                                  ) -> tuple[np.ndarray, np.ndarray]:
    """(matrix (3, 3), offset (3,)) with ``local = zyx_indices @ matrix + offset`` = (world - centre) @ frame."""
    index_to_world = (direction_matrix(image) * np.asarray(image.GetSpacing()))[:, ::-1]  # columns: k, j, i
    return index_to_world.T @ frame, (np.asarray(image.GetOrigin()) - centre_mm) @ frame


def world_to_array_indices(image: sitk.Image, world_points: np.ndarray) -> np.ndarray:
    """(..., 3) world points -> (..., 3) continuous numpy-order indices (k, j, i)."""
    points = np.asarray(world_points, dtype=float)
    relative = points - np.asarray(image.GetOrigin())
    ijk = relative @ np.linalg.inv(direction_matrix(image)).T / np.asarray(image.GetSpacing())
    return ijk[..., ::-1]


def voxel_volume_mm3(image: sitk.Image) -> float:
    return float(np.prod(image.GetSpacing()))


def voxel_shadow_mm(image: sitk.Image, unit_direction: np.ndarray) -> float:
    """Length of one voxel's projection onto a world direction (the extent a single voxel covers along it)."""
    axis_vectors = direction_matrix(image) * np.asarray(image.GetSpacing())  # columns: voxel edge vectors
    return float(np.abs(np.asarray(unit_direction) @ axis_vectors).sum())


def touches_border(image_shape_zyx: tuple[int, ...], bbox_slices: tuple[slice, ...], axes=None) -> bool:
    """True when a bounding box (numpy slices) reaches the first or last voxel of any axis (of ``axes``, numpy
    order, when given)."""
    return any((box.start == 0 or box.stop == size) for axis, (box, size) in enumerate(zip(bbox_slices, image_shape_zyx))
               if axes is None or axis in axes)

