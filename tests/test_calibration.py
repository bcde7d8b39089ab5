"""Planning measures the planned networks' training speed on this machine and sizes the epochs from it."""
import json
import time

import pytest

from planning_dataset import fullres_configuration, make_dataset, nnunet_plans, synthetic_fingerprint
from vfscreen import paths
from vfscreen.core.plans import load_plans, planned_speed, validate_plans
from vfscreen.errors import ConfigError
from vfscreen.experiment_planning import budget as B
from vfscreen.experiment_planning import calibration as C
from vfscreen.experiment_planning import cli
from vfscreen.experiment_planning import planner as P
from vfscreen.experiment_planning import schedule as S
from vfscreen.experiment_planning.presets import load_preset

DEVICE = B.DeviceBudget("cpu", 8, 2)


def test_timing_leaves_out_the_warm_up_step_and_stops_after_its_time():
    calls = []

    def step():
        calls.append(None)
        time.sleep(0.2 if len(calls) == 1 else 0.01)

    timing = C.time_steps(step, max_steps=50, max_seconds=0.05, min_steps=3)
    assert timing.warmup_seconds >= 0.2 and timing.seconds_per_step < 0.1  # the slow first call is not counted
    assert 3 <= timing.steps < 50 and len(calls) == timing.steps + 1
    assert C.time_steps(step, max_steps=4, max_seconds=100, min_steps=1).steps == 4
    with C.torch_threads(1):
        assert C.time_steps(step, max_steps=1).threads == 1


def test_a_measured_speed_sizes_the_epochs_and_is_recorded():
    targets = B.PlanningTargets.from_preset(load_preset("cpu_demo")["budget"])
    configuration = P.plan_segmentation_cpu(fullres_configuration(median_shape=(40, 40, 40)), DEVICE, targets)
    modelled = configuration["vfscreen"]["speed"]
    assert modelled["source"] == "model" and "measured_seconds_per_step" not in modelled
    slow = C.StepTiming(seconds_per_step=4 * modelled["modelled_seconds_per_step"], steps=5, threads=2,
                        warmup_seconds=0.0)
    P.apply_segmentation_speed(configuration, slow, targets)
    extra = configuration["vfscreen"]
    assert extra["num_epochs"] == S.segmentation_epochs(slow.seconds_per_step, targets, measured=True)[0]
    assert extra["speed"]["source"] == "measured"
    assert extra["speed"]["measured_over_modelled"] == pytest.approx(4, rel=0.01)
    assert (extra["speed"]["planned_minutes"] <= targets.seg_minutes * 1.1
            or extra["num_epochs"] == targets.min_seg_epochs)

    # the grader's step budget (cpu_demo: 400 steps) is kept when it fits grader_minutes, else cut to fit
    fingerprint = synthetic_fingerprint(grade_counts=(367, 28, 16, 16))
    preset = load_preset("cpu_demo")
    plans = P.assemble_plans("Dataset990_PlanTest", fingerprint, nnunet_plans(), "3d_fullres", DEVICE, targets,
                             preset)
    grader = plans["configurations"]["3d"]["grader"]
    fixed = preset["configurations"]["3d"]["grader"]
    fast = C.StepTiming(0.01, 5, 2, 0.0)
    S.apply_grader_speed(grader, fingerprint, DEVICE, targets, 5, fast, fixed)
    assert grader["num_epochs"] == 100 and "note" not in grader["speed"]  # 4 batches per pass x 100 = 400 steps
    S.apply_grader_speed(grader, fingerprint, DEVICE, targets, 5, C.StepTiming(2.0, 5, 2, 0.0), fixed)
    assert grader["num_epochs"] < 100 and "cut" in grader["speed"]["note"]
    assert grader["speed"]["planned_minutes"] <= targets.grader_minutes
    validate_plans(plans, "Dataset990_PlanTest")
    assert planned_speed(plans, "grader").measured_seconds_per_step == 2.0


def test_planning_measures_unless_told_not_to(monkeypatch):
    name = make_dataset(paths.nnUNet_raw, 975, "Calibrate", num_cases=6)
    monkeypatch.setenv("VFSCREEN_MEASURE_SPEED", "1")
    assert cli.run(["-d", "975", "--device", "cpu", "-np", "1", "--no_preprocess", "--overwrite_plans"]) == 0
    plans = load_plans(name)
    segmentation, grader = planned_speed(plans, "segmentation"), planned_speed(plans, "grader")
    for speed in (segmentation, grader):
        assert speed.source == "measured" and speed.measured_seconds_per_step > 0
        assert speed.measured_over_modelled == pytest.approx(speed.measured_seconds_per_step
                                                             / speed.modelled_seconds_per_step, rel=0.02)
    section = plans["configurations"]["3d"]["segmentation"]
    assert section["num_epochs"] == S.segmentation_epochs(segmentation.measured_seconds_per_step,
                                                          B.PlanningTargets(), measured=True)[0]
    nnunet = json.loads((paths.nnUNet_preprocessed / name / "nnUNetPlans.json").read_text())
    assert nnunet["configurations"]["3d_vfscreen"]["vfscreen"]["speed"] == section["speed"]  # one record, mirrored

    assert cli.run(["-d", "975", "--device", "cpu", "-np", "1", "--no_preprocess", "--overwrite_plans",
                    "--no_measure_speed"]) == 0
    plans = load_plans(name)
    assert planned_speed(plans, "segmentation").source == planned_speed(plans, "grader").source == "model"
    assert planned_speed(plans, "segmentation").measured_seconds_per_step is None


def test_older_plans_without_a_speed_record_read_as_modelled_and_bad_records_are_refused():
    plans = P.assemble_plans("Dataset990_PlanTest", synthetic_fingerprint(), nnunet_plans(), "3d_fullres",
                             B.DeviceBudget("cuda", 80, 8), B.PlanningTargets(), None)
    assert planned_speed(plans, "segmentation") == planned_speed(plans, "grader")  # GPU plan: no record
    assert planned_speed(plans, "grader").source == "model"
    plans["configurations"]["3d"]["grader"]["speed"] = {"source": "guessed"}
    with pytest.raises(ConfigError, match="speed.source"):
        validate_plans(plans, "Dataset990_PlanTest")
