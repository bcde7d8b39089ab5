"""vfscreen_demo's orchestration with every stage stubbed (no data generation, training or prediction): stage order,
the skip/continue decisions of a second run, and the CLI's argument errors."""
from types import SimpleNamespace

import pandas as pd
import pytest

import vfscreen.experiment_planning.cli
from vfscreen import demo
from vfscreen.errors import EXIT_USAGE

SEGMENTATION_PLAN = {"nnunet_plans_identifier": "nnUNetPlans", "nnunet_configuration": "3d_vfscreen",
                     "trainer": "vfscreenSegTrainer", "num_epochs": 2, "iterations_per_epoch": 3}
FAKE_PLANS = {"preset": demo.PLANNING_PRESET,
              "configurations": {"3d": {"segmentation": SEGMENTATION_PLAN, "grader": {}}}}


@pytest.fixture
def stubbed(tmp_path, monkeypatch):
    """Every heavy call of the demo replaced by a fake that writes what the real one leaves behind."""
    raw, results = tmp_path / "raw", tmp_path / "results"
    monkeypatch.setenv("nnUNet_raw", str(raw))
    monkeypatch.setenv("nnUNet_results", str(results))
    calls = []

    def generate_dataset(output_root, **kwargs):
        calls.append(("generate", kwargs["preset"]))
        folder = output_root / demo.DATASET_NAME
        (folder / "imagesTs").mkdir(parents=True)
        (folder / "dataset.json").write_text("{}")
        return folder

    def planning_run(argv):
        calls.append(("plan", tuple(argv)))
        return 0

    def train_segmentation(dataset_name, plans, configuration, fold, device, continue_training):
        calls.append(("segmentation", continue_training))
        folder = demo.segmentation_fold_folder(plans)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "checkpoint_final.pth").write_bytes(b"")

    grader_folder = results / demo.DATASET_NAME / "vfscreen_grader__vfscreenPlans__3d" / "fold_0"

    def prepare_grader_training(dataset_name, configuration, fold, plans, loss, device):
        return SimpleNamespace(fold_folder=grader_folder)

    def train_grader(setup, continue_training):
        calls.append(("grader", continue_training))
        setup.fold_folder.mkdir(parents=True, exist_ok=True)
        (setup.fold_folder / "checkpoint_final.pth").write_bytes(b"")

    def fit_fusion_for_model(dataset_name, configuration, folds, progress, loss):
        import numpy as np

        from vfscreen.evaluation.fusion import fit_fusion, save_fusion

        calls.append(("fusion", tuple(folds), loss))
        model = fit_fusion(np.array([0, 0, 1, 2]), np.array([0.1, 0.3, 0.6, 0.8]), np.array([0.95, 0.9, 0.8, 0.6]))
        return save_fusion(model, grader_folder.parent / "fusion.json")

    def predict(input_folder, output_folder, **kwargs):
        calls.append(("predict", kwargs["continue_prediction"], tuple(kwargs["folds"])))
        output_folder.mkdir(parents=True, exist_ok=True)
        done = (output_folder / "case_report.png").is_file()
        (output_folder / "case_report.png").write_bytes(b"png")
        (output_folder / "summary.csv").write_text("case_id\ncase\n")
        table = pd.DataFrame()
        table.attrs.update(finished=[] if done else ["case"], skipped=["case"] if done else [], errors=[])
        return table

    def evaluate_predictions(reference, prediction_folder, **kwargs):
        calls.append(("evaluate", kwargs["split"], kwargs["n_bootstrap"], kwargs.get("matching", "label")))
        return {"metrics": {}, "cases": {}}

    monkeypatch.setattr(demo, "generate_dataset", generate_dataset)
    monkeypatch.setattr(vfscreen.experiment_planning.cli, "run", planning_run)
    monkeypatch.setattr(demo, "load_demo_plans", lambda: FAKE_PLANS)
    monkeypatch.setattr(demo, "train_segmentation", train_segmentation)
    monkeypatch.setattr(demo, "prepare_grader_training", prepare_grader_training)
    monkeypatch.setattr(demo, "train_grader", train_grader)
    monkeypatch.setattr(demo, "predict", predict)
    monkeypatch.setattr(demo, "fit_fusion_for_model", fit_fusion_for_model)
    monkeypatch.setattr(demo, "evaluate_predictions", evaluate_predictions)
    monkeypatch.setattr(demo, "format_result", lambda result, method, dataset_label: "TABLE")
    return SimpleNamespace(calls=calls, tmp_path=tmp_path, grader_folder=grader_folder)


