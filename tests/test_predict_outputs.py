"""vfscreen_predict's outputs with a fake segmenter and grader injected through the API (no trained model needed)."""
import json

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from vfscreen.errors import ConfigError
from vfscreen.inference import outputs
from vfscreen.inference.cases import list_cases, split_cases
from vfscreen.inference.predict import Models, predict
from vfscreen.labels import NAME_TO_VERSE, VERSE_TO_CLASS

CROP_PLAN = {"mode": "fit", "patch_size": [16, 16, 16], "margin_mm": 4.0, "use_truncated": False,
             "windows": [{"name": "bone", "width": 1500, "level": 400},
                         {"name": "soft_tissue", "width": 200, "level": 40}],
             "mask_channel": "label_modulated"}
FIRST_NAME = "T12"
FRACTURED = "L1"  # the fake grader calls L1 a G2 fracture


def make_ct(path, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), num_vertebrae=3, bone=True):
    """Tiny CT: body of soft tissue in air, ``num_vertebrae`` bony blocks stacked head (+z) to feet."""
    array = np.full((48, 28, 24), -1000, np.int16)  # (z, y, x)
    array[:, 3:25, 3:21] = 40
    if bone:
        for index in range(num_vertebrae):
            top = 46 - 12 - 14 * index  # array index z grows to the head for the identity direction
            array[top:top + 10, 8:18, 7:17] = 700
            array[top + 2:top + 8, 10:16, 9:15] = 250
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.5, 1.5, 2.0))
    image.SetOrigin((-10.0, 20.0, -40.0))
    image.SetDirection(direction)
    sitk.WriteImage(image, str(path))
    return image


def fake_segmenter(image):
    """Bone above 200 HU, components labelled head -> feet starting at T12 (T13 skipped)."""
    from scipy import ndimage

    from vfscreen.inference.geometry import array_indices_to_world

    array = sitk.GetArrayFromImage(image)
    components, count = ndimage.label(array > 200)
    heights = [array_indices_to_world(image, np.argwhere(components == c).mean(0, keepdims=True))[0, 2]
               for c in range(1, count + 1)]
    class_map = np.zeros(array.shape, np.uint8)
    names = ["T12", "L1", "L2", "L3", "L4"]
    for rank, component in enumerate(np.argsort(heights)[::-1]):
        class_map[components == component + 1] = VERSE_TO_CLASS[NAME_TO_VERSE[names[rank]]]
    return class_map, None


class FakeGrader:
    crop_plan = CROP_PLAN
    patch_size = (16, 16, 16)

    def __init__(self):
        self.calls = 0

    def fold_probabilities(self, patches):
        self.calls += 1
        labels = np.round(patches[:, 2].max(axis=(1, 2, 3)) * 28).astype(int)  # mask channel = label / 28
        per_fold = []
        for fold_shift in (0.0, 0.1):
            rows = []
            for label in labels:
                if label == NAME_TO_VERSE[FRACTURED]:
                    rows.append([0.1 + fold_shift, 0.1, 0.7 - fold_shift, 0.1])
                else:
                    rows.append([0.85 - fold_shift, 0.1 + fold_shift, 0.03, 0.02])
            per_fold.append(rows)
        return np.asarray(per_fold)  # (2 folds, B, 4)


def fake_models():
    return Models(segmenter=fake_segmenter, grader=FakeGrader(), info={"dataset": "fake", "grader": {"folds": [0, 1]}})


@pytest.fixture
def input_folder(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    make_ct(folder / "caseA_0000.nii.gz")
    make_ct(folder / "caseB.nii.gz", direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))  # RAS-like
    make_ct(folder / "caseC.nii", num_vertebrae=2)
    return folder


