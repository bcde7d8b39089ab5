"""Plans validation: every missing field, wrong type or foreign dataset is one ConfigError naming the field."""
import copy
import json

import pytest

from planning_dataset import nnunet_plans, synthetic_fingerprint
from vfscreen.errors import ConfigError
from vfscreen.experiment_planning import budget as B
from vfscreen.experiment_planning import planner as P
from vfscreen.core.plans import load_plans, save_plans, validate_plans
from vfscreen.experiment_planning.presets import deep_merge, load_preset

DATASET = "Dataset990_PlanTest"


@pytest.fixture(scope="module")
def valid_plans():
    device = B.DeviceBudget("cuda", 80, 8)
    return P.assemble_plans(DATASET, synthetic_fingerprint(), nnunet_plans(), "3d_fullres", device,
                            B.PlanningTargets(), preset=None)


def test_valid_plans_pass_and_round_trip(valid_plans, tmp_path):
    validate_plans(valid_plans, DATASET)
    path = save_plans(valid_plans, tmp_path / "vfscreenPlans.json")
    assert load_plans(DATASET, path) == valid_plans


@pytest.mark.parametrize("field", ["seed", "device.memory_gb", "configurations.3d.grader.crop.patch_size",
                                   "configurations.3d.grader.loss.temperature",
                                   "configurations.3d.segmentation.nnunet_configuration",
                                   "configurations.3d.grader.augmentation.zoom"])
def test_missing_field_is_named(valid_plans, field):
    plans = copy.deepcopy(valid_plans)
    *parents, last = field.split(".")
    section = plans
    for key in parents:
        section = section[key]
    del section[last]
    with pytest.raises(ConfigError, match=f"'{field}' is missing"):
        validate_plans(plans, DATASET)


@pytest.mark.parametrize("field, value", [("num_folds", "5"), ("configurations.3d.grader.sampler.samples_per_class",
                                                               2.5),
                                          ("configurations.3d.grader.crop.use_truncated", "no"),
                                          ("configurations.3d.grader.network.features_per_stage", [16, "32"]),
                                          ("configurations.3d.segmentation.batch_size", True),
                                          ("configurations.3d.grader.optimizer", [0.001])])
def test_wrong_type_is_named(valid_plans, field, value):
    plans = copy.deepcopy(valid_plans)
    *parents, last = field.split(".")
    section = plans
    for key in parents:
        section = section[key]
    section[last] = value
    with pytest.raises(ConfigError, match=f"'{field}'"):
        validate_plans(plans, DATASET)


def test_plans_for_another_dataset_are_refused(valid_plans, tmp_path):
    path = save_plans(valid_plans, tmp_path / "vfscreenPlans.json")
    with pytest.raises(ConfigError, match="'dataset_name'.*another dataset"):
        load_plans("Dataset991_Other", path)


def test_inconsistent_values_are_refused(valid_plans):
    plans = copy.deepcopy(valid_plans)
    plans["configurations"]["3d"]["grader"]["crop"]["patch_size"] = [100, 100, 100]  # not a multiple of 32
    with pytest.raises(ConfigError, match="total stride 32"):
        validate_plans(plans, DATASET)
    plans = copy.deepcopy(valid_plans)
    plans["configurations"]["3d"]["grader"]["crop"]["mode"] = "stretch"
    with pytest.raises(ConfigError, match="crop.mode.*fit, spacing"):
        validate_plans(plans, DATASET)
    plans = copy.deepcopy(valid_plans)
    plans["configurations"]["3d"]["grader"]["network"]["strides"] = [2, 2]
    with pytest.raises(ConfigError, match="network.strides.*must match"):
        validate_plans(plans, DATASET)


def test_unreadable_or_missing_plans_file(tmp_path):
    with pytest.raises(ConfigError, match="plans missing; run vfscreen_plan_and_preprocess"):
        load_plans(DATASET, tmp_path / "absent.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_plans(DATASET, broken)


def test_presets_load_and_bad_presets_are_refused(tmp_path):
    assert load_preset("cpu_demo")["device"]["type"] == "cpu"
    with pytest.raises(ConfigError, match="preset 'nonexistent' not found"):
        load_preset("nonexistent")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "bad", "budgett": {}}))
    with pytest.raises(ConfigError, match="unknown preset field"):
        load_preset(bad)
    with pytest.raises(ConfigError, match="budget.seg_minutes"):
        B.PlanningTargets.from_preset({"seg_minutes": -1})


def test_deep_merge_keeps_what_the_overlay_leaves_open():
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 3}
    merged = deep_merge(base, {"a": {"c": [5]}})
    assert merged == {"a": {"b": 1, "c": [5]}, "d": 3} and base["a"]["c"] == [1, 2]
