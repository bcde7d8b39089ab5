"""vfscreen_plan_and_preprocess on tiny fabricated datasets: outputs, reuse of hand-edited plans, bad input."""
import json
import warnings

import numpy as np
import pytest
import SimpleITK as sitk

from planning_dataset import make_dataset
from vfscreen import labels, paths
from vfscreen.experiment_planning import cli
from vfscreen.core.plans import load_plans, plans_file


def _exit_code(argv) -> int:
    with pytest.raises(SystemExit) as raised:
        cli.main(argv)
    return raised.value.code


@pytest.fixture(scope="module")
def planned_dataset():
    name = make_dataset(paths.nnUNet_raw, 980, "CliPlan", num_cases=6,
                        grades=lambda case, index: None if (case, index) == (0, 3) else (case + index) % 4)
    grades_file = paths.nnUNet_raw / name / "grades.csv"
    grades_file.write_text("\n".join(line for line in grades_file.read_text().splitlines()
                                     if not line.endswith(",None")) + "\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cli.run(["-d", "980", "--device", "cpu", "-np", "1", "--no-preprocess"]) == 0
    return name, [str(w.message) for w in caught]


def test_fingerprint_plans_and_splits_are_written(planned_dataset):
    name, messages = planned_dataset
    folder = paths.nnUNet_preprocessed / name
    fingerprint = json.loads((folder / "vfscreen_fingerprint.json").read_text())
    case = fingerprint["cases"][0]
    assert case["spacing_mm"] == [1.5, 1.5, 1.5] and case["shape"] == [32, 32, 32] and case["orientation"] == "LPS"
    assert set(case["intensity_percentiles_in_vertebrae"]) == {"0.5", "5", "50", "95", "99.5"}
    assert case["vertebrae"][0]["extent_mm"] == [15.0, 18.0, 7.5] and case["vertebrae"][0]["volume_ml"] > 0
    assert fingerprint["num_patients"] == 6 and fingerprint["label_histogram"] == {"L1": 6, "L2": 6, "L3": 6, "L4": 6}
    assert sum(fingerprint["grade_histogram_vertebrae"].values()) == 23
    assert sum(fingerprint["grade_histogram_patients"].values()) == 6
    assert (folder / "dataset_fingerprint.json").is_file()  # nnU-Net's own fingerprint
    assert any("no grade" in m and "case000/L4" in m for m in messages)  # ungraded vertebra: warning only
    plans = load_plans(name)
    seg = plans["configurations"]["3d"]["segmentation"]
    assert seg["nnunet_configuration"] == "3d_vfscreen" and seg["trainer"] == "vfscreenSegTrainer"
    nnunet_plans = json.loads((folder / "nnUNetPlans.json").read_text())
    assert nnunet_plans["configurations"]["3d_vfscreen"]["inherits_from"] == "3d_fullres"
    assert nnunet_plans["configurations"]["3d_vfscreen"]["vfscreen"]["num_epochs"] == seg["num_epochs"]
    splits = json.loads((folder / "splits_final.json").read_text())
    assert len(splits) == 5 and sorted(c for s in splits for c in s["val"]) == [f"case{i:03d}" for i in range(6)]


def test_existing_plans_are_reused_unless_overwritten(planned_dataset):
    name, _ = planned_dataset
    path = plans_file(name)
    plans = json.loads(path.read_text())
    plans["configurations"]["3d"]["grader"]["num_epochs"] = 7  # a hand edit
    path.write_text(json.dumps(plans))
    assert cli.run(["-d", name, "--device", "cpu", "-np", "1", "--no-preprocess"]) == 0
    assert load_plans(name)["configurations"]["3d"]["grader"]["num_epochs"] == 7


def test_segmentation_trainer_reads_the_schedule_from_the_plans(planned_dataset):
    import torch

    from vfscreen.training.segmentation import build_trainer

    name, _ = planned_dataset
    seg = load_plans(name)["configurations"]["3d"]["segmentation"]
    trainer = build_trainer(name, seg, 0, torch.device("cpu"))
    assert trainer.num_epochs == seg["num_epochs"]
    assert trainer.num_iterations_per_epoch == seg["iterations_per_epoch"]
    assert trainer.num_val_iterations_per_epoch == seg["val_iterations_per_epoch"]
    assert list(trainer.configuration_manager.patch_size) == seg["patch_size"]
    assert trainer.output_folder.endswith(f"{name}/vfscreenSegTrainer__nnUNetPlans__3d_vfscreen/fold_0")
    # the planned label grouping reaches nnU-Net: region-based training (sigmoid outputs vertebra/thoracic/lumbar)
    assert seg["label_grouping"] == "spine_regions"
    assert trainer.label_manager.has_regions and trainer.label_manager.num_segmentation_heads == len(labels.SPINE_REGIONS)
    assert trainer.dataset_json["vfscreen_label_grouping"] == "spine_regions"


def _broken_dataset(dataset_id, breakage):
    name = make_dataset(paths.nnUNet_raw, dataset_id, f"Broken{dataset_id}", num_cases=5)
    breakage(paths.nnUNet_raw / name)
    return name


def _empty_like(image):
    empty = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(image)
    return empty


def _write_label(folder, case_id, change):
    path = folder / "labelsTr" / f"{case_id}.nii.gz"
    image = sitk.ReadImage(str(path))
    sitk.WriteImage(change(image), str(path))


@pytest.mark.parametrize("dataset_id, breakage, code, message", [
    (981, lambda f: (f / "grades.csv").unlink(), 3, "grades.csv: missing"),
    (982, lambda f: (f / "dataset.json").unlink(), 3, "dataset.json: missing"),
    (983, lambda f: (f / "imagesTr" / "case002_0000.nii.gz").unlink(), 3, "CT image of training case case002 missing"),
    (984, lambda f: (f / "grades.csv").write_text("case_id,label,grade\ncase000,20,5\n"), 3, "outside 0-3"),
    (985, lambda f: (f / "grades.csv").open("a").write("case001,8,1\n"), 3, "T1.*does not contain"),
    (986, lambda f: _write_label(f, "case003", _empty_like), 3,
     "case003.*empty"),
    (987, lambda f: _write_label(f, "case004", lambda im: (im.SetSpacing((1.0, 1.5, 1.5)), im)[1]), 3,
     "geometry differs"),
])
def test_bad_input_is_one_clear_message(dataset_id, breakage, code, message, capsys):
    name = _broken_dataset(dataset_id, breakage)
    assert _exit_code(["-d", str(dataset_id), "--device", "cpu", "-np", "1", "--no-preprocess"]) == code
    error = capsys.readouterr().err
    assert error.count("vfscreen: error:") == 1
    import re
    assert re.search(message, error), error
    assert not plans_file(name).exists()


def test_unknown_dataset_and_budget_too_small(capsys):
    assert _exit_code(["-d", "777", "--no-preprocess"]) == 2
    assert "777" in capsys.readouterr().err
    name = make_dataset(paths.nnUNet_raw, 988, "TinyBudget", num_cases=5)
    assert _exit_code(["-d", name, "--device", "cuda", "--gpu-memory-gb", "0.3", "-np", "1"]) == 2
    assert "budget too small" in capsys.readouterr().err
    folder = paths.nnUNet_preprocessed / name
    assert not plans_file(name).exists() and not (folder / "nnUNetPlans.json").exists()
    assert not (folder / "splits_final.json").exists()


def test_stage_grader_cuts_only_the_crops(planned_dataset):
    name, _ = planned_dataset
    assert cli.run(["-d", name, "-np", "1", "--stage", "grader"]) == 0
    folder = paths.nnUNet_preprocessed / name
    assert (folder / "vfscreen_crops_3d" / "crops.csv").is_file()
    assert not (folder / "nnUNetPlans_3d_vfscreen").exists()


def test_full_run_preprocesses_segmentation_and_crops(planned_dataset):
    name, _ = planned_dataset
    assert cli.run(["-d", name, "-np", "1"]) == 0
    folder = paths.nnUNet_preprocessed / name
    data = folder / "nnUNetPlans_3d_vfscreen"
    assert len({p.name.split(".")[0] for p in data.glob("case*") if "_seg" not in p.name}) == 6
    import pandas as pd

    crops = pd.read_csv(folder / "vfscreen_crops_3d" / "crops.csv")
    assert crops["grade"].notna().sum() == 23
    assert np.all(crops.groupby("case_id")["fold"].nunique() == 1)
    assert cli.run(["-d", name, "-np", "1"]) == 0  # second run: up to date, nothing recomputed


def test_hand_edit_of_the_segmentation_mirror_is_refused(planned_dataset, capsys):
    name, _ = planned_dataset
    path = plans_file(name)
    original = path.read_text()
    plans = json.loads(original)
    plans["configurations"]["3d"]["segmentation"]["patch_size"] = [16, 16, 16]
    path.write_text(json.dumps(plans))
    try:
        assert _exit_code(["-d", name, "-np", "1"]) == 2
        assert "segmentation.patch_size" in capsys.readouterr().err
    finally:
        path.write_text(original)


@pytest.mark.slow
def test_train_segmentation_runs_nnunet_with_the_planned_schedule(planned_dataset):
    """One short nnU-Net training of fold 0 through train_segmentation (nnunetv2's own loop and validation)."""
    from vfscreen.training.segmentation import train_segmentation

    name, _ = planned_dataset
    assert cli.run(["-d", name, "-np", "1"]) == 0
    nnunet_plans_file = paths.nnUNet_preprocessed / name / "nnUNetPlans.json"
    original = nnunet_plans_file.read_text()
    nnunet_plans = json.loads(original)
    nnunet_plans["configurations"]["3d_vfscreen"]["vfscreen"].update(num_epochs=1, iterations_per_epoch=2,
                                                                     val_iterations_per_epoch=1)
    nnunet_plans_file.write_text(json.dumps(nnunet_plans))
    try:
        output = train_segmentation(name, load_plans(name), "3d", 0, "cpu")
    finally:
        nnunet_plans_file.write_text(original)
    assert output.name == "fold_0" and output.parent.name == "vfscreenSegTrainer__nnUNetPlans__3d_vfscreen"
    assert (output / "checkpoint_final.pth").is_file() and (output / "validation" / "summary.json").is_file()
    # nnU-Net starts a new log file whenever a trainer is created (also before a training), so read them all
    log = "".join(path.read_text() for path in sorted(output.glob("training_log_*.txt")))
    assert "Epoch 0" in log and "Epoch 1" not in log
    # validated without mirroring (a CPU plan), but the checkpoint keeps nnU-Net's axes for a GPU's prediction
    from vfscreen.core.nnunet_models import load_nnunet_checkpoint
    assert load_plans(name)["configurations"]["3d"]["segmentation"]["test_time_mirroring"] is False
    assert load_nnunet_checkpoint(output / "checkpoint_final.pth")["inference_allowed_mirroring_axes"]


@pytest.mark.parametrize("mirroring", [True, False])
def test_final_validation_mirrors_as_the_plans_predict(mirroring):
    from types import SimpleNamespace

    from vfscreen.training.segmentation import validation_mirroring
    trainer = SimpleNamespace(inference_allowed_mirroring_axes=(0, 1, 2))
    with validation_mirroring(trainer, mirroring):
        assert trainer.inference_allowed_mirroring_axes == ((0, 1, 2) if mirroring else None)
    assert trainer.inference_allowed_mirroring_axes == (0, 1, 2)


def test_cpu_count_without_affinity_call(monkeypatch):
    """macOS and Windows have no os.sched_getaffinity: the planner's device detection falls back to os.cpu_count."""
    import os

    from vfscreen.core.devices import usable_cpu_count

    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert usable_cpu_count() == 3
    assert cli.detect_device("cpu", None, None).num_threads == 3
