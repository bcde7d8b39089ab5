"""Determinism: the same seed gives the same splits, plans and crops (byte for byte), and on CPU the same trained
grader weights; another seed gives other splits (so the comparison can fail)."""
from __future__ import annotations

import json

from robustness.conftest import (assert_same_weights, final_weights, plan_tiny_dataset, run_cli,
                                 write_preprocessed_grader_dataset)
from vfscreen.errors import EXIT_OK
from vfscreen.training.cli import main as train_main


def test_same_seed_same_plans_splits_and_crops(planned_tiny_dataset, tiny_preset):
    name, first = planned_tiny_dataset
    again_name, again = plan_tiny_dataset(tiny_preset)  # from scratch: the preprocessed folder is removed first
    assert again_name == name and sorted(again) == sorted(first)
    assert sum(key.endswith(".npy") for key in first) >= 10
    for relative, content in first.items():
        assert again[relative] == content, f"{relative} differs between two runs with the same seed"

    _, other_seed = plan_tiny_dataset(tiny_preset, seed=4, preprocess=False)
    assert json.loads(other_seed["splits_final.json"]) != json.loads(first["splits_final.json"])
    assert json.loads(other_seed["vfscreenPlans.json"])["seed"] == 4


def test_same_seed_same_grader_weights_on_cpu(capsys, monkeypatch):
    runs = ("Dataset948_RobustSeedA", "Dataset949_RobustSeedB")
    for dataset_name in runs:
        write_preprocessed_grader_dataset(dataset_name, num_epochs=2)
        code, out, err = run_cli(train_main, [dataset_name, "3d", "0", "--stage", "grader"], capsys, monkeypatch)
        assert code == EXIT_OK, out + err
    assert_same_weights(final_weights(runs[0]), final_weights(runs[1]))
