"""vfscreen_evaluate end to end on fabricated prediction outputs (contract 5) and a fabricated reference; the
cross-validation mode on fabricated grader folds (contract 4). Expected values are computed by hand here."""
import json

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from vfscreen import labels
from vfscreen.core import fusion_model
from vfscreen.evaluation import fusion
from vfscreen.evaluation.cli import main
from vfscreen.evaluation.evaluate import evaluate_predictions

L1, L2, L3, L4 = 20, 21, 22, 23
SPACING = (1.5, 2.0, 5.0)
DIRECTION = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # rotated in-plane


def spine_array(present=(L1, L2, L3), extra_l4=False) -> np.ndarray:
    array = np.zeros((12, 10, 8), dtype=np.uint8)
    for position, label in enumerate((L1, L2, L3)):
        if label in present:
            array[4 * position: 4 * position + 4, 2:8, 2:6] = label
    if extra_l4:
        array[0:2, 0:2, 0:2] = L4
    return array


def write_image(path, array):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    image.SetOrigin((5.0, -7.0, 100.0))
    image.SetDirection(DIRECTION)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def vertebra(label, probabilities, ratio):
    return {"label": label, "name": labels.name_of(label), "grade": int(np.argmax(probabilities)),
            "probabilities": probabilities, "p_fracture": 1 - probabilities[0], "uncertainty": 0.1,
            "fold_disagreement": 0.0, "label_confidence": 0.99,
            "heights_mm": {"anterior": 20 * ratio, "middle": 20.0, "posterior": 20.0}, "genant_ratio": ratio,
            "morph_grade": None, "centroid_mm": [0.0, 0.0, 0.0], "truncated": False}


def write_prediction(folder, case_id, vertebrae, seg_array):
    folder.mkdir(parents=True, exist_ok=True)
    record = {"case_id": case_id, "vertebrae": vertebrae,
              "patient": {"worst_grade": max(v["grade"] for v in vertebrae), "any_fracture": True,
                          "num_vertebrae": len(vertebrae), "p_fracture": max(v["p_fracture"] for v in vertebrae)},
              "model": {"dataset": "Dataset501_SyntheticSpine"}}
    (folder / f"{case_id}.json").write_text(json.dumps(record))
    write_image(folder / f"{case_id}_seg.nii.gz", seg_array)


@pytest.fixture
def reference(tmp_path):
    """A raw-dataset-style reference: labelsTs in nnU-Net class ids, dataset.json with a vfscreen entry."""
    root = tmp_path / "Dataset900_Ref"
    for case_id in ("caseA", "caseB", "caseC"):
        write_image(root / "labelsTs" / f"{case_id}.nii.gz", labels.verse_to_class(spine_array()))
    (root / "labelsTr").mkdir()
    (root / "dataset.json").write_text(json.dumps({"labels": labels.nnunet_labels_dict(),
                                                   "vfscreen": {"verse_ids": labels.verse_ids_dict()}}))
    (root / "grades.csv").write_text("case_id,label,grade\n"
                                     "caseA,20,0\ncaseA,21,0\ncaseA,22,1\n"
                                     "caseB,20,0\ncaseB,21,2\ncaseB,22,2\n"
                                     "caseC,20,0\ncaseC,21,0\ncaseC,22,0\n"
                                     "trainingCase,20,3\n")
    return root


@pytest.fixture
def predictions(tmp_path):
    folder = tmp_path / "predicted"
    write_prediction(folder, "caseA", [vertebra(L1, [0.9, 0.05, 0.03, 0.02], 0.95),
                                       vertebra(L2, [0.6, 0.3, 0.05, 0.05], 0.9),
                                       vertebra(L3, [0.2, 0.5, 0.2, 0.1], 0.78),
                                       vertebra(L4, [0.5, 0.5, 0.0, 0.0], 0.8)],
                     spine_array(extra_l4=True))
    write_prediction(folder, "caseB", [vertebra(L1, [0.7, 0.2, 0.05, 0.05], 0.92),
                                       vertebra(L2, [0.1, 0.2, 0.6, 0.1], 0.7)],
                     spine_array(present=(L1, L2)))  # L3 (grade 2) missed -> false negative
    write_prediction(folder, "caseD", [vertebra(L1, [1.0, 0.0, 0.0, 0.0], 1.0)], spine_array(present=(L1,)))
    (folder / "errors.csv").write_text("case_id,error\ncaseC,could not read image\n")
    return folder


