"""The graders learn: SupCon and cross-entropy on learnable synthetic crops (the grade is the height of a bright
block, see grader_fakes) reach stated floors on the validation fold.

Floors come from measurement with a margin (see the test's comments); the same runs with the loss replaced by a
constant (no gradient) stay far below every floor, which is what makes these tests able to fail.
"""
import shutil

import pytest
import torch
from grader_fakes import tiny_plans, write_dataset

from vfscreen import paths
from vfscreen.training.grader.trainer import prepare_grader_training, train_grader

torch.set_num_threads(1)
EPOCHS = 20  # 5 balanced batches each: 100 SGD steps


def train_learnable(dataset_name: str, loss: str) -> dict:
    plans = tiny_plans(dataset_name, num_epochs=EPOCHS, loss=loss)
    grader = plans["configurations"]["3d"]["grader"]
    grader["sampler"]["samples_per_class"] = 4
    grader["optimizer"]["lr"] = 0.05
    grader["validate_every"] = EPOCHS
    grader["readout"] = {"augmented_copies": 1}
    shutil.rmtree(paths.nnUNet_preprocessed / dataset_name, ignore_errors=True)
    shutil.rmtree(paths.nnUNet_results / dataset_name, ignore_errors=True)
    write_dataset(paths.nnUNet_preprocessed, dataset_name, plans, num_cases=40)  # 80 training, 80 validation crops
    setup = prepare_grader_training(dataset_name, "3d", 0, plans)
    return train_grader(setup, show_progress=False)


def test_supcon_grader_learns_a_representation_and_a_head():
    metrics = train_learnable("Dataset961_LearnSupCon", "supcon")
    print({key: metrics[key] for key in ("readouts", "cosine_within_grade", "cosine_across_grade",
                                         "val_supcon_normalised")})
    # measured (20 epochs): normalised SupCon of the validation features 0.48, cosine within 0.990 / across 0.828,
    # probe macro-F1 0.86, head AUROC 0.97; with a constant loss: 0.97, 0.977 / 0.968, 0.64, 0.21
    assert metrics["val_supcon_normalised"] < 0.75
    assert metrics["cosine_within_grade"] - metrics["cosine_across_grade"] > 0.08
    assert metrics["readouts"]["probe"]["macro_f1"] > 0.70
    assert metrics["readouts"]["head"]["auroc"] > 0.90


def test_cross_entropy_grader_learns_its_head():
    metrics = train_learnable("Dataset962_LearnCE", "ce")
    print(metrics["readouts"])
    # measured (20 epochs): head macro-F1 0.64, AUROC 0.99; with a constant loss: 0.07, 0.21
    assert metrics["readouts"]["head"]["macro_f1"] > 0.45
    assert metrics["readouts"]["head"]["auroc"] > 0.90
