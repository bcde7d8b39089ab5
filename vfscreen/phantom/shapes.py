"""Solid primitives of the phantom and the primitives that make one vertebra.

Every primitive has a conservative world bounding box (``bbox`` -> (low (3,), high (3,)) mm) and ``paint(hu, label,
x, y, z)`` which assigns its material to the voxels it contains. ``hu`` / ``label`` are (nz, ny, nx) blocks of an
axis-aligned world grid whose voxel centres are ``x`` (1, 1, nx), ``y`` (1, ny, 1), ``z`` (nz, 1, 1) in LPS mm.
Primitives are painted in order; later ones overwrite earlier ones.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vfscreen.phantom.vertebra import Vertebra


def to_local(x, y, z, centre: np.ndarray, axes: np.ndarray):
    """World grid coordinates -> local (u, v, w) along the rows of ``axes`` (3, 3)."""
    dx, dy, dz = x - centre[0], y - centre[1], z - centre[2]
    return tuple(dx * axis[0] + dy * axis[1] + dz * axis[2] for axis in axes)


def fill(hu, label, mask, value: float, label_value: int) -> None:
    """Paint one material into ``mask``: its HU everywhere, its label where it has one (0 keeps what lies below)."""
    hu[mask] = value
    if label_value:
        label[mask] = label_value


def local_box_to_world(centre, axes, low, high):
    """World bounding box of the local box [low, high] (each (3,))."""
    corners = np.array([[a, b, c] for a in (low[0], high[0]) for b in (low[1], high[1]) for c in (low[2], high[2])])
    world = centre + corners @ axes
    return world.min(axis=0), world.max(axis=0)


class BodyShape:
    """Vertebral body: cortical shell + cancellous core (+ condensation band under a collapsed upper endplate)."""

    def __init__(self, vertebra: Vertebra):
        self.v = vertebra
        self.label = vertebra.verse_id

    def bbox(self):
        v = self.v
        grow = 1.0 + v.waist * 1.5
        extent = np.array([v.half_width * grow, v.half_depth * grow, v.nominal_height / 2 + 2.0])
        return local_box_to_world(v.centre, v.axes, -extent, extent)

    def _cross_section(self, u, v_ap, w, inset: float):
        vert = self.v
        scale = 1.0 + vert.waist * np.minimum((w / (vert.nominal_height / 2)) ** 2, 1.5)
        exponent = np.where(v_ap >= 0, vert.exponent_anterior, vert.exponent_posterior)
        return ((np.abs(u) / np.maximum(vert.half_width * scale - inset, 1e-3)) ** exponent
                + (np.abs(v_ap) / np.maximum(vert.half_depth * scale - inset, 1e-3)) ** exponent) <= 1.0

    def paint(self, hu, label, x, y, z):
        vert = self.v
        u, v_ap, w = to_local(x, y, z, vert.centre, vert.axes)
        top, bottom = vert.surfaces(u, v_ap / vert.half_depth)
        between = (w <= top) & (w >= bottom)
        outer = between & self._cross_section(u, v_ap, w, 0.0)
        inner = outer & (w <= top - vert.shell_mm) & (w >= bottom + vert.shell_mm) \
            & self._cross_section(u, v_ap, w, vert.shell_mm)
        hu[outer] = vert.cortical_hu
        if vert.sclerosis_hu:  # condensed trabeculae under the collapsed upper endplate
            band = vert.cancellous_hu + vert.sclerosis_hu * np.clip(1.0 - (top - w) / 4.0, 0.0, 1.0)
            hu[inner] = band[inner]
        else:
            hu[inner] = vert.cancellous_hu
        label[outer] = self.label


class ArchShape:
    """Neural arch (pedicles + laminae) as an elliptic ring around the spinal canal, behind the body."""

    def __init__(self, vertebra: Vertebra, hu: float):
        self.v, self.hu, self.label = vertebra, hu, vertebra.verse_id
        self.half_height = 0.3 * vertebra.nominal_height

    def bbox(self):
        v = self.v
        lateral = v.canal_half_width + v.arch_thickness
        low = np.array([-lateral, v.canal_centre_v() - v.canal_half_depth - v.arch_thickness,
                        v.arch_centre_w() - self.half_height])
        high = np.array([lateral, -0.97 * v.half_depth, v.arch_centre_w() + self.half_height])
        return local_box_to_world(v.centre, v.axes, low, high)

    def paint(self, hu, label, x, y, z):
        v = self.v
        u, v_ap, w = to_local(x, y, z, v.centre, v.axes)
        dv = v_ap - v.canal_centre_v()
        inner = (u / v.canal_half_width) ** 2 + (dv / v.canal_half_depth) ** 2
        outer = ((u / (v.canal_half_width + v.arch_thickness)) ** 2
                 + (dv / (v.canal_half_depth + v.arch_thickness)) ** 2)
        # behind the body only (never above / below it, where it would change the measured posterior height)
        mask = (outer <= 1.0) & (inner > 1.0) & (v_ap <= -0.97 * v.half_depth) \
            & (np.abs(w - v.arch_centre_w()) <= self.half_height)
        fill(hu, label, mask, self.hu, self.label)


class Capsule:
    """Segment p0 -> p1 (world mm) with an elliptic, tapering cross-section (radii along e1 and e2)."""

    def __init__(self, p0: np.ndarray, p1: np.ndarray, e1: np.ndarray, radius1: float, radius2: float, hu: float,
                 label: int = 0, taper: float = 0.3):
        self.p0, self.p1, self.radius1, self.radius2, self.hu, self.label, self.taper = (
            p0, p1, radius1, radius2, hu, label, taper)
        self.length = float(np.linalg.norm(p1 - p0))
        self.direction = (p1 - p0) / self.length
        e1 = e1 - np.dot(e1, self.direction) * self.direction
        self.e1 = e1 / np.linalg.norm(e1)
        self.e2 = np.cross(self.direction, self.e1)

    def bbox(self):
        reach = max(self.radius1, self.radius2)
        return np.minimum(self.p0, self.p1) - reach, np.maximum(self.p0, self.p1) + reach

    def paint(self, hu, label, x, y, z):
        dx, dy, dz = x - self.p0[0], y - self.p0[1], z - self.p0[2]
        along = dx * self.direction[0] + dy * self.direction[1] + dz * self.direction[2]
        t = np.clip(along, 0.0, self.length)
        shrink = 1.0 - self.taper * t / self.length
        c1 = dx * self.e1[0] + dy * self.e1[1] + dz * self.e1[2]
        c2 = dx * self.e2[0] + dy * self.e2[1] + dz * self.e2[2]
        mask = ((c1 / (self.radius1 * shrink)) ** 2 + (c2 / (self.radius2 * shrink)) ** 2
                + ((along - t) / (self.radius1 * shrink)) ** 2) <= 1.0
        fill(hu, label, mask, self.hu, self.label)


@dataclass
class EllipticCylinder:
    """Superelliptic cylinder in a local frame: |u/a|^p + |v/b|^p <= 1, |w| <= half_length (discs, canal)."""
    centre: np.ndarray
    axes: np.ndarray
    half_width: float
    half_depth: float
    half_length: float
    hu: float
    exponent: float = 2.0
    label: int = 0

    def bbox(self):
        extent = np.array([self.half_width, self.half_depth, self.half_length])
        return local_box_to_world(self.centre, self.axes, -extent, extent)

    def paint(self, hu, label, x, y, z):
        u, v, w = to_local(x, y, z, self.centre, self.axes)
        mask = ((np.abs(u) / self.half_width) ** self.exponent + (np.abs(v) / self.half_depth) ** self.exponent
                <= 1.0) & (np.abs(w) <= self.half_length)
        fill(hu, label, mask, self.hu, self.label)


def world_point(vertebra: Vertebra, local) -> np.ndarray:
    return vertebra.centre + np.asarray(local, dtype=float) @ vertebra.axes


def process_shapes(vertebra: Vertebra, hu: float) -> list[Capsule]:
    """Spinous process, transverse processes and articular processes of one vertebra (labelled)."""
    v = vertebra
    lateral, anterior, superior = v.axes
    arch_w = v.arch_centre_w()
    back_v = v.canal_centre_v() - v.canal_half_depth - 0.5 * v.arch_thickness
    slope = np.deg2rad(v.spinous_angle_deg)
    spinous_start = world_point(v, (0.0, back_v + 1.0, arch_w))
    spinous_end = spinous_start + v.spinous_length * (-np.cos(slope) * anterior - np.sin(slope) * superior)
    shapes = [Capsule(spinous_start, spinous_end, superior, v.spinous_half_height, 0.35 * v.arch_thickness + 1.0,
                      hu, v.verse_id, taper=0.35)]
    sweep = np.deg2rad(v.transverse_angle_deg)
    for side in (-1.0, 1.0):
        root = world_point(v, (side * (v.canal_half_width + 0.5 * v.arch_thickness), v.canal_centre_v(), arch_w))
        tip = root + v.transverse_length * (side * np.cos(sweep) * lateral - np.sin(sweep) * anterior)
        shapes.append(Capsule(root, tip, superior, 0.45 * v.arch_thickness + 1.5, 0.4 * v.arch_thickness + 1.0,
                              hu, v.verse_id, taper=0.3))
        facet_u = side * (v.canal_half_width + 0.2 * v.arch_thickness)
        facet_v = v.canal_centre_v() - 0.3 * v.canal_half_depth
        for sign in (-1.0, 1.0):  # superior and inferior articular processes
            start = world_point(v, (facet_u, facet_v, arch_w + sign * 0.2 * v.nominal_height))
            end = world_point(v, (facet_u, facet_v - 0.1 * v.canal_half_depth,
                                  arch_w + sign * 0.45 * v.nominal_height))
            shapes.append(Capsule(start, end, lateral, 0.3 * v.arch_thickness + 1.0, 0.4 * v.arch_thickness + 1.0,
                                  hu, v.verse_id, taper=0.2))
    return shapes


def osteophyte_shapes(vertebra: Vertebra) -> list[Capsule]:
    """Bony spurs growing from the anterolateral endplate rims towards the neighbouring vertebra (labelled)."""
    v = vertebra
    lateral, anterior, superior = v.axes
    result = []
    for u_fraction, rim, length, radius in v.osteophytes:
        u = u_fraction * v.half_width
        edge = v.half_depth * (1.0 + v.waist) * (1.0 - abs(u_fraction) ** v.exponent_anterior) ** (
            1.0 / v.exponent_anterior)
        top, bottom = v.surfaces(np.array(u), np.array(edge / v.half_depth))
        start = world_point(v, (u, edge - 0.5 * radius, (float(top) - 1.0) if rim > 0 else (float(bottom) + 1.0)))
        end = start + length * (0.55 * anterior + 0.85 * rim * superior)
        result.append(Capsule(start, end, lateral, radius, radius, 0.8 * v.cortical_hu, v.verse_id, taper=0.6))
    return result


def vertebra_shapes(vertebra: Vertebra, posterior_hu: float) -> list:
    """Labelled shapes of one vertebra: arch, processes, osteophytes, then the body (painted last, it owns the
    overlap)."""
    return [ArchShape(vertebra, posterior_hu), *process_shapes(vertebra, posterior_hu),
            *osteophyte_shapes(vertebra), BodyShape(vertebra)]


def shapes_bbox(shapes) -> tuple[np.ndarray, np.ndarray]:
    boxes = [shape.bbox() for shape in shapes]
    return np.min([b[0] for b in boxes], axis=0), np.max([b[1] for b in boxes], axis=0)