def hand_auroc(truth, score):
    positives = [s for t, s in zip(truth, score) if t]
    negatives = [s for t, s in zip(truth, score) if not t]
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in positives for n in negatives) / (
        len(positives) * len(negatives))


def test_cli_on_fabricated_predictions(reference, predictions, tmp_path, capsys):
    output = tmp_path / "metrics.json"
    with pytest.raises(SystemExit) as exited:
        main(["-ref", str(reference), "-pred", str(predictions), "-o", str(output), "--bootstrap", "20", "--quiet"])
    assert exited.value.code == 0
    printed = capsys.readouterr().out
    assert "AUCROC" in printed and "Macro-F1" in printed and "caseC" in printed
    result = json.loads(output.read_text())
    # rows in grades.csv order: A-L1..L3, B-L1..L3, C-L1..L3 (caseC has no prediction: every vertebra missed)
    truth = [0, 0, 1, 0, 2, 2, 0, 0, 0]
    p_fracture = [0.1, 0.4, 0.8, 0.3, 0.9, 0.0, 0.0, 0.0, 0.0]
    predicted = [0, 0, 1, 0, 2, 0, 0, 0, 0]
    binary = result["metrics"]["classification"]["vertebra"]["grader"]
    assert binary["auroc"]["value"] == pytest.approx(hand_auroc([t > 0 for t in truth], p_fracture), abs=1e-9)
    assert binary["auroc"]["value"] == pytest.approx(13.5 / 18, abs=1e-9)
    assert binary["argmax"]["sensitivity"]["value"] == pytest.approx(2 / 3, abs=1e-9)
    assert binary["argmax"]["specificity"]["value"] == pytest.approx(1.0, abs=1e-9)
    assert binary["auroc"]["ci95"] is not None and result["bootstrap"]["n_resamples"] == 20
    assert [v["predicted_grade"] for v in result["vertebrae"]] == predicted
    assert [v["matched"] for v in result["vertebrae"]] == [True] * 5 + [False] * 4
    # morphometry from the JSON's genant_ratio (morph_grade null -> Genant rule on the ratio)
    morph = result["metrics"]["classification"]["vertebra"]["morphometry"]
    assert morph["genant_rule"]["sensitivity"]["value"] == pytest.approx(2 / 3, abs=1e-9)  # 0.78 -> G1, 0.7 -> G1
    # no fusion model given: reported as unavailable, not invented
    fused = result["metrics"]["classification"]["vertebra"]["fused"]["auroc"]
    assert fused["value"] is None and "fusion" in fused["reason"]
    segmentation = result["metrics"]["segmentation"]
    assert segmentation["identification_rate"]["value"] == pytest.approx(5 / 9, abs=1e-12)
    assert segmentation["dice_mean"]["value"] == pytest.approx(5 / 9, abs=1e-12)
    assert (segmentation["num_missed"], segmentation["num_extra"]) == (4, 1)
    cases = result["cases"]
    assert cases["missing_predictions"] == ["caseC"] and cases["without_reference"] == ["caseD"]
    assert cases["failed_in_prediction"] == {"caseC": "could not read image"}
    assert cases["grades_of_cases_without_mask"] == ["trainingCase"]
    assert cases["reference_masks"] == "nnU-Net class ids"
    patient = result["metrics"]["classification"]["patient"]["grader"]
    assert patient["auroc"]["value"] == pytest.approx(1.0)  # A 0.8, B 0.9 fractured; C 0.0 not