def test_outputs_schema_and_geometry(input_folder, tmp_path):
    out = tmp_path / "out"
    table = predict(input_folder, out, models=fake_models())
    assert sorted(table["case_id"].unique()) == ["caseA", "caseB", "caseC"]
    for case_id in ("caseA", "caseB", "caseC"):
        data = json.loads((out / f"{case_id}.json").read_text())
        outputs.validate_case_json(data)
        seg = sitk.ReadImage(str(out / f"{case_id}_seg.nii.gz"))
        source = input_folder / ("caseA_0000.nii.gz" if case_id == "caseA" else
                                 "caseB.nii.gz" if case_id == "caseB" else "caseC.nii")
        image = sitk.ReadImage(str(source))
        assert seg.GetSize() == image.GetSize() and seg.GetSpacing() == image.GetSpacing()
        assert seg.GetOrigin() == image.GetOrigin() and seg.GetDirection() == image.GetDirection()
        names = [v["name"] for v in data["vertebrae"]]
        assert names[:2] == ["T12", "L1"]
        assert set(np.unique(sitk.GetArrayFromImage(seg))) == {0} | {v["label"] for v in data["vertebrae"]}
        fractured = next(v for v in data["vertebrae"] if v["name"] == FRACTURED)
        assert fractured["grade"] == 2 and abs(fractured["p_fracture"] - 0.85) < 1e-6
        assert fractured["fold_disagreement"] == pytest.approx(0.05)
        assert 0 < fractured["uncertainty"] < 1 and fractured["label_confidence"] > 0.5
        assert data["patient"] == {**data["patient"], "worst_grade": 2, "any_fracture": True,
                                   "num_vertebrae": len(names)}
        assert (out / f"{case_id}_report.png").stat().st_size > 10_000
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.columns) == outputs.SUMMARY_COLUMNS and len(summary) == len(table)
    assert not (out / "errors.csv").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_no_vertebra_is_a_valid_output(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    make_ct(folder / "empty.nii.gz", bone=False)
    predict(folder, tmp_path / "out", models=fake_models())
    data = json.loads((tmp_path / "out" / "empty.json").read_text())
    assert data["vertebrae"] == [] and data["patient"]["message"] == "no vertebra found in this scan"
    assert data["patient"]["any_fracture"] is False and (tmp_path / "out" / "empty_report.png").is_file()


def test_failing_case_goes_to_errors_and_the_rest_runs(input_folder, tmp_path):
    (input_folder / "broken.nii.gz").write_text("not an image")
    make_ct(input_folder / "bad name.nii.gz")  # a case id that is not safe as a file name
    out = tmp_path / "out"
    table = predict(input_folder, out, models=fake_models())
    assert [e["case_id"] for e in table.attrs["errors"]] == ["bad name", "broken"]
    errors = pd.read_csv(out / "errors.csv")
    assert list(errors["case_id"]) == ["bad name", "broken"] and "cannot read" in errors["error"][1]
    assert "not safe as a file name" in errors["error"][0]
    assert not list(out.glob("broken*")) and not list(out.glob("bad*"))  # nothing else written for them
    (input_folder / "bad name.nii.gz").unlink()
    assert (out / "caseC.json").is_file()
    # the case is fixed: --continue processes it, skips the others, errors.csv disappears
    (input_folder / "broken.nii.gz").unlink()
    make_ct(input_folder / "broken.nii.gz")
    table = predict(input_folder, out, models=fake_models(), continue_prediction=True)
    assert table.attrs["finished"] == ["broken"] and sorted(table.attrs["skipped"]) == ["caseA", "caseB", "caseC"]
    assert not (out / "errors.csv").exists()


def test_continue_skips_only_complete_cases(input_folder, tmp_path):
    out = tmp_path / "out"
    predict(input_folder, out, models=fake_models())
    (out / "caseB_report.png").unlink()  # incomplete case
    (out / "caseC.json").write_text("{broken")  # corrupt JSON = incomplete
    models = fake_models()
    table = predict(input_folder, out, models=models, continue_prediction=True)
    assert sorted(table.attrs["finished"]) == ["caseB", "caseC"] and table.attrs["skipped"] == ["caseA"]
    assert outputs.case_is_complete(out, "caseB") and outputs.case_is_complete(out, "caseC")
    assert len(pd.read_csv(out / "summary.csv")["case_id"].unique()) == 3


@pytest.mark.parametrize("num_parts", [1, 2, 3, 4])
def test_parts_partition_the_cases_exactly(num_parts):
    cases = list(range(11))
    parts = [split_cases(cases, num_parts, part) for part in range(num_parts)]
    assert sorted(sum(parts, [])) == cases
    assert all(not set(a) & set(b) for i, a in enumerate(parts) for b in parts[i + 1:])


def test_parts_through_the_api(input_folder, tmp_path):
    out = tmp_path / "out"
    done = []
    for part in range(2):
        done += predict(input_folder, out, models=fake_models(), num_parts=2, part_id=part).attrs["finished"]
    assert sorted(done) == ["caseA", "caseB", "caseC"]
    with pytest.raises(ConfigError):
        predict(input_folder, out, models=fake_models(), num_parts=2, part_id=2)


def test_output_equal_to_input_is_refused(input_folder):
    before = sorted(p.name for p in input_folder.iterdir())
    with pytest.raises(ConfigError, match="input folder"):
        predict(input_folder, input_folder, models=fake_models())
    with pytest.raises(ConfigError, match="input folder"):
        predict(input_folder / "caseC.nii", input_folder, models=fake_models())
    assert sorted(p.name for p in input_folder.iterdir()) == before


def test_case_listing(input_folder, tmp_path):
    assert [c.case_id for c in list_cases(input_folder)] == ["caseA", "caseB", "caseC"]
    assert [c.case_id for c in list_cases(input_folder / "caseA_0000.nii.gz")] == ["caseA"]
    # a DICOM series folder
    dicom = tmp_path / "dicom" / "patient7"
    dicom.mkdir(parents=True)
    image = sitk.Cast(sitk.ReadImage(str(input_folder / "caseC.nii")), sitk.sitkInt16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        slice_image = image[:, :, k]
        position = "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, k))))
        for tag, value in (("0020|000e", "1.2.826.0.1.3680043.2.1125.1"), ("0020|0032", position),
                           ("0008|0018", f"1.2.826.0.1.3680043.2.1125.1.{k + 1}"),
                           ("0020|0037", "1\\0\\0\\0\\1\\0"), ("0020|0013", str(k)), ("0008|0060", "CT")):
            slice_image.SetMetaData(tag, value)
        writer.SetFileName(str(dicom / f"{k:03d}.dcm"))
        writer.Execute(slice_image)
    cases = list_cases(tmp_path / "dicom")
    assert [(c.case_id, c.kind) for c in cases] == [("patient7", "dicom")]
    table = predict(tmp_path / "dicom", tmp_path / "out_dicom", models=fake_models())
    assert table.attrs["finished"] == ["patient7"]


def test_cli_exit_codes(input_folder, tmp_path, capsys):
    from vfscreen.inference.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["-i", str(input_folder), "-o", str(input_folder)])
    assert exit_info.value.code == 2 and "input folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # no trained model in the test's nnUNet_results
        main(["-i", str(input_folder), "-o", str(tmp_path / "out"), "-d", "Dataset599_Nothing"])
    assert exit_info.value.code == 2 and "Dataset599_Nothing" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_disable_tta_reaches_the_predictor(input_folder, tmp_path, monkeypatch):
    import vfscreen.inference.cli as cli_module
    from vfscreen.inference.cli import main

    seen = {}

    def fake_predict(*args, **kwargs):
        seen.update(kwargs)
        raise SystemExit(0)

    monkeypatch.setattr(cli_module, "predict", fake_predict)
    for argv, expected in (([], None), (["--disable_tta"], False), (["--enable_tta"], True)):
        with pytest.raises(SystemExit):
            main(["-i", str(input_folder), "-o", str(tmp_path / "out")] + argv)
        assert seen["use_mirroring"] is expected


class TinyRealGrader:
    """A randomly initialised GraderNet (vfscreen.core.grader_network) x 2 folds: exercises Grad-CAM for real."""

    crop_plan = CROP_PLAN
    patch_size = (16, 16, 16)

    def __init__(self):
        import torch

        from vfscreen.core.grader_network import build_grader

        torch.manual_seed(0)
        plan = {"block": "BasicBlockD", "features_per_stage": [4, 8], "n_blocks_per_stage": [1, 1],
                "strides": [1, 2], "kernel_sizes": [3, 3], "projection_dim": 8, "num_classes": 4}
        self.device = torch.device("cpu")
        self.networks = [build_grader(plan, "supcon").eval() for _ in range(2)]

    def fold_probabilities(self, patches):
        import torch

        with torch.inference_mode():
            batch = torch.from_numpy(patches)
            return np.stack([torch.softmax(net(batch)[1], 1).numpy() for net in self.networks])


def test_saliency_writes_gradcam_in_input_geometry(tmp_path):
    import torch

    from vfscreen.inference.saliency import grad_cam_image

    torch.set_num_threads(1)
    folder = tmp_path / "in"
    folder.mkdir()
    image = make_ct(folder / "case.nii.gz", direction=(0, 1, 0, -1, 0, 0, 0, 0, 1))  # rotated in-plane
    models = Models(segmenter=fake_segmenter, grader=TinyRealGrader(), saliency=grad_cam_image)
    predict(folder, tmp_path / "out", models=models, saliency=True)
    gradcam = sitk.ReadImage(str(tmp_path / "out" / "case_gradcam.nii.gz"))
    assert gradcam.GetSize() == image.GetSize() and gradcam.GetDirection() == image.GetDirection()
    assert gradcam.GetOrigin() == image.GetOrigin() and gradcam.GetSpacing() == image.GetSpacing()
    values = sitk.GetArrayFromImage(gradcam)
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "case_seg.nii.gz")))
    assert values.min() >= 0 and values.max() <= 1 + 1e-5 and values[seg > 0].max() > 0
    assert outputs.case_is_complete(tmp_path / "out", "case", saliency=True)


