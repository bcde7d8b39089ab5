"""vfscreen_predict --masks on the real example CT with TotalSegmentator's own vertebra mask (tests/data, Apache-2.0):
as a multilabel file with its embedded label table, as a TotalSegmentator per-structure folder, and resampled to
1.5 mm first; and every bad mask of the issue's list. No model is trained here: without a grader vfscreen measures,
grades morphometrically and says that no learned grade was made."""
import csv
import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from vfscreen.inference.cli import main as predict_main
from vfscreen.inference.outputs import validate_case_json

NO_MODELS = "997"  # a dataset id that exists nowhere in the test session: no trained model of any kind
TS_NAMES = {26: "vertebrae_S1", 27: "vertebrae_L5", 28: "vertebrae_L4", 29: "vertebrae_L3", 30: "vertebrae_L2",
            31: "vertebrae_L1", 32: "vertebrae_T12", 33: "vertebrae_T11"}
EXPECTED = ["T11", "T12", "L1", "L2", "L3", "L4", "L5"]


def run_predict(*arguments) -> int:
    with pytest.raises(SystemExit) as stop:
        predict_main(["-d", NO_MODELS, *map(str, arguments)])
    return stop.value.code


def single_input(tmp_path, example_ct):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(example_ct, folder / "example.nii.gz")
    return folder / "example.nii.gz"


def check_real_example(output, example_ct, convention, resampled=False):
    data = json.loads((output / "example.json").read_text())
    validate_case_json(data)
    assert [v["name"] for v in data["vertebrae"]] == EXPECTED  # S1 is not graded ...
    assert [row["name"] for row in data["landmarks"]] == ["S1"]  # ... but kept as context
    assert data["segmentation"]["source"] == "masks" and data["segmentation"]["convention"] == convention
    assert data["segmentation"]["resampled"] is resampled
    assert any("resampled to the CT grid" in w for w in data["warnings"]) is resampled
    ct, seg = sitk.ReadImage(str(example_ct)), sitk.ReadImage(str(output / "example_seg.nii.gz"))
    assert (seg.GetSize(), seg.GetSpacing(), seg.GetOrigin(), seg.GetDirection()) == \
        (ct.GetSize(), ct.GetSpacing(), ct.GetOrigin(), ct.GetDirection())
    for vertebra in data["vertebrae"]:
        assert vertebra["implausible"] is None and vertebra["grade"] is None  # no grader in this session
        # morphometry for every vertebra the field of view does not cut (T11 and T12 reach the top slice)
        assert (vertebra["heights_mm"] is not None) is (not vertebra["truncated"]), vertebra
        if not vertebra["truncated"]:
            assert 15 < min(vertebra["heights_mm"].values()) <= max(vertebra["heights_mm"].values()) < 45
    assert [v["truncated"] for v in data["vertebrae"]] == [True, True, False, False, False, False, False]
    assert data["patient"]["message"].startswith("no learned grade was made")
    assert data["model"]["no_learned_grade"] and data["patient"]["any_fracture"] is False
    assert (output / "example_report.png").is_file() and (output / "summary.csv").is_file()
    return data


def test_masks_file_with_embedded_label_table(tmp_path, example_ct, example_ct_vertebrae):
    output = tmp_path / "out"
    assert run_predict("-i", single_input(tmp_path, example_ct), "-o", output, "--masks", example_ct_vertebrae) == 0
    data = check_real_example(output, example_ct, "embedded_label_table")
    assert data["segmentation"]["labels"] == {str(k): v.split("_")[1] for k, v in TS_NAMES.items() if k != 26}
    assert not (output / "errors.csv").exists()
    assert data["model"]["no_learned_grade"].startswith("no trained grader")