def test_fusion_file_gives_fused_score_and_thresholds(reference, predictions, tmp_path):
    model = {"schema_version": 1, "kind": "vfscreen_fusion", "features": list(fusion_model.FEATURES),
             "feature_mean": [0.0, 0.0], "feature_scale": [1.0, 1.0], "coefficients": [1.0, -5.0], "intercept": 4.0,
             "thresholds": {"grader": 0.35, "morphometry": 0.15, "fused": 0.5}}
    path = fusion.save_fusion(model, tmp_path / "fusion.json")
    result = evaluate_predictions(reference, predictions, fusion=path, n_bootstrap=0, progress=False)
    rows = result["vertebrae"]
    expected = fusion_model.fused_probability(model, [r["score_grader"] for r in rows], [r["genant_ratio"] if r[
        "genant_ratio"] is not None else np.nan for r in rows])
    expected = np.where([r["matched"] for r in rows], expected, 0.0)
    np.testing.assert_allclose([r["score_fused"] for r in rows], expected, atol=1e-12)
    at_threshold = result["metrics"]["classification"]["vertebra"]["grader"]["validation_threshold"]
    # p >= 0.35 calls A-L2 (0.4) fractured: specificity 5/6; sensitivity 2/3 (B-L3 missed)
    assert at_threshold["specificity"]["value"] == pytest.approx(5 / 6, abs=1e-12)
    assert at_threshold["sensitivity"]["value"] == pytest.approx(2 / 3, abs=1e-12)


def test_masks_folder_with_verse_ids_and_json_centroids(tmp_path, predictions):
    reference = tmp_path / "masks"
    write_image(reference / "caseA.nii.gz", spine_array())
    (reference / "grades.csv").write_text("case_id,label,grade\ncaseA,20,0\ncaseA,21,0\ncaseA,22,1\n")
    (predictions / "caseA_seg.nii.gz").unlink()  # centroids now come from the JSON: all at (0,0,0), far away
    result = evaluate_predictions(reference, predictions, n_bootstrap=0, progress=False)
    assert result["cases"]["reference_masks"] == "VerSe ids"
    assert result["metrics"]["segmentation"]["identification_rate"]["value"] == 0.0
    assert result["metrics"]["segmentation"]["dice_mean"]["value"] is None
    assert not any(v["matched"] for v in result["vertebrae"])


def test_no_case_in_common_exits_2_with_one_message(reference, tmp_path, capsys):
    other = tmp_path / "other"
    write_prediction(other, "somethingElse", [vertebra(L1, [1.0, 0.0, 0.0, 0.0], 1.0)], spine_array())
    with pytest.raises(SystemExit) as exited:
        main(["-ref", str(reference), "-pred", str(other), "--quiet"])
    assert exited.value.code == 2
    error_lines = capsys.readouterr().err.strip().splitlines()
    assert len(error_lines) == 1 and "no case in common" in error_lines[0]
    assert not (other / "metrics.json").exists()


def test_bad_prediction_json_names_the_file(reference, predictions):
    record = json.loads((predictions / "caseA.json").read_text())
    record["vertebrae"][0]["probabilities"] = [0.5, 0.5, 0.5, 0.5]
    (predictions / "caseA.json").write_text(json.dumps(record))
    with pytest.raises(SystemExit) as exited:
        main(["-ref", str(reference), "-pred", str(predictions), "--quiet"])
    assert exited.value.code == 3


# --- cross-validation -------------------------------------------------------------------------------------------

