"""Grade vertebra crops with the fold ensemble of graders.

prediction = mean over folds of softmax(logits); ``uncertainty`` = entropy of that mean divided by log(4) (0 = sure,
1 = uniform); ``fold_disagreement`` = standard deviation over folds of P(fracture) = 1 - P(G0) (0 with one fold).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from vfscreen.core.grader_checkpoint import load_grader
from vfscreen.core.plans import crop_section, grader_section
from vfscreen.errors import ConfigError
from vfscreen.genant import NUM_GRADES
from vfscreen.preprocessing.crops import patch_shape, place_in_patch, validate_crop_plan


class Grader(Protocol):
    """What prediction needs from a grader (the real one below; tests inject fakes)."""

    crop_plan: dict  # the plan's grader.crop section
    patch_size: tuple[int, int, int]  # (D, H, W) array order

    def fold_probabilities(self, patches: np.ndarray) -> np.ndarray:
        """patches (B, C, D, H, W) float32 -> softmax probabilities (F folds, B, 4)."""


@dataclass
class GradePrediction:
    probabilities: list[float]  # (4,) mean over folds
    grade: int
    p_fracture: float
    uncertainty: float
    fold_disagreement: float
    fold_p_fracture: list[float] = field(default_factory=list)  # (F,)


def summarise(fold_probabilities: np.ndarray) -> list[GradePrediction]:
    """(F, B, 4) per-fold softmax -> one GradePrediction per crop."""
    fold_probabilities = np.asarray(fold_probabilities, dtype=np.float64)
    if fold_probabilities.ndim != 3 or fold_probabilities.shape[2] != NUM_GRADES:
        raise ValueError(f"expected per-fold probabilities of shape (F, B, {NUM_GRADES}), got "
                         f"{fold_probabilities.shape}")
    mean = fold_probabilities.mean(axis=0)  # (B, 4)
    mean = mean / mean.sum(axis=1, keepdims=True)
    entropy = -(mean * np.log(np.clip(mean, 1e-12, 1.0))).sum(axis=1) / np.log(NUM_GRADES)
    fold_fracture = 1.0 - fold_probabilities[:, :, 0]  # (F, B)
    predictions = []
    for index in range(mean.shape[0]):
        predictions.append(GradePrediction(
            probabilities=[round(float(p), 6) for p in mean[index]],
            grade=int(np.argmax(mean[index])),
            p_fracture=round(float(1.0 - mean[index, 0]), 6),
            uncertainty=round(float(np.clip(entropy[index], 0.0, 1.0)), 6),
            fold_disagreement=round(float(fold_fracture[:, index].std()), 6),
            fold_p_fracture=[round(float(p), 6) for p in fold_fracture[:, index]]))
    return predictions


def grade_crops(crops: list, grader: Grader, batch_size: int = 4) -> list[GradePrediction]:
    """Crops (VertebraCrop, from vfscreen.preprocessing.crops) -> predictions in the same order."""
    if not crops:
        return []
    fold_probabilities = []
    for start in range(0, len(crops), batch_size):
        batch = np.stack([place_in_patch(crop, grader.patch_size) for crop in crops[start:start + batch_size]])
        fold_probabilities.append(grader.fold_probabilities(batch.astype(np.float32)))  # (F, b, 4)
    return summarise(np.concatenate(fold_probabilities, axis=1))


class FoldEnsembleGrader:
    """The trained graders of ``folds`` in ``model_folder`` (``.../vfscreen_grader__<plans>__<config>``)."""

    def __init__(self, model_folder: Path, folds, device, which: str = "final", configuration: str = "3d"):
        self.model_folder = Path(model_folder)
        self.folds = list(folds)
        self.device = torch.device(device) if isinstance(device, str) else device
        self.networks = []
        plans = None
        for fold in self.folds:
            network, fold_plans = load_grader(self.model_folder / f"fold_{fold}", self.device, which)
            if plans is not None and grader_section(fold_plans, configuration) != grader_section(plans, configuration):
                raise ConfigError(f"{self.model_folder}: fold_{fold} was trained with another grader plan than "
                                  f"fold_{self.folds[0]}; retrain or choose folds with -f")
            plans = plans or fold_plans
            self.networks.append(network)
        self.plans = plans
        try:
            self.crop_plan = validate_crop_plan(crop_section(plans, configuration))
        except ConfigError as error:
            raise ConfigError(f"{self.model_folder}/fold_{self.folds[0]}/plans.json: {error}") from None
        self.patch_size = patch_shape(self.crop_plan)

    def fold_probabilities(self, patches: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            batch = torch.from_numpy(np.ascontiguousarray(patches)).to(self.device)  # (B, C, D, H, W)
            results = [torch.softmax(network(batch)[1].float(), dim=1).cpu().numpy() for network in self.networks]
        return np.stack(results)  # (F, B, 4)
