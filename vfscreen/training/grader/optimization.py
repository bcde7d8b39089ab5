"""The grader's optimiser and learning-rate schedule, from the plan's ``grader.optimizer`` section.

    {"name": "sgd" | "adam", "lr": 0.005, "momentum": 0.9, "weight_decay": 1e-4,
     "schedule": "step" (default) | "cosine", "lr_decay_at": [0.8, 0.9], "lr_decay_factor": 0.1,  # step
     "warmup_fraction": 0.0,                                                                     # both schedules
     "head_lr": <lr>, "head_weight_decay": 0.0}                                                  # the linear head

The classification head has its own parameter group (its own learning rate, no weight decay by default: a linear
readout on balanced batches needs no shrinkage). SGD is the paper's optimiser for SupCon; Adam is what its Table I
used for the cross-entropy baseline (Kingma & Ba's defaults apart from the learning rate).
"""
from __future__ import annotations

import math

import torch

from vfscreen.errors import ConfigError

OPTIMIZER_NAMES = ("sgd", "adam")
SCHEDULES = ("step", "cosine")


def build_optimizer(network: torch.nn.Module, optimizer_plan: dict) -> torch.optim.Optimizer:
    """Two parameter groups: the backbone + projection head, and the classification head."""
    name = optimizer_plan.get("name", "sgd")
    if name not in OPTIMIZER_NAMES:
        raise ConfigError(f"grader optimizer {name!r} is not supported (choose from {', '.join(OPTIMIZER_NAMES)})")
    schedule = optimizer_plan.get("schedule", "step")
    if schedule not in SCHEDULES:
        raise ConfigError(f"grader optimizer schedule {schedule!r} is not one of {', '.join(SCHEDULES)}")
    lr = float(optimizer_plan["lr"])
    weight_decay = float(optimizer_plan.get("weight_decay", 1e-4))
    head = [p for n, p in network.named_parameters() if n.startswith("classification_head.")]
    body = [p for n, p in network.named_parameters() if not n.startswith("classification_head.")]
    groups = [{"params": body, "lr": lr, "base_lr": lr, "weight_decay": weight_decay, "name": "network"},
              {"params": head, "lr": float(optimizer_plan.get("head_lr", lr)),
               "base_lr": float(optimizer_plan.get("head_lr", lr)),
               "weight_decay": float(optimizer_plan.get("head_weight_decay", 0.0)), "name": "classification_head"}]
    if name == "adam":
        return torch.optim.Adam(groups)
    return torch.optim.SGD(groups, momentum=float(optimizer_plan.get("momentum", 0.9)))


def learning_rate_factor(optimizer_plan: dict, epoch: int, num_epochs: int) -> float:
    """Factor on each group's base learning rate in ``epoch`` (0-based) of ``num_epochs``.

    Linear warm-up over the first ``warmup_fraction`` of training, then either step decay (``lr_decay_factor`` **
    the number of ``lr_decay_at`` fractions passed) or cosine decay to 0 at the end.
    """
    warmup_epochs = round(float(optimizer_plan.get("warmup_fraction", 0.0)) * num_epochs)
    if epoch < warmup_epochs:
        return (epoch + 1) / (warmup_epochs + 1)
    if optimizer_plan.get("schedule", "step") == "cosine":
        progress = (epoch - warmup_epochs) / max(1, num_epochs - warmup_epochs)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    passed = sum(epoch >= round(fraction * num_epochs) for fraction in optimizer_plan.get("lr_decay_at", []))
    return float(optimizer_plan.get("lr_decay_factor", 0.1)) ** passed


def set_learning_rate(optimizer: torch.optim.Optimizer, factor: float) -> float:
    """Apply ``factor`` to every group's base learning rate; returns the network group's learning rate."""
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    return optimizer.param_groups[0]["lr"]