def test_cross_validation_pools_folds_and_fits_fusion(session_home, capsys):
    dataset = "Dataset587_EvalCrossValidation"
    raw = session_home / "raw" / dataset
    raw.mkdir(parents=True)
    rng = np.random.default_rng(1)
    cases = [f"cv{i:02d}" for i in range(8)]
    grades = pd.DataFrame([(c, label, int(rng.integers(0, 4)) if label == L2 else 0)
                           for c in cases for label in (L1, L2, L3)], columns=["case_id", "label", "grade"])
    grades.loc[grades["case_id"].isin(["cv00", "cv01"]) & (grades["label"] == L2), "grade"] = [0, 2]
    grades.to_csv(raw / "grades.csv", index=False)
    preprocessed = session_home / "preprocessed" / dataset
    preprocessed.mkdir(parents=True)
    splits = [{"train": cases[4:], "val": cases[:4]}, {"train": cases[:4], "val": cases[4:]}]
    (preprocessed / "splits_final.json").write_text(json.dumps(splits))
    model = session_home / "results" / dataset / "vfscreen_grader__vfscreenPlans__3d"
    for fold, split in enumerate(splits):
        rows = []
        for case_id in split["val"]:
            if case_id == "cv07":
                continue  # no prediction: its vertebrae are missed
            for _, row in grades[grades["case_id"] == case_id].iterrows():
                p_fracture = 0.8 if row.grade > 0 else 0.2 + 0.1 * fold
                probabilities = [1 - p_fracture, p_fracture / 3, p_fracture / 3, p_fracture / 3]
                rows.append({"case_id": case_id, "label": row.label, "grade": row.grade,
                             "predicted_grade": int(np.argmax(probabilities)),
                             **{f"p_g{g}": probabilities[g] for g in range(4)},
                             "genant_ratio": 0.7 if row.grade > 0 else 0.95})
        (model / f"fold_{fold}" / "validation").mkdir(parents=True)
        pd.DataFrame(rows).to_csv(model / f"fold_{fold}" / "validation" / "predictions.csv", index=False)
    with pytest.raises(SystemExit) as exited:
        main(["-d", "587", "-c", "3d", "--cv", "--fit-fusion", "--bootstrap", "10", "--quiet"])
    assert exited.value.code == 0, capsys.readouterr().err
    result = json.loads((model / "cv_metrics.json").read_text())
    assert result["mode"] == "cross_validation" and result["folds"] == [0, 1]
    assert result["cases"]["missing_predictions"] == ["cv07"]
    table = pd.DataFrame(result["vertebrae"])
    assert (~table["matched"]).sum() == 3
    vertebra_level = result["metrics"]["classification"]["vertebra"]
    truth = table["grade"] > 0
    assert vertebra_level["grader"]["auroc"]["value"] == pytest.approx(
        hand_auroc(truth.tolist(), table["score_grader"].tolist()), abs=1e-9)
    assert vertebra_level["fused"]["auroc"]["value"] is not None  # cross-fitted from the other fold
    assert vertebra_level["grader"]["validation_threshold"]["sensitivity"]["value"] is not None
    assert result["metrics"]["segmentation"]["identification_rate"]["value"] is None
    fitted = fusion_model.load_fusion(model / "fusion.json")
    assert fitted["fitted_on"]["folds"] == [0, 1] and fitted["thresholds"]["grader"] is not None


def test_cross_validation_reads_the_grader_table_and_measures_morphometry(session_home):
    """predictions.csv exactly as the grader writes it (p_G0..p_G3, no genant_ratio): the Genant ratio is measured
    on the reference masks by the prediction's morphometry code; a single fold -> cross-fitting reported as
    unavailable."""
    from vfscreen.evaluation.evaluate import evaluate_cross_validation
    from vfscreen.training.grader.validation import predictions_table

    dataset = "Dataset588_EvalGraderTable"
    raw = session_home / "raw" / dataset
    cases = ["g0", "g1", "g2"]
    for case_id in cases:
        array = np.zeros((20, 10, 8), dtype=np.uint8)
        array[6:10, 2:8, 2:6] = L1  # a box: heights equal, ratio 1 (not touching the border)
        array[11:15, 2:8, 2:6] = L2
        write_image(raw / "labelsTr" / f"{case_id}.nii.gz", labels.verse_to_class(array))
    (raw / "dataset.json").write_text(json.dumps({"vfscreen": {"verse_ids": labels.verse_ids_dict()}}))
    grades = pd.DataFrame([(c, label, 1 if (c, label) == ("g1", L2) else 0) for c in cases for label in (L1, L2)],
                          columns=["case_id", "label", "grade"])
    grades.to_csv(raw / "grades.csv", index=False)
    (session_home / "preprocessed" / dataset).mkdir(parents=True)
    (session_home / "preprocessed" / dataset / "splits_final.json").write_text(
        json.dumps([{"train": [], "val": cases}]))
    rows = grades.assign(truncated=False)
    probabilities = np.array([[0.9, 0.05, 0.03, 0.02] if g == 0 else [0.3, 0.4, 0.2, 0.1] for g in rows["grade"]])
    validation = session_home / "results" / dataset / "vfscreen_grader__vfscreenPlans__3d" / "fold_0" / "validation"
    validation.mkdir(parents=True)
    predictions_table(rows, probabilities).to_csv(validation / "predictions.csv", index=False)
    result = evaluate_cross_validation(588, "3d", n_bootstrap=0, progress=False)
    assert "measured on the reference masks" in result["morphometry"]
    table = pd.DataFrame(result["vertebrae"])
    assert np.allclose(table["genant_ratio"], 1.0, atol=0.05)  # boxes: equal heights
    assert (table["morph_grade"] == 0).all()
    grader = result["metrics"]["classification"]["vertebra"]["grader"]
    assert grader["auroc"]["value"] == 1.0 and grader["argmax"]["sensitivity"]["value"] == 1.0
    assert grader["validation_threshold"]["sensitivity"]["value"] is None
    assert "2 folds" in grader["validation_threshold"]["sensitivity"]["reason"]
    assert result["metrics"]["classification"]["vertebra"]["fused"]["auroc"]["value"] is None
    # morphometry: every box has ratio ~1 -> AUROC defined (scores exist), but the Genant rule finds no fracture
    morph = result["metrics"]["classification"]["vertebra"]["morphometry"]
    assert morph["genant_rule"]["sensitivity"]["value"] == 0.0


