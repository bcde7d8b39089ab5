"""Evaluation metrics on a hand-made example: values computed by hand here (explicit loops over the definitions) and
by scikit-learn agree with vfscreen's to 1e-9; undefined metrics are None with a reason; the bootstrap is seeded
and resamples patients; fusion and cross-fitted thresholds."""
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

from vfscreen.errors import ConfigError
from vfscreen.core import fusion_model
from vfscreen.evaluation import fusion
from vfscreen.evaluation.bootstrap import bootstrap_intervals, resample_patients
from vfscreen.evaluation.metrics import (compute_metrics, defined, flatten_metrics, four_grade_metrics,
                                         youden_threshold)

TOL = 1e-9

# 4 patients, 10 graded vertebrae (hand-made).
CASES = ["A", "A", "A", "B", "B", "C", "C", "C", "D", "D"]
GRADES = [0, 0, 2, 0, 1, 0, 0, 3, 0, 0]
PREDICTED = [0, 1, 2, 0, 0, 0, 0, 3, 0, 1]
P_FRACTURE = [0.1, 0.4, 0.8, 0.2, 0.35, 0.05, 0.6, 0.9, 0.3, 0.7]
RATIO = [0.95, 0.9, 0.62, 0.85, 0.78, 1.0, 0.82, 0.5, 0.9, 0.77]
MORPH = [0, 0, 2, 0, 1, 0, 0, 3, 0, 1]  # Genant rule on RATIO: reduction 0.38 -> G2, 0.22 -> G1, 0.5 -> G3, 0.23 -> G1
THRESHOLD = 0.5


def example_table() -> pd.DataFrame:
    return pd.DataFrame({"case_id": CASES, "grade": GRADES, "matched": True, "predicted_grade": PREDICTED,
                         "score_grader": P_FRACTURE, "genant_ratio": RATIO, "morph_grade": MORPH,
                         "score_morph": [1 - r for r in RATIO], "score_fused": np.nan,
                         "threshold_grader": THRESHOLD, "threshold_morph": 0.21, "threshold_fused": np.nan})


# --- the definitions, by hand -----------------------------------------------------------------------------------

def hand_auroc(truth, score):
    positives = [s for t, s in zip(truth, score) if t]
    negatives = [s for t, s in zip(truth, score) if not t]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def hand_sensitivity_specificity(truth, decision):
    tp = sum(1 for t, d in zip(truth, decision) if t and d)
    fn = sum(1 for t, d in zip(truth, decision) if t and not d)
    tn = sum(1 for t, d in zip(truth, decision) if not t and not d)
    fp = sum(1 for t, d in zip(truth, decision) if not t and d)
    return tp / (tp + fn), tn / (tn + fp)


def hand_macro(truth, predicted):
    grades = sorted(set(truth) | set(predicted))
    precisions, recalls, f1s = [], [], []
    for g in grades:
        tp = sum(1 for t, p in zip(truth, predicted) if t == g and p == g)
        predicted_g = sum(1 for p in predicted if p == g)
        true_g = sum(1 for t in truth if t == g)
        precision = tp / predicted_g if predicted_g else 0.0
        recall = tp / true_g if true_g else 0.0
        precisions.append(precision)
        recalls.append(recall)
        f1s.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return sum(f1s) / len(grades), sum(precisions) / len(grades), sum(recalls) / len(grades)


def worst_per_patient(values):
    out = {}
    for case, value in zip(CASES, values):
        out[case] = max(out.get(case, -math.inf), value)
    return [out[c] for c in sorted(out)]


