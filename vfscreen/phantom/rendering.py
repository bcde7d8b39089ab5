"""Rasterise a :class:`SpineCase` on an axis-aligned world (LPS) grid: CT in HU and labels in VerSe ids.

Partial volume: every output voxel is the mean of ``supersampling``^3 sub-voxels (CT) and the majority of their
labels (label mask), computed slab by slab so memory stays bounded for the ``full`` preset.
Arrays are numpy (z, y, x) = (nz, ny, nx); index (k, j, i) lies at world ``origin + (i, j, k) * spacing``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from vfscreen import labels
from vfscreen.phantom import shapes
from vfscreen.phantom.anatomy import SpineCase

SLAB_SLICES = 16  # output slices rendered at once
TRABECULAR_SCALE_MM = 1.2  # correlation length of the cancellous-bone texture


@dataclass
class Grid:
    origin: np.ndarray  # (3,) world mm of voxel (0, 0, 0)'s centre
    spacing: np.ndarray  # (3,) mm along x, y, z
    size: tuple[int, int, int]  # (nx, ny, nz)
    supersampling: int = 1

    def axis_centres(self, axis: int, supersampling: int = 1) -> np.ndarray:
        """Voxel-centre coordinates along ``axis`` of the grid subdivided ``supersampling`` times."""
        fine = self.spacing[axis] / supersampling
        count = self.size[axis] * supersampling
        return self.origin[axis] - self.spacing[axis] / 2 + (np.arange(count) + 0.5) * fine


def case_shapes(case: SpineCase) -> list:
    """All solid shapes in painting order: canal, discs, ribs and sacrum (labelled as landmarks:
    vfscreen.labels.RIB_SOURCE_ID, SACRUM_VERSE_ID), then each vertebra."""
    tissues, vertebrae = case.tissues, case.vertebrae
    result = []
    for vertebra, disc in zip(vertebrae, case.disc_heights):
        result.append(shapes.EllipticCylinder(
            shapes.world_point(vertebra, (0.0, vertebra.canal_centre_v(), 0.0)), vertebra.axes,
            vertebra.canal_half_width, vertebra.canal_half_depth, vertebra.nominal_height / 2 + disc / 2 + 1.0,
            tissues.canal_hu))
    for upper, lower in zip(vertebrae[:-1], vertebrae[1:]):
        axes = upper.axes + lower.axes
        superior = axes[2] / np.linalg.norm(axes[2])
        anterior = axes[1] - np.dot(axes[1], superior) * superior
        anterior /= np.linalg.norm(anterior)
        frame = np.stack([np.cross(superior, anterior), anterior, superior])
        result.append(shapes.EllipticCylinder(
            (upper.centre + lower.centre) / 2, frame, 0.52 * (upper.half_width + lower.half_width),
            0.5 * (upper.half_depth + lower.half_depth), np.linalg.norm(upper.centre - lower.centre) / 2,
            tissues.disc_hu, exponent=2.3))
    for vertebra in vertebrae:
        if vertebra.name.startswith("T"):
            result.extend(_ribs(vertebra))
    result.append(_sacrum(vertebrae[-1], case.disc_heights[-1]))
    for index in range(len(vertebrae)):
        result.extend(case.vertebra_shapes(index))
    return result


def _ribs(vertebra) -> list:
    lateral, anterior, superior = vertebra.axes
    rib_hu = 0.5 * (vertebra.cortical_hu + vertebra.cancellous_hu)
    ribs = []
    for side in (-1.0, 1.0):
        head = shapes.world_point(vertebra, (side * 0.9 * vertebra.half_width, -0.75 * vertebra.half_depth,
                                             vertebra.arch_centre_w()))
        direction = side * np.cos(np.deg2rad(40)) * lateral - np.sin(np.deg2rad(40)) * anterior - 0.15 * superior
        ribs.append(shapes.Capsule(head, head + 110.0 * direction, superior, 5.5, 4.0, rib_hu, labels.RIB_SOURCE_ID,
                                    taper=0.1))
    return ribs


def _sacrum(last, disc_below: float):
    lateral, anterior, superior = last.axes
    tilt = np.deg2rad(35.0)
    sacral_superior = np.cos(tilt) * superior + np.sin(tilt) * anterior
    sacral_anterior = np.cos(tilt) * anterior - np.sin(tilt) * superior
    frame = np.stack([lateral, sacral_anterior, sacral_superior])
    centre = last.centre - superior * (max(last.heights) / 2 + disc_below) - sacral_superior * 28.0
    return shapes.EllipticCylinder(centre, frame, 1.15 * last.half_width, last.half_depth, 28.0,
                                   0.4 * last.cortical_hu + 0.6 * last.cancellous_hu, exponent=2.5,
                                   label=labels.SACRUM_VERSE_ID)


def _background(case: SpineCase, x, y, z) -> np.ndarray:
    """Soft tissues (fat, muscle, lungs, aorta, trachea) around the spine; (nz, ny, nx) float32 HU."""
    t, vertebrae = case.tissues, case.vertebrae
    order = np.argsort([v.centre[2] for v in vertebrae])

    def along_spine(values):  # (nz, 1, 1) profile interpolated at the slices' z
        return np.interp(z, [vertebrae[i].centre[2] for i in order], [values[i] for i in order])

    track_x = along_spine([v.centre[0] for v in vertebrae])
    track_y = along_spine([v.centre[1] for v in vertebrae])
    level = along_spine([v.level for v in vertebrae])
    half_width = along_spine([v.half_width for v in vertebrae])
    half_depth = along_spine([v.half_depth for v in vertebrae])
    canal_depth = along_spine([v.canal_half_depth for v in vertebrae])
    reach = along_spine([v.half_depth + 2 * v.canal_half_depth + v.arch_thickness
                         + v.spinous_length * np.cos(np.deg2rad(v.spinous_angle_deg)) for v in vertebrae])
    neck = np.clip((level - 4.0) / 4.0, 0.0, 1.0)  # 0 in the neck, 1 from T2 down
    trunk_width = t.trunk_half_width * (0.4 + 0.6 * neck)
    trunk_depth = t.trunk_half_depth * (0.55 + 0.45 * neck)
    skin_y = track_y + reach + t.skin_behind_spinous_mm
    dx, dy = x - track_x, y - (skin_y - trunk_depth)
    trunk = (dx / trunk_width) ** 2 + (dy / trunk_depth) ** 2
    inner = (dx / (trunk_width - t.subcutaneous_fat_mm)) ** 2 + (dy / (trunk_depth - t.subcutaneous_fat_mm)) ** 2
    hu = np.full(np.broadcast_shapes(x.shape, y.shape, z.shape), -1000.0, dtype=np.float32)
    hu[trunk <= 1.0] = t.fat_hu
    hu[inner <= 1.0] = t.soft_hu
    chest_wall = t.subcutaneous_fat_mm + 18.0
    chest = (dx / (trunk_width - chest_wall)) ** 2 + (dy / (trunk_depth - chest_wall)) ** 2 <= 1.0
    lateral_distance = np.abs(x - track_x)
    diaphragm = 17.3 + 1.8 * np.clip((lateral_distance - half_width) / 70.0, 0.0, 1.0)  # dome, in spine levels
    lungs = chest & (level > 7.3) & (level < diaphragm) & (lateral_distance > half_width + 9.0) \
        & (y < track_y + half_depth + 2.2 * canal_depth)
    hu[lungs] = t.lung_hu
    sx, sy = x - track_x, y - track_y
    for side in (-1.0, 1.0):  # erector spinae
        muscle = ((sx - side * (half_width + 8.0)) / (0.9 * half_width + 8.0)) ** 2 \
            + ((sy - (half_depth + 2 * canal_depth + 22.0)) / 24.0) ** 2 <= 1.0
        hu[muscle & (trunk <= 1.0)] = t.muscle_hu
        psoas_radius = np.clip((level - 18.5) * 4.5, 0.0, 22.0) + 1e-3
        psoas = ((sx - side * (half_width + 0.8 * psoas_radius)) / psoas_radius) ** 2 \
            + ((sy + 0.2 * half_depth) / (0.9 * psoas_radius)) ** 2 <= 1.0
        hu[psoas & (level > 18.7)] = t.muscle_hu
    aorta = ((sx - (0.6 * half_width + 0.7 * t.aorta_radius)) ** 2
             + (sy + half_depth + 0.7 * t.aorta_radius) ** 2 <= t.aorta_radius ** 2) & (level > 10.0) & (level < 22.5)
    hu[aorta] = t.blood_hu
    trachea = (sx ** 2 + (sy + half_depth + 22.0) ** 2 <= 81.0) & (level < 10.0)
    hu[trachea] = -1000.0
    return hu


def _paint(shape, box, hu, label, axes_coords) -> bool:
    """Paint ``shape`` on the part of the block inside its bounding box ``box``; False if they do not overlap."""
    low, high = box
    slices, coords = [], []
    for axis, centres in enumerate(axes_coords):  # x, y, z
        start, stop = np.searchsorted(centres, low[axis]), np.searchsorted(centres, high[axis], side="right")
        if stop <= start:
            return False
        slices.append(slice(start, stop))
        coords.append(centres[start:stop])
    index = (slices[2], slices[1], slices[0])
    # views: painting writes through
    shape.paint(hu[index], label[index], coords[0][None, None, :], coords[1][None, :, None], coords[2][:, None, None])
    return True


def render(case: SpineCase, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """(hu (nz, ny, nx) float32, labels (nz, ny, nx) uint8 VerSe ids) on ``grid``.

    Soft tissue is evaluated at the output voxel centres; bones, discs and canal on the supersampled grid."""
    ss = grid.supersampling
    nx, ny, nz = grid.size
    xs, ys, zs = (grid.axis_centres(axis, ss) for axis in range(3))
    coarse_x, coarse_y, coarse_z = (grid.axis_centres(axis) for axis in range(3))
    boxed_shapes = [(shape, shape.bbox()) for shape in case_shapes(case)]
    hu_out = np.empty((nz, ny, nx), dtype=np.float32)
    label_out = np.zeros((nz, ny, nx), dtype=np.uint8)
    for first in range(0, nz, SLAB_SLICES):
        last = min(first + SLAB_SLICES, nz)
        blocks = (last - first, ss, ny, ss, nx, ss)
        background = _background(case, coarse_x[None, None, :], coarse_y[None, :, None],
                                 coarse_z[first:last, None, None])
        hu = np.empty((blocks[0] * ss, ny * ss, nx * ss), dtype=np.float32)
        hu.reshape(blocks)[...] = background[:, None, :, None, :, None]
        label = np.zeros(hu.shape, dtype=np.uint8)
        slab_z = zs[first * ss:last * ss]
        z_low, z_high = slab_z[0], slab_z[-1]
        for shape, box in boxed_shapes:
            if box[1][2] >= z_low and box[0][2] <= z_high:
                _paint(shape, box, hu, label, (xs, ys, slab_z))
        hu_out[first:last] = _block_reduce(hu, blocks, np.add) / ss ** 3
        label_out[first:last] = _majority(label, blocks)
    return hu_out, label_out


def _block_reduce(array: np.ndarray, blocks: tuple, ufunc) -> np.ndarray:
    """Reduce each supersampling block of ``array`` (fine (nz*ss, ny*ss, nx*ss) -> (nz, ny, nx)) with a binary
    ufunc (np.add, np.maximum, ...), combining strided views (much faster than reducing short inner axes)."""
    result = array.reshape(blocks)
    for axis in (5, 3, 1):
        parts = [result[(slice(None),) * axis + (k,)] for k in range(result.shape[axis])]
        combined = parts[0].copy()
        for part in parts[1:]:
            ufunc(combined, part, out=combined)
        result = combined
    return result


def _majority(label: np.ndarray, blocks: tuple) -> np.ndarray:
    """Most frequent label of each supersampling block (background wins ties)."""
    ss = blocks[1]
    if ss == 1:
        return label.reshape(blocks)[:, 0, :, 0, :, 0]
    high = _block_reduce(label, blocks, np.maximum)
    low = _block_reduce(label, blocks, np.minimum)
    mixed = np.nonzero(high != low)
    if not mixed[0].size:
        return high
    sub_voxels = label.reshape(blocks).transpose(0, 2, 4, 1, 3, 5)[mixed].reshape(len(mixed[0]), -1)
    values = np.unique(sub_voxels)
    values = np.concatenate([[0], values[values != 0]]).astype(np.uint8)
    counts = np.stack([(sub_voxels == value).sum(axis=1) for value in values])
    result = high.copy()
    result[mixed] = values[np.argmax(counts, axis=0)]
    return result


def add_trabecular_texture(hu: np.ndarray, verse_labels: np.ndarray, spacing: np.ndarray,
                           rng: np.random.Generator, amplitude_hu: float) -> np.ndarray:
    """Heterogeneous cancellous bone: smooth random texture added to vertebra voxels in the cancellous HU range.
    ``hu``, ``verse_labels``: (nz, ny, nx); ``spacing``: (x, y, z) mm."""
    if amplitude_hu <= 0:
        return hu
    texture = ndimage.gaussian_filter(rng.standard_normal(size=hu.shape, dtype=np.float32),
                                      TRABECULAR_SCALE_MM / np.asarray(spacing)[::-1])
    texture *= np.float32(amplitude_hu / max(float(texture.std()), 1e-6))
    weight = np.isin(verse_labels, labels.SPINE_ORDER) * np.clip((550.0 - hu) / 200.0, 0.0, 1.0)
    return hu + texture * weight.astype(np.float32)