def test_no_grader_flag_with_a_trained_grader(tmp_path, example_ct, example_ct_vertebrae):
    """--no-grader: the grader of -d is not even loaded (here a grader folder exists but is empty)."""
    from vfscreen import paths

    dataset = "Dataset994_NoGraderFlag"
    (paths.nnUNet_raw / dataset).mkdir(parents=True, exist_ok=True)
    (paths.nnUNet_results / dataset / "vfscreen_grader__vfscreenPlans__3d").mkdir(parents=True, exist_ok=True)
    inputs = single_input(tmp_path, example_ct)
    with pytest.raises(SystemExit) as stop:  # without the flag: the (untrained) grader is loaded and refused
        predict_main(["-d", "994", "-i", str(inputs), "-o", str(tmp_path / "with"), "--masks",
                      str(example_ct_vertebrae)])
    assert stop.value.code == 2
    output = tmp_path / "out"
    with pytest.raises(SystemExit) as stop:
        predict_main(["-d", "994", "-i", str(inputs), "-o", str(output), "--masks", str(example_ct_vertebrae),
                      "--no-grader"])
    assert stop.value.code == 0
    data = check_real_example(output, example_ct, "embedded_label_table")
    assert data["model"]["no_learned_grade"] == "--no_grader"


def test_masks_as_totalsegmentator_structure_folder(tmp_path, example_ct, example_ct_vertebrae):
    mask = sitk.ReadImage(str(example_ct_vertebrae))
    array = sitk.GetArrayFromImage(mask)
    folder = tmp_path / "masks" / "example"
    folder.mkdir(parents=True)
    for value, name in {**TS_NAMES, 0: "liver", 255: "sacrum", 254: "vertebrae_C3"}.items():
        structure = sitk.GetImageFromArray((array == value).astype(np.uint8) if value else
                                           np.zeros_like(array))  # liver / sacrum / C3: empty, as TS writes them
        structure.CopyInformation(mask)
        sitk.WriteImage(structure, str(folder / f"{name}.nii.gz"))
    output = tmp_path / "out"
    assert run_predict("-i", single_input(tmp_path, example_ct), "-o", output, "--masks", folder.parent) == 0
    check_real_example(output, example_ct, "totalseg_structure_files")


