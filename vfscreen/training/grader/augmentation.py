"""The fracture-specific augmentation set of Wei et al. 2022, built from batchgeneratorsv2 transforms.

Order (parameters from the plan's ``grader.augmentation``; p = ``probability``, 0.7 in the paper):
  1. random placement of the crop into the patch (always; the authors' "random padding"),
  2. ``mask_boxes`` boxes (sides ``mask_box_size`` voxels) set to 0 in all channels, before rotation (always),
  3. with p: intensity jitter on the two image channels: x -> (x * s) ** g, s in ``intensity_scale`` and g in
     ``intensity_power`` per channel, g below or above 1 with equal probability (authors' RandomColor2rdScale3D),
  4. with p: Gaussian noise of sigma ``noise_sigma`` on the two image channels only,
  5. with p each: rotation by +-``rotation_degrees`` about every axis, zoom in ``zoom`` per axis (one resampling;
     image channels linear, the mask channel nearest-neighbour),
  6. with p: shift by up to +-``shift_voxels`` per axis (integer, zero padded),
  7. ``mask_boxes`` boxes set to 0 again, after rotation (always).
Validation and prediction use only the centred placement (no randomness).

Optional switches that reproduce the authors' code where it differs from the above (defaults: as above):
  ``switch``: "independent" (default: each of 3-6 with its own p) or "shared" (the authors' code: ONE switch with p
  turns 3-6 on together, or none of them),
  ``mask_box_probability`` (default 1): each box of a masking step is drawn with this probability (0.5 in their code),
  ``isotropic_zoom`` (default false): one zoom factor for all axes (their code), instead of one per axis.

Each call is seeded (``item_seed`` from the sampler), so an augmented view is a pure function of the crop and the
seed, whichever worker process computes it.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
from batchgeneratorsv2.transforms.noise.blank_rectangle import BlankRectangleTransform
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.random import RandomTransform

from vfscreen.errors import ConfigError
from vfscreen.preprocessing.crops import place_in_patch

_REQUIRED_KEYS = ("probability", "mask_boxes", "mask_box_size", "zoom", "noise_sigma", "shift_voxels",
                  "rotation_degrees", "intensity_scale", "intensity_power")


class SharedBlankRectangleTransform(BlankRectangleTransform):
    """BlankRectangleTransform whose boxes cut through all channels at the same place (as in the authors' code)."""

    def get_parameters(self, image: torch.Tensor, **kwargs) -> dict:
        params = super().get_parameters(image=image[:1])
        num_channels = image.shape[0]
        return {"apply_channel": params["apply_channel"] * num_channels,
                "rectangles": params["rectangles"] * num_channels}


class SplitMaskChannel(BasicTransform):
    """(C, ...) 'image' -> CT-window channels as 'image' + the mask channel as 'segmentation', so intensity
    transforms skip the mask and spatial transforms resample it nearest-neighbour."""

    def __init__(self, num_image_channels: int):
        super().__init__()
        self.num_image_channels = int(num_image_channels)

    def apply(self, data_dict, **params):
        stacked = data_dict.pop("image")
        data_dict["image"] = stacked[:self.num_image_channels].contiguous()
        if stacked.shape[0] > self.num_image_channels:
            data_dict["segmentation"] = stacked[self.num_image_channels:].contiguous()
        return data_dict


class MergeMaskChannel(BasicTransform):
    def apply(self, data_dict, **params):
        mask = data_dict.pop("segmentation", None)
        if mask is not None:
            data_dict["image"] = torch.cat([data_dict["image"], mask.to(data_dict["image"].dtype)])
        return data_dict


class PowerSampler:
    """Exponent of the power curve: uniform in [lo, 1] or [1, hi] with equal probability (picklable for workers)."""

    def __init__(self, power_range):
        self.low, self.high = float(power_range[0]), float(power_range[1])

    def __call__(self, *args, **kwargs) -> float:
        if np.random.uniform() < 0.5:
            return float(np.random.uniform(self.low, min(1.0, self.high)))
        return float(np.random.uniform(max(1.0, self.low), self.high))


def check_augmentation_plan(augmentation_plan: dict) -> None:
    missing = [key for key in _REQUIRED_KEYS if key not in augmentation_plan]
    if missing:
        raise ConfigError(f"grader augmentation plan lacks {missing}; re-run vfscreen_plan_and_preprocess")
    power = augmentation_plan["intensity_power"]
    if not (0 < float(power[0]) <= float(power[1])):
        raise ConfigError(f"grader augmentation plan: intensity_power must be [low, high] with 0 < low <= high, "
                          f"got {power}")


def build_transforms(augmentation_plan: dict, patch_size, num_image_channels: int = 2) -> ComposeTransforms:
    """The augmentation after placement, acting on {'image': (C, *patch_size) float tensor} whose first
    ``num_image_channels`` channels are CT windows and the rest (0 or 1) the mask channel."""
    check_augmentation_plan(augmentation_plan)
    shared = augmentation_plan.get("switch", "independent") == "shared"
    box_probability = float(augmentation_plan.get("mask_box_probability", 1.0))
    patch_size = tuple(int(s) for s in patch_size)
    p = float(augmentation_plan["probability"])
    box_low, box_high = (int(v) for v in augmentation_plan["mask_box_size"])
    num_boxes = int(augmentation_plan["mask_boxes"])
    rotation = math.radians(float(augmentation_plan["rotation_degrees"]))
    shift = int(augmentation_plan["shift_voxels"])

    def mask_boxes():
        if box_probability >= 1.0:
            return SharedBlankRectangleTransform(rectangle_size=tuple((box_low, box_high + 1) for _ in patch_size),
                                                 rectangle_value=0.0, num_rectangles=num_boxes)
        return ComposeTransforms([RandomTransform(SharedBlankRectangleTransform(
            rectangle_size=tuple((box_low, box_high + 1) for _ in patch_size), rectangle_value=0.0,
            num_rectangles=1), box_probability) for _ in range(num_boxes)])

    each = 1.0 if shared else p  # with one shared switch, the transforms inside it always act

    intensity_jitter = ComposeTransforms([
        MultiplicativeBrightnessTransform(tuple(augmentation_plan["intensity_scale"]), synchronize_channels=False),
        GammaTransform(PowerSampler(augmentation_plan["intensity_power"]), p_invert_image=0,
                       synchronize_channels=False, p_per_channel=1, p_retain_stats=0),
    ])
    rotation_and_zoom = SpatialTransform(
        patch_size, 0, random_crop=False, p_rotation=each, rotation=(-rotation, rotation), p_rot_per_axis=1,
        p_scaling=each, scaling=tuple(augmentation_plan["zoom"]),
        p_synchronize_scaling_across_axes=1 if augmentation_plan.get("isotropic_zoom", False) else 0,
        mode_seg="nearest", border_mode_seg="zeros", padding_mode_image="zeros")
    # no rotation/zoom -> no resampling: an integer crop around a random centre = an integer shift, zero padded
    integer_shift = SpatialTransform(
        patch_size, [s / 2 - shift for s in patch_size], random_crop=True, border_mode_seg="zeros")
    if shared:
        middle = [RandomTransform(ComposeTransforms([
            intensity_jitter, GaussianNoiseTransform(float(augmentation_plan["noise_sigma"]), p_per_channel=1),
            rotation_and_zoom, integer_shift]), p)]
    else:
        middle = [RandomTransform(intensity_jitter, p),
                  RandomTransform(GaussianNoiseTransform(float(augmentation_plan["noise_sigma"]), p_per_channel=1),
                                  p),
                  rotation_and_zoom, RandomTransform(integer_shift, p)]
    return ComposeTransforms([
        mask_boxes(),
        SplitMaskChannel(num_image_channels),
        *middle,
        MergeMaskChannel(),
        mask_boxes(),
    ])


def random_offset(crop_shape, patch_size, rng: np.random.Generator) -> tuple[int, ...]:
    """Uniform start index of a crop of ``crop_shape`` (spatial) inside ``patch_size`` (the random placement)."""
    return tuple(int(rng.integers(0, max(0, p - c) + 1)) for c, p in zip(crop_shape, patch_size))


class GraderAugmentation:
    """Callable (crop (C, d, h, w) float32 array, item_seed) -> augmented view (C, *patch_size) float32 tensor.

    ``patch_size`` in array order (D, H, W) (crops.patch_shape of the crop plan).
    """

    def __init__(self, augmentation_plan: dict, patch_size, num_image_channels: int = 2):
        self.patch_size = tuple(int(s) for s in patch_size)
        self.transforms = build_transforms(augmentation_plan, self.patch_size, num_image_channels)

    def __call__(self, crop: np.ndarray, item_seed: int) -> torch.Tensor:
        rng = np.random.default_rng(item_seed)
        offset = random_offset(crop.shape[1:], self.patch_size, rng)
        patch = torch.from_numpy(np.ascontiguousarray(place_in_patch(crop, self.patch_size, offset), dtype=np.float32))
        numpy_state = np.random.get_state()
        try:
            np.random.seed(int(rng.integers(0, 2**32)))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(rng.integers(0, 2**63)))
                view = self.transforms(image=patch)["image"]
        finally:
            np.random.set_state(numpy_state)
        return view.contiguous()


def centred_patch(crop: np.ndarray, patch_size) -> torch.Tensor:
    """Validation/prediction input: the crop centred in the patch (array order), no augmentation.
    Returns (C, *patch_size) float32."""
    patch = place_in_patch(crop, tuple(int(s) for s in patch_size))
    return torch.from_numpy(np.ascontiguousarray(patch, dtype=np.float32))