def test_not_graded_vertebra_counts_as_g0(reference, predictions):
    record = json.loads((predictions / "caseA.json").read_text())
    record["vertebrae"][2].update({"grade": None, "probabilities": None, "p_fracture": None})  # L3, grade 1
    (predictions / "caseA.json").write_text(json.dumps(record))
    result = evaluate_predictions(reference, predictions, n_bootstrap=0, progress=False)
    assert result["cases"]["matched_not_graded"] == ["caseA:L3"]
    row = result["vertebrae"][2]
    assert row["matched"] and not row["graded"] and row["predicted_grade"] == 0 and row["score_grader"] == 0.0
    assert row["genant_ratio"] == pytest.approx(0.78)  # morphometry still reported
    grader = result["metrics"]["classification"]["vertebra"]["grader"]
    assert grader["argmax"]["sensitivity"]["value"] == pytest.approx(1 / 3, abs=1e-12)


def test_truncated_reference_vertebra_not_graded_is_excluded_and_listed(reference, predictions):
    grades = pd.read_csv(reference / "grades.csv", dtype={"case_id": str})
    grades["truncated"] = (grades["case_id"] == "caseB") & (grades["label"] == L3)  # the missed G2
    grades.to_csv(reference / "grades.csv", index=False)
    result = evaluate_predictions(reference, predictions, n_bootstrap=0, progress=False)
    assert result["cases"]["excluded_truncated_not_graded"] == ["caseB:L3"]
    assert len(result["vertebrae"]) == 8
    grader = result["metrics"]["classification"]["vertebra"]["grader"]
    assert grader["argmax"]["sensitivity"]["value"] == 1.0  # 2 of 2 graded fractures found
    assert result["metrics"]["segmentation"]["num_missed"] == 4  # segmentation still counts it
    counted = evaluate_predictions(reference, predictions, n_bootstrap=0, progress=False, include_truncated=True)
    assert counted["metrics"]["classification"]["vertebra"]["grader"]["argmax"]["sensitivity"]["value"] == \
        pytest.approx(2 / 3, abs=1e-12)


def test_method_columns_from_the_plan_and_the_model_folder():
    from vfscreen.core.model_folders import loss_of_grader_folder
    from vfscreen.evaluation.table import describe_method

    plans = {"configurations": {"3d": {"grader": {
        "network": {"squeeze_excitation": True, "n_blocks_per_stage": [1, 3, 4, 6, 3]},
        "loss": {"name": "supcon"}, "optimizer": {"name": "sgd"}}}}}
    assert describe_method(plans) == {"FE": "SE-ResNet (17 blocks)", "Loss": "SupCon", "Optimizer": "SGD"}
    assert describe_method(plans, loss="ce")["Loss"] == "Cross Entropy"  # a CE model keeps the SupCon plan
    assert loss_of_grader_folder("/r/Dataset501_X/vfscreen_graderCE__vfscreenPlans__3d") == "ce"
    assert loss_of_grader_folder("/r/Dataset501_X/vfscreen_grader__vfscreenPlans__3d") == "supcon"
    assert loss_of_grader_folder("/r/Dataset501_X/nnUNetTrainer__nnUNetPlans__3d_fullres") is None