def test_vertebra_level_binary_matches_hand_and_sklearn():
    result = compute_metrics(example_table())["vertebra"]["grader"]
    truth = [g > 0 for g in GRADES]
    assert hand_auroc(truth, P_FRACTURE) == pytest.approx(18 / 21, abs=TOL)  # the hand example itself
    assert result["auroc"]["value"] == pytest.approx(hand_auroc(truth, P_FRACTURE), abs=TOL)
    assert result["auroc"]["value"] == pytest.approx(roc_auc_score(truth, P_FRACTURE), abs=TOL)
    sensitivity, specificity = hand_sensitivity_specificity(truth, [p > 0 for p in PREDICTED])
    assert (sensitivity, specificity) == (pytest.approx(2 / 3, abs=TOL), pytest.approx(5 / 7, abs=TOL))
    assert result["argmax"]["sensitivity"]["value"] == pytest.approx(sensitivity, abs=TOL)
    assert result["argmax"]["specificity"]["value"] == pytest.approx(specificity, abs=TOL)
    assert result["argmax"]["specificity"]["value"] == pytest.approx(
        recall_score(truth, [p > 0 for p in PREDICTED], pos_label=False), abs=TOL)
    assert result["argmax"]["counts"] == {"tp": 2, "fp": 2, "tn": 5, "fn": 1}
    sensitivity, specificity = hand_sensitivity_specificity(truth, [p >= THRESHOLD for p in P_FRACTURE])
    assert result["validation_threshold"]["sensitivity"]["value"] == pytest.approx(sensitivity, abs=TOL)
    assert result["validation_threshold"]["specificity"]["value"] == pytest.approx(specificity, abs=TOL)


def test_morphometry_scores_use_ratio_and_genant_rule():
    result = compute_metrics(example_table())["vertebra"]["morphometry"]
    truth = [g > 0 for g in GRADES]
    assert result["auroc"]["value"] == pytest.approx(hand_auroc(truth, [1 - r for r in RATIO]), abs=TOL)
    sensitivity, specificity = hand_sensitivity_specificity(truth, [m > 0 for m in MORPH])
    assert result["genant_rule"]["sensitivity"]["value"] == pytest.approx(sensitivity, abs=TOL)
    assert result["genant_rule"]["specificity"]["value"] == pytest.approx(specificity, abs=TOL)
    assert result["four_grades"]["macro_f1"]["value"] == pytest.approx(hand_macro(GRADES, MORPH)[0], abs=TOL)