def test_2d_case_fails_alone_and_mr_like_range_warns(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    image = make_ct(folder / "good.nii.gz")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((20, 20), np.int16)), str(folder / "flat.nii.gz"))
    mr_array = (sitk.GetArrayFromImage(image).astype(np.float32) + 1000) / 4  # 0..425, no air below -500
    mr_image = sitk.GetImageFromArray(mr_array)
    mr_image.CopyInformation(image)
    sitk.WriteImage(mr_image, str(folder / "mr.nii.gz"))
    with pytest.warns(UserWarning, match="Hounsfield"):
        table = predict(folder, tmp_path / "out", models=fake_models())
    assert [e["case_id"] for e in table.attrs["errors"]] == ["flat"] and "2D" in table.attrs["errors"][0]["error"]
    assert sorted(table.attrs["finished"]) == ["good", "mr"]
    assert json.loads((tmp_path / "out" / "mr.json").read_text())["warnings"]
    assert json.loads((tmp_path / "out" / "good.json").read_text())["warnings"] == []


def _identity_fusion(threshold_fused):
    """fused P = sigmoid(logit(p)) = the grader's p (ratio weight 0): the decision is p >= threshold_fused."""
    return {"schema_version": 1, "kind": "vfscreen_fusion", "features": ["logit_p_fracture", "genant_ratio"],
            "feature_mean": [0.0, 0.0], "feature_scale": [1.0, 1.0], "coefficients": [1.0, 0.0], "intercept": 0.0,
            "thresholds": {"grader": threshold_fused, "morphometry": 0.2, "fused": threshold_fused},
            "fitted_on": {"folds": [0]}}


