"""Issue 8's table: every bad input, run through the command that meets it, gives one clear message, the documented
exit code (vfscreen.errors), the rest of a batch processed, and no partial output.

Commands run in-process through their console entry points (``main(argv)``, SystemExit captured); the kill -9 rows
(real processes) are in test_interrupted_runs.py."""
from __future__ import annotations

import json
import pickle
import re
import shutil

import pandas as pd
import pytest
import SimpleITK as sitk
import torch

from planning_dataset import make_dataset
from robustness.bad_files import IMAGE_DEFECTS, mr_like
from robustness.conftest import (EVIL_DATASET, PREDICT_DATASET, error_lines, make_ct, run_cli,
                                 write_preprocessed_grader_dataset, write_trained_models)
from vfscreen import paths
from vfscreen.errors import EXIT_BAD_INPUT, EXIT_CASES_FAILED, EXIT_OK, EXIT_USAGE
from vfscreen.experiment_planning.cli import main as plan_main
from vfscreen.inference.cli import main as predict_main
from vfscreen.inference.outputs import case_is_complete
from vfscreen.training.cli import main as train_main



def no_temporary_files(folder) -> bool:
    return not [p for p in folder.rglob("*") if ".tmp" in p.name]


# ------------------------------------------------------------------ vfscreen_predict: one batch, every bad image
@pytest.fixture(scope="module")
def predict_batch(trained_models, tmp_path_factory):
    """One vfscreen_predict run over a good CT, an MR-like scan and one file per image defect."""
    import io
    import sys
    from contextlib import redirect_stderr, redirect_stdout

    folder = tmp_path_factory.mktemp("predict_batch")
    inputs, output = folder / "in", folder / "out"
    inputs.mkdir()
    good = make_ct(inputs / "good.nii.gz")
    mr_like(inputs / "mr_like.nii.gz", good)
    for name, (writer, _) in IMAGE_DEFECTS.items():
        writer(inputs / f"{name}.nii.gz", good)
    before = {p.name: p.read_bytes() for p in inputs.iterdir()}
    stdout, stderr = io.StringIO(), io.StringIO()
    argv = ["-i", str(inputs), "-o", str(output), "-d", PREDICT_DATASET, "-f", "0", "-np", "1"]
    saved_argv, sys.argv = sys.argv, ["vfscreen_predict"] + argv
    try:
        with redirect_stdout(stdout), redirect_stderr(stderr), pytest.raises(SystemExit) as raised:
            predict_main(argv)
    finally:
        sys.argv = saved_argv
    after = {p.name: p.read_bytes() for p in inputs.iterdir()}
    return {"code": raised.value.code, "out": stdout.getvalue(), "err": stderr.getvalue(), "output": output,
            "inputs_unchanged": before == after}


def test_predict_batch_exit_code_and_good_cases(predict_batch):
    batch = predict_batch
    text = batch["out"] + batch["err"]
    assert batch["code"] == EXIT_CASES_FAILED, text
    assert "Traceback" not in text
    assert batch["inputs_unchanged"]
    for case_id in ("good", "mr_like"):  # the rest of the batch is processed
        assert case_is_complete(batch["output"], case_id), case_id
    mr_json = json.loads((batch["output"] / "mr_like.json").read_text())
    assert any("Hounsfield" in warning for warning in mr_json["warnings"])  # MR-like: warning, still processed
    assert not any("Hounsfield" in w for w in json.loads((batch["output"] / "good.json").read_text())["warnings"])
    summary = pd.read_csv(batch["output"] / "summary.csv", dtype={"case_id": str})
    assert {"good", "mr_like"} <= set(summary["case_id"])
    assert no_temporary_files(batch["output"])


@pytest.mark.parametrize("defect", list(IMAGE_DEFECTS))
def test_predict_bad_image(predict_batch, defect):
    batch, (_, message) = predict_batch, IMAGE_DEFECTS[defect]
    text = batch["out"] + batch["err"]
    lines = [line for line in text.replace("\r", "\n").splitlines() if f"case {defect} failed" in line]
    assert len(lines) == 1, text  # one clear line per failed case ...
    assert re.search(message, lines[0]), lines[0]  # ... saying what is wrong, naming the file or case
    assert defect in lines[0].split("failed:", 1)[1]
    assert not [p for p in batch["output"].iterdir() if p.name.startswith(defect)]  # no partial output
    errors = pd.read_csv(batch["output"] / "errors.csv", dtype={"case_id": str})
    row = errors[errors["case_id"] == defect]
    assert len(row) == 1 and re.search(message, row["error"].iloc[0])
    assert defect not in set(pd.read_csv(batch["output"] / "summary.csv", dtype={"case_id": str})["case_id"])


