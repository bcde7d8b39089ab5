"""``vfscreen_benchmark speed --untrained-preset``: a plan without a trained model is timed end to end (real planner on
generated phantoms, random seeded fold ensembles loaded by prediction's own loaders, segmentation on the image,
every later stage on the ground-truth mask)."""
import json

import numpy as np
import pytest
import SimpleITK as sitk

from vfscreen import labels

from vfscreen.evaluation.benchmark import main
from vfscreen.evaluation.untrained import DOWNSTREAM_NOTE, WEIGHTS_NOTE, GroundTruthDownstream

# the planner's knobs turned down (as in test_predict_real_ct): coarse spacing, the smallest networks
TINY_PRESET = {
    "name": "tiny_speed_test", "description": "tests/test_speed_untrained.py",
    "device": {"type": "cpu", "memory_gb": 4, "num_threads": 2},
    "budget": {"seg_seconds_per_iteration": 0.15, "max_seg_spacing_mm": 4.0},
}


@pytest.mark.slow  # ~30 s on 2 shared cores: planner subprocess on 5 generated phantoms + 2-fold prediction
def test_untrained_speed_reports_every_stage(tmp_path, capsys):
    preset_file = tmp_path / "tiny.json"
    preset_file.write_text(json.dumps(TINY_PRESET))
    output = tmp_path / "speed.json"
    with pytest.raises(SystemExit) as exited:
        main(["speed", "--untrained-preset", str(preset_file), "--phantom-preset", "demo", "--planning-cases", "5",
              "-f", "0", "1", "--disable-tta", "-np", "1", "--markdown", "-o", str(output), "--work-dir", str(tmp_path / "work")])
    assert exited.value.code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    speed = json.loads(output.read_text())
    assert speed["weights"] == WEIGHTS_NOTE and speed["downstream_on"] == DOWNSTREAM_NOTE
    assert WEIGHTS_NOTE in printed and DOWNSTREAM_NOTE in printed and "s per case" in printed
    stages = {"read", "segmentation", "label_consistency", "morphometry", "grading", "report"}
    assert stages <= set(speed["mean_seconds_per_stage"]) and all(speed["mean_seconds_per_stage"][s] > 0
                                                                 for s in stages)
    for stage in stages:
        assert f"  {stage} " in printed and f"| {stage} |" in printed  # the table and the README table
    assert "cannot be compared" in printed  # 2 folds without mirroring is not the setting
    case = speed["per_case"][0]
    described = speed["untrained"]
    assert described["folds"] == [0, 1] and described["segmentation"]["mirroring"] is False
    assert described["case"]["field_of_view"] == "thoracolumbar"
    assert described["case"]["spacing_mm"].count(1.5) >= 1  # the requested slice thickness
    # downstream ran on the ground truth: one vertebra per label of the phantom mask, every one cropped
    truth = sitk.ReadImage(described["case"]["labels"])
    truth_classes = np.unique(sitk.GetArrayViewFromImage(truth))
    assert case["num_vertebrae"] == sum(int(c) in labels.CLASS_TO_VERSE for c in truth_classes)  # not landmarks
    assert case["num_crops"] == case["num_vertebrae"] > 0
    # the networks of the plan, one random checkpoint per fold, as prediction loads them
    results = tmp_path / "work" / "results"
    assert len(list(results.glob("*__nnUNetPlans__*/fold_*/checkpoint_final.pth"))) == 2
    assert len(list(results.glob("vfscreen_grader__vfscreenPlans__3d/fold_*/checkpoint_final.pth"))) == 2
    assert speed["memory"]["peak_rss_gb"] > 0 and speed["memory"]["peak_since"] == "model loading"


def test_ground_truth_downstream_times_the_network_and_returns_the_mask(tmp_path):
    from vfscreen.inference.cases import InputCase

    image = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.int16))
    image.SetSpacing((0.8, 0.9, 1.5))
    mask_array = np.zeros((4, 5, 6), np.uint8)
    mask_array[1:3, 1:4, 2:5] = 21  # L2 in nnU-Net class ids
    mask = sitk.GetImageFromArray(mask_array)
    mask.CopyInformation(image)
    sitk.WriteImage(mask, str(tmp_path / "c1.nii.gz"))
    calls = []

    def junk_segmenter(img):
        calls.append(img.GetSize())
        return np.ones((4, 5, 6), np.uint8), None

    downstream = GroundTruthDownstream(junk_segmenter, {"c1": tmp_path / "c1.nii.gz"})
    with pytest.raises(RuntimeError):
        downstream(image)  # prepare() first
    downstream.prepare(InputCase("c1", tmp_path / "c1_0000.nii.gz", "nifti"), image)
    class_map, probabilities = downstream(image)
    assert calls == [(6, 5, 4)]
    np.testing.assert_array_equal(class_map, mask_array)
    assert probabilities.shape == (labels.NUM_CLASSES, 4, 5, 6) and probabilities.dtype == np.float16
    np.testing.assert_array_equal(probabilities.argmax(axis=0), mask_array)
    np.testing.assert_array_equal(probabilities.sum(axis=0), 1.0)
    shifted = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.int16))  # other spacing: not this image's mask
    with pytest.raises(Exception, match="c1.nii.gz"):
        downstream.prepare(InputCase("c1", tmp_path / "c1_0000.nii.gz", "nifti"), shifted)


def test_markdown_states_the_target_verdict():
    from vfscreen.evaluation.speed import format_speed_markdown

    stages = {"read": 1.0, "segmentation": 50.0, "grading": 19.0}
    speed = {"command": "python -m vfscreen.evaluation.benchmark speed", "created": "2026-01-01T00:00:00+00:00",
             "machine": {"cpu_model": "Test CPU", "cpu_count": 2, "memory_gb": 8.0, "torch": "2"}, "num_threads": 2,
             "device": "cpu", "num_cases": 1, "load_average_1_5_15_min": {"before": [0.1] * 3, "after": [2.0] * 3},
             "mean_seconds_per_stage": stages, "mean_seconds_per_case": 70.0, "model_loading_s": 3.0,
             "memory": {"peak_rss_gb": 1.5, "peak_since": "model loading"},
             "model": {"grader": {"folds": [0, 1, 2, 3, 4]}}}
    text = format_speed_markdown(speed)
    assert "| segmentation | 50.00 | 71% |" in text and "| **total** | **70.00** | |" in text
    assert "misses it (70.0 s, 5 fold(s))" in text and "Test CPU" in text
    speed["mean_seconds_per_case"] = 59.0
    assert "meets it" in format_speed_markdown(speed)