def test_position_matching_grades_misnamed_vertebrae(reference, tmp_path):
    from vfscreen.evaluation.evaluate import evaluate_predictions

    # caseB found at the right places but named one level too low (L2, L3, L4 for L1, L2, L3)
    folder = tmp_path / "misnamed"
    array = spine_array()
    shifted = np.where(array > 0, array + 1, 0).astype(np.uint8)
    write_prediction(folder, "caseB", [vertebra(L2, [0.7, 0.2, 0.05, 0.05], 0.92),
                                       vertebra(L3, [0.1, 0.2, 0.6, 0.1], 0.7),
                                       vertebra(L4, [0.1, 0.1, 0.7, 0.1], 0.75)], shifted)
    by_label = evaluate_predictions(reference, folder, n_bootstrap=0, progress=False)
    by_position = evaluate_predictions(reference, folder, n_bootstrap=0, progress=False, matching="position")
    rows = {(r["case_id"], r["label"]): r for r in by_position["vertebrae"]}
    assert by_position["matching"]["name"] == "position"
    # the reference L2 (grade 2) is graded with the prediction found at its place, named L3 there
    assert rows[("caseB", L2)]["matched"] and rows[("caseB", L2)]["predicted_grade"] == 2
    assert rows[("caseB", L1)]["p_g0"] == pytest.approx(0.7)
    # by label, L1 has no namesake (missed) and L2/L3 are compared with their upper neighbours, 20 mm away (the limit)
    label_rows = {(r["case_id"], r["label"]): r for r in by_label["vertebrae"]}
    assert not label_rows[("caseB", L1)]["matched"] and label_rows[("caseB", L2)]["p_g0"] == pytest.approx(0.7)
    assert by_position["metrics"]["segmentation"]["num_identified"] == 3
    assert by_label["metrics"]["segmentation"]["num_identified"] == 2


@pytest.mark.parametrize("flag_extra", [True, False])
def test_names_of_unflagged_vertebrae_must_be_right(reference, tmp_path, capsys, flag_extra):
    """identification_rate_unflagged: of the predicted vertebrae not flagged level_uncertain, the share named right;
    an extra vertebra (no reference of that name) counts against it unless the prediction flagged it."""
    folder = tmp_path / "flagged"
    extra = {**vertebra(L4, [0.5, 0.5, 0.0, 0.0], 0.8), "level_uncertain": flag_extra}
    write_prediction(folder, "caseA", [{**vertebra(label, [0.9, 0.05, 0.03, 0.02], 0.95), "level_uncertain": False}
                                       for label in (L1, L2, L3)] + [extra], spine_array(extra_l4=True))
    result = evaluate_predictions(reference, folder, n_bootstrap=0, progress=False)
    segmentation = result["metrics"]["segmentation"]
    assert segmentation["num_predicted_level_uncertain"] == (1 if flag_extra else 0)
    assert segmentation["num_predicted_unflagged"] == (3 if flag_extra else 4)
    assert segmentation["identification_rate_unflagged"]["value"] == pytest.approx(1.0 if flag_extra else 3 / 4)
    by_position = evaluate_predictions(reference, folder, n_bootstrap=0, progress=False, matching="position")
    assert "identification_rate_unflagged" not in by_position["metrics"]["segmentation"]
    with pytest.raises(SystemExit):
        main(["-ref", str(reference), "-pred", str(folder), "-o", str(tmp_path / "m.json"), "--bootstrap", "0",
              "--quiet"])
    assert "not flagged level_uncertain: right " + ("1.00 of 3" if flag_extra else "0.75 of 4") in capsys.readouterr().out