# ------------------------------------------------------------------ vfscreen_plan_and_preprocess: bad datasets
def _break_image(defect):
    writer = IMAGE_DEFECTS[defect][0]

    def breakage(folder):
        path = folder / "imagesTr" / "case001_0000.nii.gz"
        writer(path, sitk.ReadImage(str(folder / "imagesTr" / "case000_0000.nii.gz")))
        if defect == "slice_spacing_600mm":  # the label follows, so only the spacing is wrong
            IMAGE_DEFECTS[defect][0](folder / "labelsTr" / "case001.nii.gz",
                                     sitk.ReadImage(str(folder / "labelsTr" / "case000.nii.gz")))
    return breakage


def _edit_label(function):
    def breakage(folder):
        path = folder / "labelsTr" / "case001.nii.gz"
        label = sitk.ReadImage(str(path))
        sitk.WriteImage(function(label), str(path))
    return breakage


def _label_other_geometry(label):
    label = sitk.Image(label)
    label.SetSpacing((2.0, 2.0, 2.0))
    return label


def _label_value(value):
    def function(label):
        array = sitk.GetArrayFromImage(label)
        array[array == array.max()] = value
        edited = sitk.GetImageFromArray(array)
        edited.CopyInformation(label)
        return edited
    return function


def _add_grade_row(row):
    def breakage(folder):
        with open(folder / "grades.csv", "a") as handle:
            handle.write(row + "\n")
    return breakage


def _set_grade(case_id, label, grade):
    def breakage(folder):
        lines = (folder / "grades.csv").read_text().splitlines()
        prefix = f"{case_id},{label},"
        lines = [f"{prefix}{grade}" if line.startswith(prefix) else line for line in lines]
        (folder / "grades.csv").write_text("\n".join(lines) + "\n")
    return breakage


PLANNING_ROWS = {  # name: (dataset id, breakage, exit code, message naming file/case)
    **{f"image_{defect}": (942, _break_image(defect), EXIT_BAD_INPUT,
                           IMAGE_DEFECTS[defect][1] + r"|case001") for defect in IMAGE_DEFECTS},
    "label_other_geometry": (942, _edit_label(_label_other_geometry), EXIT_BAD_INPUT,
                             r"case001\.nii\.gz: geometry differs"),
    "label_value_99": (942, _edit_label(_label_value(99)), EXIT_BAD_INPUT, r"case001\.nii\.gz: label values"),
    "empty_label_mask": (942, _edit_label(lambda label: label * 0), EXIT_BAD_INPUT,
                         r"case001\.nii\.gz: the mask of case case001 is empty"),
    "grades_for_missing_vertebra": (942, _add_grade_row("case001,24,1"), EXIT_BAD_INPUT,
                                    r"case001\.nii\.gz: grades\.csv grades vertebra\(e\) L5"),
    "grade_7": (942, _set_grade("case001", 20, 7), EXIT_BAD_INPUT, r"grades\.csv, line \d+: grade 7 is outside 0-3"),
    "case_id_dot_dot_evil": (942, _add_grade_row("../evil,20,1"), EXIT_BAD_INPUT,
                             r"grades\.csv.*'\.\./evil' is not safe as a file name"),
}


@pytest.mark.parametrize("row", list(PLANNING_ROWS))
def test_planning_bad_dataset(row, capsys, monkeypatch):
    dataset_id, breakage, expected_code, message = PLANNING_ROWS[row]
    name = make_dataset(paths.nnUNet_raw, dataset_id, "RobustPlan", num_cases=2, size=(24, 24, 24))
    breakage(paths.nnUNet_raw / name)
    raw_before = {p: p.read_bytes() for p in (paths.nnUNet_raw / name).rglob("*") if p.is_file()}
    preprocessed = paths.nnUNet_preprocessed / name
    shutil.rmtree(preprocessed, ignore_errors=True)

    code, out, err = run_cli(plan_main, ["-d", dataset_id, "--device", "cpu", "-np", "1", "--no-preprocess"],
                             capsys, monkeypatch)
    assert code == expected_code, out + err
    lines = error_lines(err)
    assert len(lines) == 1 and "Traceback" not in out + err, err
    assert re.search(message, lines[0]), lines[0]
    written = [p.name for p in preprocessed.rglob("*")] if preprocessed.exists() else []
    assert not set(written) & {"vfscreenPlans.json", "splits_final.json", "vfscreen_fingerprint.json",
                               "nnUNetPlans.json"}, written  # refused datasets leave no plan behind
    assert raw_before == {p: p.read_bytes() for p in (paths.nnUNet_raw / name).rglob("*") if p.is_file()}


