"""Tiny fake plans and preprocessed crops for the grader tests (16^3 patches, a 2-stage network)."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd

PATCH = 16


def tiny_plans(dataset_name: str, num_epochs: int = 2, loss: str = "supcon", num_folds: int = 2) -> dict:
    grader = {
        "crop": {"mode": "fit", "spacing_mm": 1.0, "patch_size": [PATCH, PATCH, PATCH], "margin_mm": 2.0,
                 "windows": [{"name": "bone", "width": 1500, "level": 400},
                             {"name": "soft_tissue", "width": 200, "level": 40}],
                 "mask_channel": "label_modulated", "use_truncated": False, "storage_dtype": "float16"},
        "network": {"backbone": "ResidualEncoder", "block": "BasicBlockD", "features_per_stage": [4, 8],
                    "n_blocks_per_stage": [1, 1], "strides": [1, 2], "kernel_sizes": [3, 3],
                    "squeeze_excitation": True, "projection_dim": 128, "num_classes": 4},
        "loss": {"name": loss, "temperature": 0.07},
        "sampler": {"samples_per_class": 2, "views": 2},
        "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0001,
                      "lr_decay_at": [0.8, 0.9], "lr_decay_factor": 0.1},
        "num_epochs": num_epochs, "validate_every": 1, "num_workers": 0,
        "augmentation": {"probability": 0.7, "mask_boxes": 2, "mask_box_size": [1, 4], "zoom": [0.9, 1.1],
                         "noise_sigma": 0.05, "shift_voxels": 2, "rotation_degrees": 10,
                         "intensity_scale": [0.9, 1.1], "intensity_power": [0.5, 2.0]},
        "estimated_memory_gb": 0.1,
    }
    segmentation = {"nnunet_plans_identifier": "nnUNetPlans", "nnunet_configuration": "3d_vfscreen",
                    "trainer": "vfscreenSegTrainer", "target_spacing_mm": [3.0, 3.0, 3.0], "patch_size": [32, 32, 32],
                    "batch_size": 2, "features_per_stage": [8, 16], "iterations_per_epoch": 2, "num_epochs": 1,
                    "estimated_memory_gb": 0.5}
    return {"schema_version": 1, "vfscreen_version": "0.1.0", "dataset_name": dataset_name,
            "plans_name": "vfscreenPlans", "seed": 7, "num_folds": num_folds,
            "device": {"type": "cpu", "memory_gb": 4, "num_threads": 1}, "preset": "test",
            "configurations": {"3d": {"segmentation": segmentation, "grader": copy.deepcopy(grader)}}}


def write_fake_crops(preprocessed_dataset: Path, num_cases: int = 10, num_folds: int = 2, seed: int = 0,
                     grades_of_case=None) -> pd.DataFrame:
    """Crops whose content depends on the grade (a flattened block), every case holding vertebrae of all grades."""
    rng = np.random.default_rng(seed)
    folder = Path(preprocessed_dataset) / "vfscreen_crops_3d"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for case_number in range(num_cases):
        case_id = f"case{case_number:03d}"
        grades = grades_of_case(case_number) if grades_of_case else [0, 1, 2, 3]
        for position, grade in enumerate(grades):
            label = 20 + position  # L1, L2, ...
            shape = tuple(int(s) for s in rng.integers(10, PATCH + 1, size=3))
            crop = rng.uniform(0, 0.2, size=(3,) + shape).astype(np.float32)
            height = max(2, int(shape[0] * (1.0 - 0.15 * (grade or 0))))  # "collapsed" vertebral body
            crop[:2, :height, 2:-2, 2:-2] += 0.6
            crop[2] = 0.0
            crop[2, :height, 2:-2, 2:-2] = label / 28
            file_name = f"{case_id}_{label:02d}.npy"
            np.save(folder / file_name, crop.astype(np.float16))
            rows.append({"case_id": case_id, "label": label, "name": f"L{position + 1}",
                         "grade": "" if grade is None else grade, "fold": case_number % num_folds,
                         "truncated": False, "file": file_name})
    table = pd.DataFrame(rows)
    table.to_csv(folder / "crops.csv", index=False)
    return table


def write_dataset(preprocessed_root: Path, dataset_name: str, plans: dict, **crop_kwargs) -> Path:
    folder = Path(preprocessed_root) / dataset_name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vfscreenPlans.json").write_text(json.dumps(plans, indent=1))
    write_fake_crops(folder, **crop_kwargs)
    return folder
