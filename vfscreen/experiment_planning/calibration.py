"""Measured training speed: a few real training steps of the planned networks on this machine, at planning time.

The speed model of :mod:`.budget` is a formula with constant throughputs; the same network trains at different
speeds on different CPUs (and on one VM from day to day). Planning therefore times the networks it planned:

* segmentation: the nnU-Net network of the planned configuration, built as training and prediction build it
  (:func:`vfscreen.core.nnunet_models.build_segmentation_network`, deep supervision on, the configuration's label
  grouping), at the planned patch and batch size; nnU-Net's loss of that grouping (Dice + CE for classes, Dice + BCE
  for regions, deep-supervision weights as ``nnUNetTrainer``), backward, gradient clipping and nnU-Net's SGD step;
* grader: the planned SE ResidualEncoder (:func:`vfscreen.core.grader_network.build_grader`) at the planned crop,
  on one balanced batch (samples per grade x 4 grades x views), in the trainer's channels-last layout, SupCon-like
  + CE loss, backward, SGD step.

Inputs are random tensors (data loading is not part of a step). Each network runs one warm-up step (allocations,
first-call dispatch; not timed), then timed steps until ``max_steps`` or ``max_seconds`` (at least ``min_steps``),
with torch's thread count set to the thread count training will use; the median step is the result.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vfscreen import paths
from vfscreen.core.grader_network import build_grader
from vfscreen.core.nnunet_models import (VFSCREEN_SEG_TRAINER, build_segmentation_network, dataset_json_for_grouping,
                                         label_grouping)
from vfscreen.core.plans import crop_num_channels

paths.export_for_nnunet()  # nnunetv2 reads its folders once, at import
from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss, DC_and_CE_loss  # noqa: E402
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper  # noqa: E402
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss  # noqa: E402
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels  # noqa: E402
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager  # noqa: E402

MIN_STEPS = 3
MAX_STEPS = 10
MAX_SECONDS_PER_NETWORK = 4.0  # timed steps stop once this much was spent (after MIN_STEPS)
GRADER_MEMORY_FORMAT = torch.channels_last_3d  # the grader trainer's layout on a CPU


@dataclass(frozen=True)
class StepTiming:
    """The median seconds of one training step, over ``steps`` timed steps (warm-up excluded), at ``threads``."""

    seconds_per_step: float
    steps: int
    threads: int
    warmup_seconds: float

    def as_dict(self) -> dict:
        return {key: (round(value, 4) if isinstance(value, float) else value) for key, value in asdict(self).items()}


@contextlib.contextmanager
def torch_threads(num_threads: int | None):
    """torch's intra-op thread count set to ``num_threads`` inside the block (unchanged when None)."""
    previous = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(int(num_threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def time_steps(step, max_steps: int = MAX_STEPS, max_seconds: float = MAX_SECONDS_PER_NETWORK,
               min_steps: int = MIN_STEPS) -> StepTiming:
    """Median seconds of ``step()`` after one untimed warm-up step: ``min_steps`` to ``max_steps`` timed steps,
    stopping once ``max_seconds`` were spent on timed steps (one timed step when the warm-up alone shows that
    ``min_steps`` would take more than twice ``max_seconds``)."""
    start = time.perf_counter()
    step()
    warmup = time.perf_counter() - start
    if warmup * min_steps > 2 * max_seconds:  # a step this slow: one timed step keeps planning short
        min_steps = 1
    durations, spent = [], 0.0
    while len(durations) < max(1, max_steps) and (len(durations) < min_steps or spent < max_seconds):
        start = time.perf_counter()
        step()
        durations.append(time.perf_counter() - start)
        spent += durations[-1]
    return StepTiming(float(np.median(durations)), len(durations), torch.get_num_threads(), warmup)


# --------------------------------------------------------------------------------------------------- segmentation
def segmentation_step(nnunet_plans: dict, configuration_name: str, dataset_json: dict):
    """A closure running one nnU-Net training step of ``configuration_name`` of ``nnunet_plans`` (a plans dict as
    nnUNetPlans.json holds it): forward, the trainer's deep-supervision loss, backward, gradient clipping, SGD.

    ``dataset_json``: the raw dataset.json; the configuration's label grouping (vfscreen entry) is applied to it."""
    plans_manager = PlansManager(nnunet_plans)
    configuration_manager = plans_manager.get_configuration(configuration_name)
    dataset_json = dataset_json_for_grouping(dataset_json, label_grouping(configuration_manager.configuration))
    label_manager = plans_manager.get_label_manager(dataset_json)
    network = build_segmentation_network(VFSCREEN_SEG_TRAINER, plans_manager, configuration_manager, dataset_json,
                                         deep_supervision=True)
    network.train()
    optimizer = torch.optim.SGD(network.parameters(), 1e-2, weight_decay=3e-5, momentum=0.99, nesterov=True)
    heads = label_manager.num_segmentation_heads
    if label_manager.has_regions:
        loss = DC_and_BCE_loss({}, {"batch_dice": configuration_manager.batch_dice, "do_bg": True, "smooth": 1e-5,
                                    "ddp": False}, use_ignore_label=False, dice_class=MemoryEfficientSoftDiceLoss)
    else:
        loss = DC_and_CE_loss({"batch_dice": configuration_manager.batch_dice, "smooth": 1e-5, "do_bg": False,
                               "ddp": False}, {}, weight_ce=1, weight_dice=1, ignore_label=None,
                              dice_class=MemoryEfficientSoftDiceLoss)
    scales = 1 / np.cumprod(np.vstack(configuration_manager.pool_op_kernel_sizes), axis=0)[:-1]  # nnU-Net's
    weights = np.array([1 / 2 ** i for i in range(len(scales))])
    weights[-1] = 0
    loss = DeepSupervisionWrapper(loss, weights / weights.sum())
    batch, patch = configuration_manager.batch_size, np.array(configuration_manager.patch_size)
    channels = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
    images = torch.randn(batch, channels, *patch.tolist())  # (B, C, X, Y, Z) in nnU-Net's array axes
    generator = torch.Generator().manual_seed(0)
    targets = []
    for scale in scales:
        shape = [int(s) for s in np.round(patch * scale)]
        if label_manager.has_regions:  # (B, regions, *shape) binary region masks
            targets.append((torch.rand(batch, heads, *shape, generator=generator) > 0.5).float())
        else:  # (B, 1, *shape) class ids
            targets.append(torch.randint(0, heads, (batch, 1, *shape), generator=generator).float())

    def step():
        optimizer.zero_grad(set_to_none=True)
        value = loss(network(images), targets)
        value.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 12)
        optimizer.step()
    return step


def measure_segmentation_step(nnunet_plans: dict, configuration_name: str, dataset_json: dict,
                              num_threads: int | None, **timing) -> StepTiming:
    with torch_threads(num_threads):
        return time_steps(segmentation_step(nnunet_plans, configuration_name, dataset_json), **timing)


# --------------------------------------------------------------------------------------------------------- grader
def grader_step(grader_plan: dict):
    """A closure running one grader step on one balanced batch = samples_per_class x 4 grades x views crops
    (SupCon-like cost of the projections + CE of the head, backward, SGD)."""
    network = build_grader(grader_plan["network"], grader_plan.get("loss", {}).get("name", "supcon"),
                           crop_num_channels(grader_plan["crop"])).to(memory_format=GRADER_MEMORY_FORMAT)
    network.train()
    optimizer = torch.optim.SGD(network.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    sampler = grader_plan["sampler"]
    views = int(sampler["samples_per_class"]) * 4 * int(sampler["views"])
    crops = torch.randn(views, crop_num_channels(grader_plan["crop"]), *grader_plan["crop"]["patch_size"]
                        ).contiguous(memory_format=GRADER_MEMORY_FORMAT)  # (V, C, *patch)
    grades = torch.arange(views) % 4
    temperature = float(grader_plan.get("loss", {}).get("temperature", 0.07))

    def step():
        optimizer.zero_grad(set_to_none=True)
        _, logits, projection = network(crops)
        similarity = projection @ projection.T / temperature  # (V, V), the cost of SupCon's similarity matrix
        (F.cross_entropy(similarity, torch.arange(views)) + F.cross_entropy(logits, grades)).backward()
        optimizer.step()
    return step


def measure_grader_step(grader_plan: dict, num_threads: int | None, **timing) -> StepTiming:
    with torch_threads(num_threads):
        return time_steps(grader_step(grader_plan), **timing)