def test_four_grades_match_hand_and_sklearn():
    result = compute_metrics(example_table())["vertebra"]["grader"]["four_grades"]
    f1, precision, recall = hand_macro(GRADES, PREDICTED)
    # G0: precision 5/6, recall 5/7, F1 10/13; G1: 0; G2, G3: 1
    assert (f1, precision, recall) == (pytest.approx(9 / 13, abs=TOL), pytest.approx(17 / 24, abs=TOL),
                                       pytest.approx(19 / 28, abs=TOL))
    assert result["macro_f1"]["value"] == pytest.approx(f1, abs=TOL)
    assert result["macro_precision"]["value"] == pytest.approx(precision, abs=TOL)
    assert result["macro_recall"]["value"] == pytest.approx(recall, abs=TOL)
    assert result["macro_f1"]["value"] == pytest.approx(f1_score(GRADES, PREDICTED, average="macro"), abs=TOL)
    assert result["macro_precision"]["value"] == pytest.approx(
        precision_score(GRADES, PREDICTED, average="macro", zero_division=0), abs=TOL)
    assert result["confusion_matrix"] == [[5, 2, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]


def test_patient_level_is_worst_vertebra():
    result = compute_metrics(example_table())["patient"]["grader"]
    truth = [g > 0 for g in worst_per_patient(GRADES)]
    score = worst_per_patient(P_FRACTURE)
    assert truth == [True, True, True, False]
    assert result["auroc"]["value"] == pytest.approx(hand_auroc(truth, score), abs=TOL)
    assert result["auroc"]["value"] == pytest.approx(2 / 3, abs=TOL)
    sensitivity, specificity = hand_sensitivity_specificity(truth, [g > 0 for g in worst_per_patient(PREDICTED)])
    assert result["argmax"]["sensitivity"]["value"] == pytest.approx(sensitivity, abs=TOL)
    assert result["argmax"]["specificity"]["value"] == pytest.approx(specificity, abs=TOL)


def test_single_class_is_undefined_with_reason_not_a_crash():
    table = example_table()
    table["grade"] = 0
    result = compute_metrics(table)
    auroc = result["vertebra"]["grader"]["auroc"]
    assert auroc["value"] is None and "single class" in auroc["reason"]
    assert result["vertebra"]["grader"]["argmax"]["sensitivity"]["value"] is None
    assert "no fractured" in result["vertebra"]["grader"]["argmax"]["sensitivity"]["reason"]
    # 4 of the 10 (all G0) are called fractured
    assert result["vertebra"]["grader"]["argmax"]["specificity"]["value"] == pytest.approx(6 / 10, abs=TOL)
    assert result["patient"]["grader"]["auroc"]["value"] is None
    assert youden_threshold(table["grade"] > 0, table["score_grader"]) is None


def test_missing_method_and_threshold_reported_with_reason():
    table = example_table()
    table["score_fused"] = np.nan
    table["threshold_grader"] = np.nan
    result = compute_metrics(table, reasons={"fused": "no fusion model"})
    assert result["vertebra"]["fused"]["auroc"] == {"value": None, "reason": "no fusion model"}
    threshold = result["vertebra"]["grader"]["validation_threshold"]["sensitivity"]
    assert threshold["value"] is None and "threshold" in threshold["reason"]
    assert all(leaf["value"] is None or math.isfinite(leaf["value"]) for leaf in flatten_metrics(result).values())


def test_empty_four_grades_and_youden_against_hand():
    assert four_grade_metrics([], [])["macro_f1"]["value"] is None
    truth = [g > 0 for g in GRADES]
    best = max(sorted(set(P_FRACTURE), reverse=True),
               key=lambda t: sum(hand_sensitivity_specificity(truth, [p >= t for p in P_FRACTURE])))
    assert youden_threshold(truth, P_FRACTURE) == pytest.approx(best, abs=TOL)


# --- bootstrap --------------------------------------------------------------------------------------------------

def _mean_value(tables):
    return {"mean": defined(tables["t"]["value"].mean())}


def test_bootstrap_resamples_patients_and_is_seeded():
    table = pd.DataFrame({"case_id": ["a", "a", "a", "b", "c", "c"], "value": [1.0, 1.0, 1.0, 0.0, 0.5, 0.5]})
    first = bootstrap_intervals({"t": table}, _mean_value, n_resamples=200, seed=7, progress=False)
    again = bootstrap_intervals({"t": table}, _mean_value, n_resamples=200, seed=7, progress=False)
    other = bootstrap_intervals({"t": table}, _mean_value, n_resamples=200, seed=8, progress=False)
    assert first == again and first != other
    # the same replicates by hand: draw 3 patients with replacement, take all their rows
    rng = np.random.default_rng(7)
    patients = {"a": [1.0, 1.0, 1.0], "b": [0.0], "c": [0.5, 0.5]}
    names = sorted(patients)
    means = []
    for _ in range(200):
        drawn = rng.integers(0, 3, size=3)
        rows = [v for i in drawn for v in patients[names[i]]]
        means.append(sum(rows) / len(rows))
    assert first["mean"]["ci95"] == pytest.approx(list(np.percentile(means, [2.5, 97.5])), abs=TOL)
    assert first["mean"]["defined_in"] == 200


def test_resample_keeps_whole_patients_under_new_ids():
    table = pd.DataFrame({"case_id": CASES, "value": range(len(CASES))})
    index = {"t": {c: np.flatnonzero(np.asarray(CASES) == c) for c in set(CASES)}}
    replicate = resample_patients({"t": table}, sorted(set(CASES)), np.random.default_rng(3), index)["t"]
    sizes = {c: CASES.count(c) for c in set(CASES)}
    groups = replicate.groupby("case_id")
    assert len(groups) == 4  # 4 draws, each a distinct patient id even when drawn twice
    for new_id, group in groups:
        original = new_id.split("#")[0]
        assert len(group) == sizes[original]
        assert sorted(group["value"]) == [v for c, v in zip(CASES, range(len(CASES))) if c == original]


def test_bootstrap_counts_undefined_replicates():
    table = example_table()
    compute = lambda tables: compute_metrics(tables["grading"])  # noqa: E731
    intervals = bootstrap_intervals({"grading": table}, compute, n_resamples=30, seed=0, progress=False)
    patient_auroc = intervals["patient.grader.auroc"]
    # replicates that drew only fractured patients (A, B, C) have no patient-level AUROC
    assert 0 < patient_auroc["defined_in"] < 30
    assert intervals["vertebra.grader.auroc"]["ci95"][0] <= 18 / 21 <= intervals["vertebra.grader.auroc"]["ci95"][1]


# --- fusion -----------------------------------------------------------------------------------------------------

def test_fused_probability_is_the_documented_logistic_model(tmp_path):
    model = {"schema_version": 1, "kind": "vfscreen_fusion", "features": list(fusion_model.FEATURES),
             "feature_mean": [-1.0, 0.8], "feature_scale": [2.0, 0.1],
             "coefficients": [1.0, -2.0], "intercept": 0.5, "thresholds": {"grader": 0.5}}
    path = fusion.save_fusion(model, tmp_path / "fusion.json")
    loaded = fusion_model.load_fusion(path)
    ratio = np.array(RATIO)
    ratio[0] = np.nan  # not measured -> the grader's p
    fused = fusion_model.fused_probability(loaded, P_FRACTURE, ratio)
    for p, r, f in zip(P_FRACTURE, ratio, fused):
        z = ((math.log(p / (1 - p)) + 1.0) / 2.0, (r - 0.8) / 0.1)
        expected = p if math.isnan(r) else 1 / (1 + math.exp(-(1.0 * z[0] - 2.0 * z[1] + 0.5)))
        assert f == pytest.approx(expected, abs=TOL)
    (tmp_path / "bad.json").write_text('{"kind": "something else"}')
    with pytest.raises(ConfigError, match="bad.json"):
        fusion_model.load_fusion(tmp_path / "bad.json")


def test_fit_fusion_learns_from_ratio_and_refuses_one_class():
    rng = np.random.default_rng(0)
    grades = rng.integers(0, 4, size=200)
    ratio = np.where(grades > 0, 0.7, 0.95) + rng.normal(0, 0.03, size=200)
    p_fracture = np.full(200, 0.5)  # an uninformative grader: the ratio must carry the fit
    model = fusion.fit_fusion(grades, p_fracture, ratio)
    assert model["coefficients"][1] < 0 and model["num_vertebrae"] == 200
    fused = fusion_model.fused_probability(model, p_fracture, ratio)
    assert roc_auc_score(grades > 0, fused) > 0.95
    assert set(model["thresholds"]) == {"grader", "morphometry", "fused"}
    with pytest.raises(ConfigError, match="0 fractured"):
        fusion.fit_fusion(np.zeros(5), np.full(5, 0.5), np.full(5, 0.9))


def test_cross_fitted_thresholds_come_from_the_other_folds():
    grades = np.array(GRADES)
    folds = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    fitted, reasons = fusion.cross_fitted(grades, np.array(P_FRACTURE), np.array(RATIO), folds)
    assert not reasons
    other = folds == 1
    expected = youden_threshold(grades[other] > 0, np.array(P_FRACTURE)[other])
    assert np.all(fitted["threshold_grader"][folds == 0] == expected)
    single, reasons = fusion.cross_fitted(grades, np.array(P_FRACTURE), np.array(RATIO), np.zeros(10, dtype=int))
    assert np.isnan(single["score_fused"]).all() and "at least 2 folds" in reasons["fused"]
