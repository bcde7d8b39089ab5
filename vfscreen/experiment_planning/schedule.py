"""Training schedules from a speed: seconds per training step -> epochs that fit the budget's minutes.

The seconds per step come from the speed model of :mod:`.budget` or, when planning measured them on this machine,
from :mod:`.calibration`. A step's compute is not the whole loop:
  * nnU-Net: its data augmentation worker runs on the same CPU cores, and each epoch adds validation iterations
    (forward only, about a third of a step), logging, a progress plot and checkpoints. A measured step is the real
    network, loss and optimizer on this machine, alone; in training it shares the cores with the augmentation
    worker (``SEG_MEASURED_LOOP_FACTOR``, from nnU-Net's epoch times on the demo plan next to a measured step of
    the same network, notes of issue 16). The speed model's figure is doubled (``SEG_MODEL_LOOP_FACTOR``, the
    planner's factor since session 1). At least ``MIN_SEG_SECONDS_PER_ITERATION`` either way;
  * grader: its augmentation worker likewise (``GRADER_MEASURED_LOOP_FACTOR`` on a measured step, from the grader
    log's epoch times next to a measured step of the same network, notes of issue 16; the speed model's figure is
    used as it is, as the planner did before it measured); every ``validate_every`` epochs a forward pass over the
    fold's validation crops.
The speed record (``speed_entry``) goes into the plans: which figure sized the schedule, the modelled and the measured
seconds per step, the loop's seconds per step the schedule assumed and the minutes it plans.
"""
from __future__ import annotations

import math

import numpy as np

from vfscreen.experiment_planning import budget as B

SEG_MODEL_LOOP_FACTOR = 2.0
SEG_MEASURED_LOOP_FACTOR = 1.5
MIN_SEG_SECONDS_PER_ITERATION = 0.2
GRADER_MEASURED_LOOP_FACTOR = 1.05
FORWARD_SHARE = 1 / 3  # a forward pass costs about a third of forward + backward


def segmentation_epochs(step_seconds: float, targets, measured: bool = False) -> tuple[int, float, float]:
    """(epochs, wall seconds per iteration, planned minutes) of an nnU-Net schedule whose training step takes
    ``step_seconds`` (``measured``: timed on this machine, else the speed model's): as many epochs of
    ``seg_iterations_per_epoch`` (+ validation iterations) as fit seg_minutes."""
    factor = SEG_MEASURED_LOOP_FACTOR if measured else SEG_MODEL_LOOP_FACTOR
    per_iteration = max(step_seconds * factor, MIN_SEG_SECONDS_PER_ITERATION)
    epoch_seconds = (targets.seg_iterations_per_epoch * per_iteration
                     + targets.seg_val_iterations_per_epoch * per_iteration * FORWARD_SHARE)
    epochs = int(np.clip(round(targets.seg_minutes * 60 / epoch_seconds), targets.min_seg_epochs,
                         targets.max_seg_epochs))
    return epochs, per_iteration, epochs * epoch_seconds / 60


