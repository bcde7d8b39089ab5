"""vfscreen_evaluate on outputs written by vfscreen_predict itself (fake segmenter and grader of the prediction
tests): contract 5 as actually written is read, matched and scored exactly."""
import json

import numpy as np
import SimpleITK as sitk

from test_predict_outputs import FRACTURED, fake_models, fake_segmenter, make_ct
from vfscreen import labels
from vfscreen.evaluation.evaluate import evaluate_predictions
from vfscreen.inference.predict import predict


def test_evaluate_real_prediction_outputs(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    reference = tmp_path / "Dataset991_Reference"
    (reference / "labelsTs").mkdir(parents=True)
    (reference / "dataset.json").write_text(json.dumps({"vfscreen": {"verse_ids": labels.verse_ids_dict()}}))
    grade_rows = ["case_id,label,grade"]
    for case_id, direction in (("caseA", (1, 0, 0, 0, 1, 0, 0, 0, 1)), ("caseB", (-1, 0, 0, 0, -1, 0, 0, 0, 1))):
        image = make_ct(inputs / f"{case_id}_0000.nii.gz", direction=direction)
        class_map, _ = fake_segmenter(image)
        fractured_block = labels.class_to_verse(class_map) == labels.NAME_TO_VERSE[FRACTURED]
        if case_id == "caseB":  # the reference names every vertebra one lower: prediction mislabels all of them
            verse = labels.class_to_verse(class_map)
            shifted = np.zeros_like(verse)
            for verse_id in np.unique(verse[verse > 0]):
                order = labels.SPINE_ORDER
                shifted[verse == verse_id] = order[order.index(int(verse_id)) + 1]
            class_map = labels.verse_to_class(shifted)
        mask = sitk.GetImageFromArray(class_map.astype(np.uint8))
        mask.CopyInformation(image)
        sitk.WriteImage(mask, str(reference / "labelsTs" / f"{case_id}.nii.gz"))
        verse = labels.class_to_verse(class_map)
        for verse_id in np.unique(verse[verse > 0]):
            grade = 2 if fractured_block[verse == verse_id].all() else 0  # the block the fake grader calls G2
            grade_rows.append(f"{case_id},{verse_id},{grade}")
    (reference / "grades.csv").write_text("\n".join(grade_rows) + "\n")
    predict(inputs, tmp_path / "out", models=fake_models())

    result = evaluate_predictions(reference, tmp_path / "out", n_bootstrap=0, progress=False)
    per_case = {case["case_id"]: case for case in result["per_case"]}
    assert per_case["caseA"]["missed"] == [] and per_case["caseA"]["extra"] == []
    assert per_case["caseA"]["dice_mean"] == 1.0
    assert per_case["caseB"]["identified"] == []  # every label is off by one vertebra (> 20 mm)
    segmentation = result["metrics"]["segmentation"]
    assert segmentation["identification_rate"]["value"] == 0.5
    assert segmentation["num_missed"] == 3 and segmentation["num_extra"] == 3
    rows = {(row["case_id"], row["name"]): row for row in result["vertebrae"]}
    assert rows[("caseA", FRACTURED)]["predicted_grade"] == 2 and rows[("caseA", FRACTURED)]["matched"]
    fractured_b = next(row for row in result["vertebrae"] if row["case_id"] == "caseB" and row["grade"] == 2)
    assert fractured_b["name"] != FRACTURED and not fractured_b["matched"]  # missed fracture: a false negative
    grader = result["metrics"]["classification"]["vertebra"]["grader"]
    assert grader["argmax"]["counts"] == {"tp": 1, "fp": 0, "tn": 4, "fn": 1}