# ------------------------------------------------------------------ models, plans and output folders
class Payload:
    """Unpickling this runs ``open(marker, 'w')``: a stand-in for any code a hostile checkpoint could run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_hostile_pickles(fold_checkpoint, marker, kind):
    if kind == "torch_save":  # torch's zip format holding an arbitrary object
        torch.save({"network_weights": {}, "metadata": Payload(marker)}, fold_checkpoint)
    else:  # a bare (legacy format) pickle
        fold_checkpoint.write_bytes(pickle.dumps(Payload(marker)))


@pytest.fixture(scope="module")
def evil_models():
    return write_trained_models(EVIL_DATASET, folds=(0,))


@pytest.mark.parametrize("model", ["grader", "segmentation"])
@pytest.mark.parametrize("kind", ["torch_save", "plain_pickle"])
def test_checkpoint_pickle_of_arbitrary_object_is_refused_without_running_it(evil_models, model, kind, tmp_path,
                                                                              capsys, monkeypatch):
    marker = tmp_path / "pwned"
    folder = next(p for p in evil_models.iterdir() if ("grader" in p.name) == (model == "grader")) / "fold_0"
    checkpoint = folder / "checkpoint_final.pth"
    original = checkpoint.read_bytes()
    write_hostile_pickles(checkpoint, marker, kind)
    try:
        (tmp_path / "in").mkdir()
        make_ct(tmp_path / "in" / "case.nii.gz")
        code, out, err = run_cli(predict_main, ["-i", tmp_path / "in", "-o", tmp_path / "out", "-d", EVIL_DATASET],
                                 capsys, monkeypatch)
        assert code == EXIT_USAGE, out + err
        lines = error_lines(err)
        assert len(lines) == 1 and "Traceback" not in out + err, err
        assert str(checkpoint) in lines[0] and ("cannot be loaded safely" in lines[0] or "corrupt" in lines[0])
        assert not marker.exists(), "the checkpoint's pickled code ran"
        assert not (tmp_path / "out").exists()
        # the payload is live: an unsafe load (never done by vfscreen) would have run it
        pickle.loads(pickle.dumps(Payload(marker)))
        assert marker.exists()
    finally:
        checkpoint.write_bytes(original)


def test_missing_folds_in_model_folder(trained_models, tmp_path, capsys, monkeypatch):
    (tmp_path / "in").mkdir()
    make_ct(tmp_path / "in" / "case.nii.gz")
    code, out, err = run_cli(predict_main, ["-i", tmp_path / "in", "-o", tmp_path / "out", "-d", PREDICT_DATASET,
                                            "-f", "0", "1", "3"], capsys, monkeypatch)
    assert code == EXIT_USAGE and "Traceback" not in out + err
    lines = error_lines(err)
    assert len(lines) == 1 and "fold(s) [3] not trained" in lines[0] and "trained folds: [0, 1]" in lines[0], err
    assert not (tmp_path / "out").exists()


def test_output_folder_equal_to_input_folder(trained_models, tmp_path, capsys, monkeypatch):
    (tmp_path / "in").mkdir()
    make_ct(tmp_path / "in" / "case.nii.gz")
    code, out, err = run_cli(predict_main, ["-i", tmp_path / "in", "-o", tmp_path / "in" / ".." / "in",
                                            "-d", PREDICT_DATASET], capsys, monkeypatch)
    assert code == EXIT_USAGE and "Traceback" not in out + err
    lines = error_lines(err)
    assert len(lines) == 1 and "is the input folder" in lines[0], err
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["case.nii.gz"]


@pytest.mark.parametrize("field, value, message", [
    ("num_epochs", "ten", r"num_epochs.* must be int"),
    ("sampler", [2, 2], r"sampler.* must be an object"),
])
def test_plan_edited_to_a_wrong_type(field, value, message, capsys, monkeypatch):
    dataset_name = "Dataset943_RobustPlanEdit"
    write_preprocessed_grader_dataset(dataset_name)
    plans_path = paths.nnUNet_preprocessed / dataset_name / "vfscreenPlans.json"
    plans = json.loads(plans_path.read_text())
    plans["configurations"]["3d"]["grader"][field] = value
    plans_path.write_text(json.dumps(plans))
    code, out, err = run_cli(train_main, ["943", "3d", "0", "--stage", "grader"], capsys, monkeypatch)
    assert code == EXIT_USAGE and "Traceback" not in out + err, out + err
    lines = error_lines(err)
    assert len(lines) == 1 and "vfscreenPlans.json" in lines[0], err
    assert re.search(message, lines[0]), lines[0]
    assert not (paths.nnUNet_results / dataset_name).exists()  # nothing trained, nothing written
    assert json.loads(plans_path.read_text()) == plans  # the user's file is left as it is


def test_verbose_shows_the_traceback(trained_models, tmp_path, capsys, monkeypatch):
    (tmp_path / "in").mkdir()
    make_ct(tmp_path / "in" / "case.nii.gz")
    monkeypatch.setattr("sys.argv", ["vfscreen_predict", "--verbose"])
    from vfscreen.errors import ConfigError
    with pytest.raises(ConfigError, match="is the input folder"):
        predict_main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "in"), "--verbose"])
