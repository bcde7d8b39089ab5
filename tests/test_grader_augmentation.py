"""Grader augmentation: shape, determinism by seed, mask channel nearest-neighbour and noise-free, placement."""
import numpy as np
import torch
from grader_fakes import tiny_plans

from vfscreen.training.grader.augmentation import GraderAugmentation, centred_patch

PATCH = (16, 20, 18)


def make_crop() -> np.ndarray:
    rng = np.random.default_rng(0)
    crop = rng.uniform(0.2, 0.8, size=(3, 12, 14, 10)).astype(np.float32)
    crop[2] = 0.0
    crop[2, 2:10, 3:11, 2:8] = 22 / 28  # label-modulated mask of L3
    return crop


def augmentation_plan(probability=0.7) -> dict:
    plan = tiny_plans("Dataset970_X")["configurations"]["3d"]["grader"]["augmentation"]
    plan["probability"] = probability
    return plan


def test_views_are_deterministic_by_seed_and_differ_between_seeds():
    augment = GraderAugmentation(augmentation_plan(), PATCH)
    crop = make_crop()
    first, again, other = augment(crop, 11), augment(crop, 11), augment(crop, 12)
    assert first.shape == (3, *PATCH) and first.dtype == torch.float32
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_mask_channel_stays_nearest_neighbour_and_noise_free():
    augment = GraderAugmentation(augmentation_plan(probability=1.0), PATCH)  # every random transform applied
    crop = make_crop()
    for seed in range(5):
        view = augment(crop, seed)
        mask_values = np.unique(view[2].numpy())
        # no interpolated or noisy mask values: only background and the label's value
        assert np.isclose(mask_values[:, None], [0.0, 22 / 28], atol=1e-6).any(axis=1).all(), mask_values
        image_values = np.unique(view[:2].numpy())
        assert len(image_values) > 100  # CT channels were resampled and got noise


def test_without_random_transforms_only_placement_and_boxes_act():
    plan = augmentation_plan(probability=0.0)
    plan["mask_boxes"] = 0
    augment = GraderAugmentation(plan, PATCH)
    crop = make_crop()
    view = augment(crop, 3).numpy()
    nonzero = np.argwhere(view[0] != 0)
    start = nonzero.min(axis=0)
    np.testing.assert_array_equal(view[:, start[0]:start[0] + 12, start[1]:start[1] + 14, start[2]:start[2] + 10], crop)
    assert np.count_nonzero(view[0]) == np.count_nonzero(crop[0])
    centred = centred_patch(crop, PATCH).numpy()
    assert centred.shape == (3, *PATCH) and np.count_nonzero(centred[0]) == np.count_nonzero(crop[0])


def test_mask_boxes_blank_all_channels_together():
    plan = augmentation_plan(probability=0.0)
    plan["mask_box_size"] = [6, 6]
    augment = GraderAugmentation(plan, PATCH)
    crop = np.ones((3, *PATCH), dtype=np.float32)  # fills the patch: every zero comes from a box
    view = augment(crop, 5).numpy()
    zeros = view == 0
    assert zeros[0].any()
    assert np.array_equal(zeros[0], zeros[1]) and np.array_equal(zeros[0], zeros[2])
    assert zeros[0].sum() <= 2 * plan["mask_boxes"] * 6 ** 3  # boxes before and after rotation


def test_shared_switch_turns_the_random_transforms_on_together_or_not_at_all():
    # the authors' code: one p switch for intensity, noise, rotation, zoom and shift; boxes drawn with p 0.5 each
    plan = {**augmentation_plan(probability=0.7), "switch": "shared", "mask_box_probability": 0.0,
            "isotropic_zoom": True}
    off_plan = {**plan, "probability": 0.0}
    shared, off = GraderAugmentation(plan, PATCH), GraderAugmentation(off_plan, PATCH)
    crop = make_crop()
    untouched = [torch.equal(shared(crop, seed), off(crop, seed)) for seed in range(40)]
    assert 4 <= sum(untouched) <= 20  # ~30 % of views pass the switch untouched (12 expected of 40)
    independent = GraderAugmentation({**plan, "switch": "independent"}, PATCH)
    assert sum(torch.equal(independent(crop, seed), off(crop, seed)) for seed in range(40)) <= 2