def grader_validate_every(num_epochs: int) -> int:
    """The planner's validation interval: about 50 validations per training."""
    return max(1, num_epochs // 50)


def grader_loop_seconds(step_seconds: float, measured: bool) -> float:
    return step_seconds * (GRADER_MEASURED_LOOP_FACTOR if measured else 1.0)


def grader_minutes(num_epochs: int, batches_per_epoch: int, step_seconds: float, batch_views: int,
                   validation_crops: float, validate_every: int | None = None, measured: bool = False) -> float:
    """Minutes of a grader training of ``num_epochs`` passes of ``batches_per_epoch`` steps, validating every
    ``validate_every`` epochs (the planner's interval when None)."""
    every = validate_every or grader_validate_every(num_epochs)
    validation = step_seconds / batch_views * FORWARD_SHARE * validation_crops
    train = num_epochs * batches_per_epoch * grader_loop_seconds(step_seconds, measured)
    return (train + math.ceil(num_epochs / every) * validation) / 60


def grader_epochs_for_minutes(minutes: float, batches_per_epoch: int, step_seconds: float, batch_views: int,
                              validation_crops: float, targets, validate_every: int | None = None,
                              measured: bool = False) -> int:
    """The most epochs (within the budget's min/max) whose training fits ``minutes``."""
    fitting = targets.min_grader_epochs
    for epochs in range(targets.min_grader_epochs, targets.max_grader_epochs + 1):
        if grader_minutes(epochs, batches_per_epoch, step_seconds, batch_views, validation_crops,
                          validate_every, measured) > minutes:
            break
        fitting = epochs
    return int(fitting)


def batches_per_pass(fingerprint: dict, samples_per_class: int, num_folds: int) -> int:
    """Balanced batches in one pass over the rarest grade of a training fold (the sampler's epoch)."""
    smallest = min(fingerprint["grade_histogram_vertebrae"].values()) * (num_folds - 1) / num_folds
    return max(1, math.floor(smallest / samples_per_class))


def epochs_for_steps(fingerprint: dict, samples_per_class: int, num_folds: int, targets) -> int:
    """A step budget (grader_steps) as passes over the rarest grade (the same SGD steps whatever the data's size)."""
    batches = batches_per_pass(fingerprint, samples_per_class, num_folds)
    return int(np.clip(round(targets.grader_steps / batches), targets.min_grader_epochs, targets.max_grader_epochs))


def validation_crops(fingerprint: dict, num_folds: int) -> float:
    return sum(fingerprint["grade_histogram_vertebrae"].values()) / num_folds


def grader_epochs_for_budget(fingerprint: dict, samples_per_class: int, views: int, step_seconds: float,
                             num_folds: int, targets, validate_every: int | None = None) -> int:
    """The epochs of a grader whose balanced batch (samples_per_class x 4 grades x views) trains in step_seconds
    that fit grader_minutes."""
    return grader_epochs_for_minutes(targets.grader_minutes, batches_per_pass(fingerprint, samples_per_class,
                                                                              num_folds),
                                     step_seconds, B.grader_views_per_batch(samples_per_class, views),
                                     validation_crops(fingerprint, num_folds), targets, validate_every)


def apply_grader_speed(grader: dict, fingerprint: dict, device, targets, num_folds: int, measured=None,
                       fixed: dict | None = None) -> dict:
    """CPU plans: the grader's epochs from the speed of its final network (after the preset): a measured step
    (calibration.StepTiming) when given, else the speed model. A time budget gives the epochs that fit
    grader_minutes; a step budget (grader_steps) is kept unless it does not fit grader_minutes at this speed, then
    it is cut to fit (the record's note says so). Values the preset fixed (``fixed``) stay. Records the speed."""
    if device.type != "cpu":
        return grader
    fixed = fixed or {}
    samples_per_class = grader["sampler"]["samples_per_class"]
    views = B.grader_views_per_batch(samples_per_class, grader["sampler"]["views"])
    modelled = B.grader_cost(grader).training_seconds(views, device.num_threads, targets.cpu_gflops_per_thread,
                                                      targets.cpu_gelements_per_thread)
    step = measured.seconds_per_step if measured is not None else modelled
    batches = batches_per_pass(fingerprint, samples_per_class, num_folds)
    crops = validation_crops(fingerprint, num_folds)
    every, note = fixed.get("validate_every"), None
    is_measured = measured is not None
    if "num_epochs" not in fixed:
        epochs = grader_epochs_for_minutes(targets.grader_minutes, batches, step, views, crops, targets, every,
                                           is_measured)
        if targets.grader_steps:
            wanted = epochs_for_steps(fingerprint, samples_per_class, num_folds, targets)
            if epochs < wanted:
                note = (f"grader_steps {targets.grader_steps} do not fit grader_minutes {targets.grader_minutes:g} "
                        f"at this speed: cut to {epochs} epochs x {batches} batches")
            epochs = min(epochs, wanted)
        grader["num_epochs"] = int(epochs)
        if every is None:
            grader["validate_every"] = grader_validate_every(grader["num_epochs"])
    minutes = grader_minutes(grader["num_epochs"], batches, step, views, crops, grader["validate_every"],
                             is_measured)
    grader["speed"] = speed_entry("measured" if is_measured else "model", modelled, measured,
                                  grader_loop_seconds(step, is_measured), minutes, note)
    return grader


def speed_entry(source: str, modelled_seconds: float, measured=None, loop_seconds: float | None = None,
                planned_minutes: float | None = None, note: str | None = None) -> dict:
    """The plans' record of a stage's speed. ``measured``: a calibration.StepTiming or None."""
    entry = {"source": source, "modelled_seconds_per_step": round(float(modelled_seconds), 4)}
    if measured is not None:
        entry.update({"measured_seconds_per_step": round(float(measured.seconds_per_step), 4),
                      "measured_steps": int(measured.steps), "measured_threads": int(measured.threads),
                      "measured_over_modelled": round(float(measured.seconds_per_step) / max(modelled_seconds, 1e-9),
                                                      3)})
    if loop_seconds is not None:
        entry["loop_seconds_per_step"] = round(float(loop_seconds), 4)
    if planned_minutes is not None:
        entry["planned_minutes"] = round(float(planned_minutes), 2)
    if note:
        entry["note"] = note
    return entry