def test_masks_resampled_to_1_5_mm_first(tmp_path, example_ct, example_ct_vertebrae):
    mask = sitk.ReadImage(str(example_ct_vertebrae))
    fine_size = [int(round(n * s / 1.5)) for n, s in zip(mask.GetSize(), mask.GetSpacing())]
    reference = sitk.Image(fine_size, mask.GetPixelID())
    reference.SetSpacing((1.5, 1.5, 1.5))
    reference.SetDirection(mask.GetDirection())
    reference.SetOrigin(mask.TransformContinuousIndexToPhysicalPoint([-0.25, -0.25, -0.25]))  # same field of view
    fine = sitk.Resample(mask, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    masks = tmp_path / "masks"
    masks.mkdir()
    sitk.WriteImage(fine, str(masks / "example_seg.nii.gz"))  # SimpleITK drops the label table: ids only
    output = tmp_path / "out"
    assert run_predict("-i", single_input(tmp_path, example_ct), "-o", output, "--masks", masks) == 0
    data = check_real_example(output, example_ct, "totalseg", resampled=True)
    assert any("also fit totalseg_v1" in w for w in data["warnings"])  # 26-33 are v1 ids too: said, not hidden


def write_label(path, array, like):
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(like)
    sitk.WriteImage(image, str(path))
    return path


def bad_masks(tmp_path, example_ct, example_ct_vertebrae):
    ct = sitk.ReadImage(str(example_ct))
    mask = sitk.ReadImage(str(example_ct_vertebrae))
    array = sitk.GetArrayFromImage(mask)
    folder = tmp_path / "masks"
    folder.mkdir()
    shifted = sitk.Image(mask)
    shifted.SetOrigin([o + 1000.0 for o in mask.GetOrigin()])
    sitk.WriteImage(shifted, str(folder / "elsewhere.nii.gz"))
    write_label(folder / "background.nii.gz", np.zeros_like(array), mask)
    write_label(folder / "unknown.nii.gz", np.where(array > 0, 200, 0).astype(np.uint8), mask)
    other_patient = np.zeros_like(array)
    other_patient[:, :, :30] = np.where(array[:, :, 40:70] > 0, array[:, :, 40:70], 0)  # vertebrae moved into air
    write_label(folder / "other_patient.nii.gz", other_patient, mask)
    four_d = sitk.JoinSeries([mask, mask])
    sitk.WriteImage(four_d, str(folder / "four_d.nii.gz"))
    sitk.WriteImage(mask[:, :, 50], str(folder / "two_d.nii.gz"))
    (folder / "no_vertebra").mkdir()
    write_label(folder / "no_vertebra" / "liver.nii.gz", (array == 29).astype(np.uint8), mask)
    write_label(folder / "no_vertebra" / "sacrum.nii.gz", (array == 26).astype(np.uint8), mask)
    cases = tmp_path / "in"
    cases.mkdir()
    for name in ("elsewhere", "background", "unknown", "other_patient", "four_d", "two_d", "no_vertebra", "good"):
        sitk.WriteImage(ct, str(cases / f"{name}.nii.gz"))
    shutil.copy(example_ct_vertebrae, folder / "good.nii.gz")
    return cases, folder


EXPECTED_ERRORS = {
    "elsewhere": "does not overlap the CT", "background": "only background",
    "unknown": "fit no known convention", "other_patient": "not bone in this CT",
    "four_d": "4D with 2 volumes", "two_d": "mask is 2D", "no_vertebra": "no vertebra file",
}


def test_bad_masks_fail_their_case_alone(tmp_path, example_ct, example_ct_vertebrae):
    cases, masks = bad_masks(tmp_path, example_ct, example_ct_vertebrae)
    output = tmp_path / "out"
    assert run_predict("-i", cases, "-o", output, "--masks", masks) == 1  # documented: some cases failed
    with open(output / "errors.csv") as handle:
        errors = {row["case_id"]: row["error"] for row in csv.DictReader(handle)}
    assert set(errors) == set(EXPECTED_ERRORS)
    for case_id, text in EXPECTED_ERRORS.items():
        assert text in errors[case_id], (case_id, errors[case_id])
        assert not list(output.glob(f"{case_id}.json")) and not list(output.glob(f"{case_id}_*"))  # nothing written
    assert (output / "good.json").is_file()


def test_masks_for_some_cases_only(tmp_path, example_ct, example_ct_vertebrae):
    cases = tmp_path / "in"
    cases.mkdir()
    for name in ("with_mask", "without_mask"):
        shutil.copy(example_ct, cases / f"{name}.nii.gz")
    masks = tmp_path / "masks"
    masks.mkdir()
    shutil.copy(example_ct_vertebrae, masks / "with_mask.nii.gz")
    output = tmp_path / "out"
    assert run_predict("-i", cases, "-o", output, "--masks", masks) == 1
    with open(output / "errors.csv") as handle:
        errors = {row["case_id"]: row["error"] for row in csv.DictReader(handle)}
    assert list(errors) == ["without_mask"] and "no mask for this case" in errors["without_mask"]
    assert "not found" in errors["without_mask"]  # ... and why there is no segmentation model
    assert (output / "with_mask.json").is_file() and not (output / "without_mask.json").exists()


def test_masks_usage_errors(tmp_path, example_ct, example_ct_vertebrae, capsys):
    cases = tmp_path / "in"
    cases.mkdir()
    for name in ("a", "b"):
        shutil.copy(example_ct, cases / f"{name}.nii.gz")
    assert run_predict("-i", cases, "-o", tmp_path / "out", "--masks", example_ct_vertebrae) == 2
    assert "is one file but -i holds 2 scans" in capsys.readouterr().err
    assert run_predict("-i", cases, "-o", tmp_path / "out", "--masks", tmp_path / "absent") == 2
    assert "does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_predict("-i", cases, "-o", tmp_path / "out", "--masks", empty) == 2
    assert "no mask for any case" in capsys.readouterr().err
    assert run_predict("-i", cases, "-o", tmp_path / "out", "--mask-labels", "verse") == 2
    assert "--mask_labels needs --masks" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
