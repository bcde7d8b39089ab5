"""End-to-end on a real CT: a tiny model is trained on a tiny phantom dataset through the real pipeline (generator ->
planner with a preset -> nnU-Net segmentation -> SupCon grader), then vfscreen's prediction runs on the real 3 mm
abdominal CT of tests/data (TotalSegmentator example, Apache-2.0, see tests/data/NOTICE). Checked: the pipeline
runs, the outputs are well formed (the prediction JSON schema, summary, report image) and ``<case>_seg.nii.gz`` has the input's exact geometry. Accuracy is not the point (the model
sees 2 segmentation iterations).
"""
import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

DATASET_ID = 921  # private to this test (ids must be unique across the test session); the session's nnU-Net folders come from conftest.py
NUM_TRAINING_CASES = 10

# every knob of the planner turned down: 1 nnU-Net epoch of 2 iterations, 1 grader epoch of 1 crop per grade
TINY_PRESET = {
    "name": "tiny_test",
    "description": "tests/test_predict_real_ct.py: the smallest model the pipeline can train",
    "device": {"type": "cpu", "memory_gb": 4, "num_threads": 2},
    "budget": {"seg_minutes": 0.01, "min_seg_epochs": 1, "seg_iterations_per_epoch": 2,
               "seg_val_iterations_per_epoch": 1, "grader_minutes": 0.01, "min_grader_epochs": 1,
               "seg_seconds_per_iteration": 0.15, "max_seg_spacing_mm": 4.0},  # coarse: fast validation/prediction
    "configurations": {"3d": {"grader": {"num_epochs": 1, "validate_every": 1, "num_workers": 0,
                                         "sampler": {"samples_per_class": 1}}}},
}


@pytest.fixture(scope="session")
def tiny_trained_model(tmp_path_factory):
    """Dataset921 with a trained fold 0 (segmentation + grader) in the test session's nnU-Net folders."""
    from vfscreen import paths
    from vfscreen.experiment_planning import cli as planning_cli
    from vfscreen.core.plans import load_plans
    from vfscreen.phantom.generator import generate_dataset
    from vfscreen.training.grader.trainer import prepare_grader_training, train_grader
    from vfscreen.training.segmentation import train_segmentation

    folder = generate_dataset(paths.nnUNet_raw, seed=3, num_cases=NUM_TRAINING_CASES, num_test_cases=0,
                              preset="demo", num_processes=1, dataset_id=DATASET_ID, progress=False)
    dataset_name = folder.name
    preset_file = tmp_path_factory.mktemp("preset") / "tiny_test.json"
    preset_file.write_text(json.dumps(TINY_PRESET))
    assert planning_cli.run(["-d", str(DATASET_ID), "--device", "cpu", "--preset", str(preset_file),
                             "-np", "1"]) == 0
    plans = load_plans(dataset_name)
    segmentation = plans["configurations"]["3d"]["segmentation"]
    assert (segmentation["num_epochs"], segmentation["iterations_per_epoch"]) == (1, 2)  # the preset took effect
    train_segmentation(dataset_name, plans, "3d", 0, device="cpu")
    setup = prepare_grader_training(dataset_name, "3d", 0, plans, None, "cpu")
    train_grader(setup, show_progress=False)
    return dataset_name


@pytest.mark.slow
def test_predict_real_ct_keeps_geometry(example_ct, tiny_trained_model, tmp_path):
    from vfscreen.inference.outputs import validate_case_json
    from vfscreen.inference.predict import predict
    from vfscreen.inference.segmentation import load_models

    input_folder = tmp_path / "in"
    input_folder.mkdir()
    shutil.copy(example_ct, input_folder / "example_ct.nii.gz")
    # test speed only: one pass per sliding window (no test-time mirroring, no overlap) instead of 8 x ~4
    models = load_models(tiny_trained_model, "3d", [0], "cpu", use_mirroring=False)  # vfscreen_predict --disable_tta
    assert models.segmenter.predictor.use_mirroring is False
    models.segmenter.predictor.tile_step_size = 1.0
    output = tmp_path / "out"
    table = predict(input_folder, output, dataset=tiny_trained_model, folds=[0], device="cpu", num_threads=2,
                    models=models)
    assert table.attrs["errors"] == [] and table.attrs["finished"] == ["example_ct"]
    assert not (output / "errors.csv").exists()

    data = json.loads((output / "example_ct.json").read_text())
    validate_case_json(data)
    assert data["case_id"] == "example_ct" and data["model"]["dataset"] == tiny_trained_model
    image = sitk.ReadImage(str(example_ct))
    seg = sitk.ReadImage(str(output / "example_ct_seg.nii.gz"))
    assert seg.GetSize() == image.GetSize()
    assert seg.GetSpacing() == image.GetSpacing() and seg.GetOrigin() == image.GetOrigin()
    assert seg.GetDirection() == image.GetDirection()
    labels = set(np.unique(sitk.GetArrayFromImage(seg)).tolist()) - {0}
    assert labels == {v["label"] for v in data["vertebrae"]}
    assert data["patient"]["num_vertebrae"] == len(data["vertebrae"])
    assert (output / "example_ct_report.png").stat().st_size > 0
    assert (output / "summary.csv").is_file()
    with open(output / "example_ct_report.png", "rb") as report:
        assert report.read(8) == b"\x89PNG\r\n\x1a\n"