@pytest.mark.parametrize("fusion, flagged", [
    (None, [FRACTURED]),  # no validation thresholds: argmax grade > 0
    (_identity_fusion(0.5), [FRACTURED]),
    (_identity_fusion(0.15), "all"),  # every vertebra has p = 0.2 >= 0.15: flagged although argmax says G0
])
def test_screening_decision_uses_the_validation_threshold(input_folder, tmp_path, fusion, flagged):
    from vfscreen.core.fusion_model import validate_fusion

    if fusion is not None:
        validate_fusion(fusion)
    models = fake_models()
    models.fusion = fusion
    out = tmp_path / "out"
    predict(input_folder, out, models=models)
    data = json.loads((out / "caseA.json").read_text())
    outputs.validate_case_json(data)
    graded = [v for v in data["vertebrae"] if v["grade"] is not None]
    expected = [v["name"] for v in graded] if flagged == "all" else flagged
    assert sorted(v["name"] for v in graded if v["suspected"]) == sorted(expected)
    assert data["patient"]["suspected"][0] == FRACTURED  # highest score first
    assert data["patient"]["any_fracture"] is True
    assert data["patient"]["message"].startswith(f"fracture suspected: {FRACTURED} (G2)")
    for vertebra in graded:
        if fusion is None:
            assert vertebra["p_fracture_fused"] is None
        elif vertebra["genant_ratio"] is not None:
            assert vertebra["p_fracture_fused"] == pytest.approx(vertebra["p_fracture"], abs=1e-6)
    assert ("threshold_fused" in data["model"]["screening"]) == (fusion is not None)
    summary = pd.read_csv(out / "summary.csv")
    assert summary.loc[summary["case_id"] == "caseA", "suspected"].sum() == len(expected)


def test_a_broken_fusion_file_is_a_clear_error(tmp_path):
    from vfscreen.errors import ConfigError
    from vfscreen.core.fusion_model import load_screening_model

    assert load_screening_model(tmp_path) is None
    (tmp_path / "fusion.json").write_text('{"kind": "something else"}')
    with pytest.raises(ConfigError, match="fusion.json.*not a vfscreen fusion model"):
        load_screening_model(tmp_path)


def test_report_verdict_names_at_most_three_flagged_vertebrae():
    from vfscreen.inference.report import GRADE_COLOURS, _verdict

    names = ["T4", "T5", "T6", "T7", "T8"]
    vertebrae = [{"name": name, "grade": 2 if name == "T6" else 0, "suspected": True} for name in names]
    patient = {"any_fracture": True, "suspected": ["T6", "T4", "T5", "T7", "T8"], "num_vertebrae": 5,
               "message": "fracture suspected: ..."}
    text, colour = _verdict({"patient": patient, "vertebrae": vertebrae})
    assert text == "FRACTURE SUSPECTED - T6 (G2), T4 (G0), T5 (G0) and 2 more" and colour == GRADE_COLOURS[2]


