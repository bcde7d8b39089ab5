"""Acquisition of a phantom: size presets, voxel grid (random in-plane spacing and slice thickness, field of view
cropped around the spine), scanner blur and noise, and the stored orientation (direction cosines).

The anatomy is rendered on an axis-aligned LPS grid; the stored orientation only permutes / flips the voxel axes
(SimpleITK's DICOMOrient) and sets the matching direction cosines, so every orientation holds the same anatomy at
the same world coordinates.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from vfscreen.phantom.anatomy import SpineCase
from vfscreen.phantom.rendering import Grid
from vfscreen.phantom.shapes import shapes_bbox

HU_RANGE = (-1024, 3071)
NOISE_CORRELATION_VOXELS = 0.6  # Gaussian kernel sigma of the noise texture
ALL_ORIENTATIONS = tuple("".join(pair[sign] for pair, sign in zip(permuted, signs))
                         for permuted in itertools.permutations((("L", "R"), ("P", "A"), ("S", "I")))
                         for signs in itertools.product((0, 1), repeat=3))
COMMON_ORIENTATIONS = ("RAS", "LPS", "LAS", "LPI", "RAI")


@dataclass(frozen=True)
class Preset:
    """Size / resolution preset of a generated dataset."""
    name: str
    inplane_spacing_mm: tuple[float, float]
    slice_thickness_mm: tuple[float, float]
    supersampling: int  # sub-voxels per axis for partial volume
    whole_vertebrae: tuple[int, int]  # vertebrae completely inside the field of view
    num_cases: int  # defaults of the CLI
    num_test_cases: int
    lateral_margin_mm: tuple[float, float] = (4.0, 15.0)
    anterior_margin_mm: tuple[float, float] = (10.0, 35.0)
    posterior_air_mm: tuple[float, float] = (3.0, 15.0)
    noise_sigma_hu: tuple[float, float] = (10.0, 40.0)
    blur_sigma_mm: tuple[float, float] = (0.3, 0.8)
    trabecular_texture_hu: tuple[float, float] = (15.0, 45.0)  # standard deviation of the cancellous texture
    orientation: str | None = None  # None: random per case
    # Probability of drawing the stored orientation from all 48 axis permutations / flips (PIR, ASL, ...) instead of
    # the common ones (RAS, LPS, LAS, LPI, RAI, which differ only by flips).
    any_orientation_probability: float = 0.5

    def with_changes(self, **changes) -> "Preset":
        return replace(self, **changes)


PRESETS = {
    # Coarse and small, so that the whole pipeline trains on a CPU.
    "demo": Preset("demo", inplane_spacing_mm=(1.6, 2.2), slice_thickness_mm=(2.0, 3.0), supersampling=2,
                   whole_vertebrae=(5, 8), num_cases=48, num_test_cases=12),
    # Clinical-like: ~0.6-0.9 mm in-plane, 0.8-1.5 mm slices, longer fields of view.
    "full": Preset("full", inplane_spacing_mm=(0.6, 0.9), slice_thickness_mm=(0.8, 1.5), supersampling=2,
                   whole_vertebrae=(7, 13), num_cases=160, num_test_cases=40,
                   lateral_margin_mm=(10.0, 40.0), anterior_margin_mm=(30.0, 80.0)),
}


@dataclass
class Acquisition:
    grid: Grid
    orientation: str
    noise_sigma_hu: float
    blur_sigma_mm: float


def sample_acquisition(rng: np.random.Generator, case: SpineCase, preset: Preset) -> Acquisition:
    """Spacing, field of view (all whole vertebrae inside, skin and some air behind the back), blur, noise and
    orientation of one case."""
    inplane = rng.uniform(*preset.inplane_spacing_mm)
    spacing = np.array([inplane, inplane, rng.uniform(*preset.slice_thickness_mm)])
    boxes = [shapes_bbox(case.vertebra_shapes(i)) for i in case.whole]
    low = np.min([b[0] for b in boxes], axis=0)
    high = np.max([b[1] for b in boxes], axis=0)
    tissues = case.tissues
    skin = max(v.centre[1] + v.half_depth + 2 * v.canal_half_depth + v.arch_thickness
               + v.spinous_length * math.cos(math.radians(v.spinous_angle_deg)) for v in case.vertebrae
               if case.fov_z[0] - 40 < v.centre[2] < case.fov_z[1] + 40) + tissues.skin_behind_spinous_mm
    low = np.array([low[0] - rng.uniform(*preset.lateral_margin_mm), low[1] - rng.uniform(*preset.anterior_margin_mm),
                    case.fov_z[0]])
    high = np.array([high[0] + rng.uniform(*preset.lateral_margin_mm),
                     max(high[1], skin) + rng.uniform(*preset.posterior_air_mm), case.fov_z[1]])
    size = tuple(int(math.ceil((high[axis] - low[axis]) / spacing[axis])) for axis in range(3))
    grid = Grid(origin=low + spacing / 2, spacing=spacing, size=size, supersampling=preset.supersampling)
    if rng.random() < 1.0 - preset.any_orientation_probability:
        orientation = COMMON_ORIENTATIONS[rng.integers(len(COMMON_ORIENTATIONS))]
    else:
        orientation = ALL_ORIENTATIONS[rng.integers(len(ALL_ORIENTATIONS))]
    return Acquisition(grid, preset.orientation or orientation, rng.uniform(*preset.noise_sigma_hu),
                       rng.uniform(*preset.blur_sigma_mm))


def apply_scanner(hu: np.ndarray, acquisition: Acquisition, rng: np.random.Generator) -> np.ndarray:
    """Blur (scanner point-spread) + Gaussian noise, rounded to int16 HU. ``hu`` is (nz, ny, nx) float32."""
    if acquisition.blur_sigma_mm > 0:
        sigma_voxels = acquisition.blur_sigma_mm / acquisition.grid.spacing[::-1]  # (z, y, x)
        hu = ndimage.gaussian_filter(hu, sigma=sigma_voxels, mode="nearest")
    if acquisition.noise_sigma_hu > 0:  # spatially correlated, like reconstructed CT noise
        noise = ndimage.gaussian_filter(rng.standard_normal(size=hu.shape, dtype=np.float32), NOISE_CORRELATION_VOXELS)
        hu = hu + noise * np.float32(acquisition.noise_sigma_hu / max(float(noise.std()), 1e-6))
    return np.clip(np.rint(hu), *HU_RANGE).astype(np.int16)


def to_image(array_lps: np.ndarray, grid: Grid, orientation: str) -> sitk.Image:
    """A (nz, ny, nx) array on the LPS grid -> SimpleITK image stored in ``orientation`` (exact permutation/flip)."""
    image = sitk.GetImageFromArray(array_lps)
    image.SetSpacing([float(s) for s in grid.spacing])
    image.SetOrigin([float(o) for o in grid.origin])
    image.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return sitk.DICOMOrient(image, orientation) if orientation != "LPS" else image