def test_first_run_runs_every_stage_in_order(stubbed, capsys):
    run = demo.run_demo(stubbed.tmp_path / "out", num_threads=1, bootstrap=7)
    assert [call[0] for call in stubbed.calls] == ["generate", "plan", "segmentation", "grader", "fusion", "predict",
                                                   "evaluate", "evaluate"]
    assert ("fusion", (0,), "supcon") in stubbed.calls  # screening thresholds from fold 0's validation
    assert ("generate", demo.PHANTOM_PRESET) in stubbed.calls
    plan_argv = stubbed.calls[1][1]
    assert plan_argv[:2] == ("-d", "501") and "--preset" in plan_argv and demo.PLANNING_PRESET in plan_argv
    assert ("segmentation", False) in stubbed.calls and ("evaluate", "Ts", 7, "label") in stubbed.calls
    assert ("evaluate", "Ts", 7, "position") in stubbed.calls  # names ignored, printed second
    assert ("predict", True, (0,)) in stubbed.calls  # always --continue, fold 0 only
    assert [timing.status for timing in run.timings] == ["done", "done", "done", "done", "done", "done"]
    printed = capsys.readouterr().out
    assert "[3/6] train segmentation" in printed and "TABLE" in printed and "screening thresholds" in printed
    assert str(stubbed.tmp_path / "out" / "case_report.png") in printed
    assert (stubbed.tmp_path / "out" / "metrics.json").is_file()


def test_second_run_reuses_what_the_first_finished(stubbed):
    demo.run_demo(stubbed.tmp_path / "out", num_threads=1)
    stubbed.calls.clear()
    run = demo.run_demo(stubbed.tmp_path / "out", num_threads=1)
    assert [call[0] for call in stubbed.calls] == ["plan", "predict", "evaluate", "evaluate"]  # plan reuses its own files
    assert [timing.status for timing in run.timings] == ["skipped", "done", "skipped", "skipped", "skipped", "done"]


def test_predictions_older_than_a_model_are_redone(stubbed):
    import os
    import time

    demo.run_demo(stubbed.tmp_path / "out", num_threads=1)
    assert demo.vfscreen_grader_final(FAKE_PLANS) == stubbed.grader_folder / "checkpoint_final.pth"
    later = time.time() + 60
    os.utime(stubbed.grader_folder / "checkpoint_final.pth", (later, later))  # the grader was retrained
    stubbed.calls.clear()
    demo.run_demo(stubbed.tmp_path / "out", num_threads=1)
    assert ("predict", False, (0,)) in stubbed.calls


def test_a_missing_fusion_model_is_fitted_for_a_trained_grader(stubbed):
    demo.run_demo(stubbed.tmp_path / "out", num_threads=1)
    (stubbed.grader_folder.parent / "fusion.json").unlink()
    stubbed.calls.clear()
    demo.run_demo(stubbed.tmp_path / "out", num_threads=1)
    assert [call[0] for call in stubbed.calls] == ["plan", "fusion", "predict", "evaluate", "evaluate"]


def test_interrupted_trainings_are_continued(stubbed):
    stubbed.grader_folder.mkdir(parents=True)
    (stubbed.grader_folder / "checkpoint_latest.pth").write_bytes(b"")
    segmentation_folder = demo.segmentation_fold_folder(FAKE_PLANS)
    segmentation_folder.mkdir(parents=True)
    (segmentation_folder / "checkpoint_latest.pth").write_bytes(b"")
    run = demo.run_demo(stubbed.tmp_path / "out", num_threads=1)
    assert ("segmentation", True) in stubbed.calls and ("grader", True) in stubbed.calls
    assert ("fusion", (0,), "supcon") in stubbed.calls
    assert [timing.status for timing in run.timings][2:4] == ["continued", "continued"]


def test_default_output_follows_vfscreen_home(tmp_path, monkeypatch):
    monkeypatch.setenv("VFSCREEN_HOME", str(tmp_path / "home"))
    assert demo.default_output_folder() == (tmp_path / "home" / "demo_predictions").resolve()


@pytest.mark.parametrize("argv", [["-np", "0"], ["--bootstrap", "-1"]])
def test_bad_arguments_exit_with_usage_code(argv, stubbed):
    with pytest.raises(SystemExit) as exit_info:
        demo.main(argv)
    assert exit_info.value.code == EXIT_USAGE
    assert stubbed.calls == []