def test_a_ratio_outside_the_fitted_range_is_not_extrapolated():
    from vfscreen.core.fusion_model import fused_probability, validate_fusion
    from vfscreen.evaluation.fusion import fit_fusion
    from vfscreen.inference.screening import OUT_OF_RANGE_NOTE, screen

    rng = np.random.default_rng(0)
    grades = np.repeat([0, 1, 2, 3], 10)
    ratio = np.clip(np.where(grades > 0, 0.95 - 0.12 * grades, 0.95) + rng.normal(0, 0.03, 40), 0, 1)  # (40,)
    p_fracture = np.clip(0.2 + 0.15 * grades + rng.normal(0, 0.1, 40), 0.01, 0.99)
    model = validate_fusion(fit_fusion(grades, p_fracture, ratio))
    low, high = model["genant_ratio_range"]
    assert low == pytest.approx(ratio.min()) and high == pytest.approx(ratio.max())
    # a ratio of 0.05 (no vertebra is that flat: a failed mask) gets the grader's p, not an extrapolated certainty
    assert fused_probability(model, [0.1, 0.1], [0.05, low])[0] == pytest.approx(0.1)
    assert fused_probability(model, [0.1], [low])[0] != pytest.approx(0.1)
    vertebrae = [{"grade": 0, "p_fracture": 0.1, "genant_ratio": 0.05, "note": ""},
                 {"grade": 0, "p_fracture": 0.1, "genant_ratio": float(low), "note": ""}]
    screen(vertebrae, model)
    assert vertebrae[0]["p_fracture_fused"] is None and vertebrae[0]["note"] == OUT_OF_RANGE_NOTE
    assert vertebrae[0]["suspected"] is (0.1 >= model["thresholds"]["grader"])
    assert vertebrae[1]["p_fracture_fused"] is not None and vertebrae[1]["note"] == ""


def _two_parts_at_once(input_folder, out, monkeypatch) -> None:
    """-num_parts 2, both parts running at the same time into one folder, each with a failed case. The rewrite of
    errors.csv waits until both parts are about to write it: without a lock both have read the old table by then (the
    race, made certain), with the folder lock the other part waits outside and the wait times out."""
    import contextlib
    import threading

    # sorted cases: broken caseA caseB caseBb caseC -> part 0: broken, caseB, caseC; part 1: caseA, caseBb
    (input_folder / "broken.nii.gz").write_text("not an image")
    (input_folder / "caseBb.nii.gz").write_text("not an image")  # each part has a failure
    original = outputs.atomic_write_csv
    both_writing = threading.Barrier(2)

    def write(path, table):
        if path.name == "errors.csv":
            with contextlib.suppress(threading.BrokenBarrierError):
                both_writing.wait(timeout=5.0)  # parts reach here seconds apart on a busy machine
        original(path, table)

    monkeypatch.setattr(outputs, "atomic_write_csv", write)
    start = threading.Barrier(2)

    def run(part):
        start.wait()
        predict(input_folder, out, models=fake_models(), num_parts=2, part_id=part)

    threads = [threading.Thread(target=run, args=(part,)) for part in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_two_parts_at_once_into_one_folder_keep_every_row(input_folder, tmp_path, monkeypatch):
    """The rewrites of summary.csv and errors.csv are serialised by the folder lock: every case and both failures
    are kept."""
    out = tmp_path / "out"
    _two_parts_at_once(input_folder, out, monkeypatch)
    summary = pd.read_csv(out / "summary.csv")
    assert sorted(summary["case_id"].unique()) == ["caseA", "caseB", "caseC"]
    assert sorted(pd.read_csv(out / "errors.csv")["case_id"]) == ["broken", "caseBb"]


def test_without_the_folder_lock_the_parts_race(input_folder, tmp_path, monkeypatch):
    """The scenario above is a real race: with the folder lock disabled one part's failure is lost from errors.csv
    (the later writer never saw it), so the test above fails without the lock."""
    import contextlib

    monkeypatch.setattr(outputs, "folder_lock", lambda folder: contextlib.nullcontext())
    out = tmp_path / "out"
    _two_parts_at_once(input_folder, out, monkeypatch)
    assert len(pd.read_csv(out / "errors.csv")) == 1
