"""The ablation benchmark (SupCon vs CE with SGD vs CE with Adam, head and probe readouts) and the curves on
fabricated grader folds: the paired differences equal those computed by scikit-learn here."""
import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from vfscreen.evaluation.benchmark import main

DATASET = "Dataset589_EvalAblation"


def _write_folds(session_home, model_folder, predicted_grade_of, grades, splits):
    model = session_home / "results" / DATASET / model_folder
    for fold, split in enumerate(splits):
        rows = []
        for _, row in grades[grades["case_id"].isin(split["val"])].iterrows():
            predicted = predicted_grade_of(row)
            probabilities = np.full(4, 0.1)
            probabilities[predicted] = 0.7
            rows.append({"case_id": row.case_id, "label": row.label, "grade": row.grade, "predicted_grade": predicted,
                         **{f"p_G{g}": probabilities[g] for g in range(4)}, "p_fracture": 1 - probabilities[0]})
        (model / f"fold_{fold}" / "validation").mkdir(parents=True)
        for readout in ("head", "probe"):
            pd.DataFrame(rows).to_csv(model / f"fold_{fold}" / "validation" / f"predictions_{readout}.csv",
                                      index=False)
    return model


def test_ablation_without_training(session_home, capsys):
    rng = np.random.default_rng(5)
    cases = [f"ab{i:02d}" for i in range(10)]
    grades = pd.DataFrame([(c, label, int(rng.integers(0, 4))) for c in cases for label in (20, 21, 22)],
                          columns=["case_id", "label", "grade"])
    splits = [{"train": cases[5:], "val": cases[:5]}, {"train": cases[:5], "val": cases[5:]}]
    supcon = _write_folds(session_home, "vfscreen_grader__vfscreenPlans_ablation__3d", lambda row: row.grade,
                          grades, splits)  # perfect
    _write_folds(session_home, "vfscreen_graderCE__vfscreenPlans_ablation__3d", lambda row: 0, grades, splits)
    _write_folds(session_home, "vfscreen_graderCE__vfscreenPlans_ablationadam__3d",
                 lambda row: row.grade if row.label == 20 else 0, grades, splits)
    with pytest.raises(SystemExit) as exited:
        main(["ablation", "-d", "589", "--no-train", "--bootstrap", "20", "--markdown"])
    assert exited.value.code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "SupCon, SGD - CE, SGD" in printed and "CE, Adam" in printed
    ablation = json.loads((supcon / "ablation.json").read_text())
    assert ablation["folds"] == [0, 1]
    ordered = grades.sort_values(["case_id"], kind="stable")
    perfect = f1_score(ordered["grade"], ordered["grade"], average="macro")
    expected_sgd = perfect - f1_score(ordered["grade"], np.zeros(len(ordered), dtype=int), average="macro")
    adam = np.where(ordered["label"] == 20, ordered["grade"], 0)
    expected_adam = perfect - f1_score(ordered["grade"], adam, average="macro")
    differences = ablation["metrics"]["differences"]
    for readout in ("head", "probe"):
        assert differences[f"supcon_sgd-ce_sgd/{readout}"]["macro_f1"]["value"] == pytest.approx(expected_sgd)
        assert differences[f"supcon_sgd-ce_adam/{readout}"]["macro_f1"]["value"] == pytest.approx(expected_adam)
    low, high = differences["supcon_sgd-ce_sgd/head"]["macro_f1"]["ci95"]
    assert 0 < low <= expected_sgd <= high
    # --markdown: the same rows as a README table; the perfect SupCon grader has macro-F1 1.00
    table = [line for line in printed.splitlines() if line.startswith("| ")]
    assert table[0] == "| Grader | Readout | AUROC | Sensitivity | Specificity | Macro-F1 |"
    supcon_head = next(line for line in table if line.startswith("| SupCon, SGD | head"))
    assert supcon_head.split(" | ")[5].startswith("1.00")


def test_curves_table_and_plot_from_trained_curves(session_home, capsys, tmp_path):
    for loss, folder in (("supcon", "vfscreen_grader"), ("ce", "vfscreen_graderCE")):
        validation = session_home / "results" / DATASET / f"{folder}__vfscreenPlans_curves__3d" / "fold_0" / \
            "validation"
        validation.mkdir(parents=True)
        rows = [{"step": step, "train_supcon_normalised": 0.9 if loss == "supcon" else None, "head_macro_f1": 0.25,
                 "probe_macro_f1": 0.3 + step / 1000} for step in (100, 200)]
        (validation / "curves.json").write_text(json.dumps({"rows": rows}))
    with pytest.raises(SystemExit) as exited:
        main(["curves", "-d", "589", "--no-train", "--steps", "100", "200", "-o", str(tmp_path)])
    assert exited.value.code == 0, capsys.readouterr().err
    lines = capsys.readouterr().out.splitlines()
    supcon_200 = next(line.split() for line in lines if line.startswith("supcon  200"))
    assert supcon_200[2] == "0.900" and supcon_200[-3] == "0.500"  # train SupCon, probe macro-F1
    assert (tmp_path / "curves.png").stat().st_size > 0 and (tmp_path / "curves.json").is_file()


def test_speed_reports_every_stage(tmp_path):
    from test_predict_outputs import fake_models, make_ct
    from vfscreen.evaluation.speed import format_speed, run_speed

    (tmp_path / "in").mkdir()
    make_ct(tmp_path / "in" / "caseA_0000.nii.gz")
    speed = run_speed(tmp_path / "in", models=fake_models(), progress=False)
    assert speed["num_cases"] == 1 and speed["per_case"][0]["num_crops"] == 3
    assert {"read", "segmentation", "label_consistency", "morphometry", "grading", "report"} <= \
        set(speed["mean_seconds_per_stage"])
    assert speed["mean_seconds_per_case"] == pytest.approx(sum(speed["per_case"][0]["seconds"].values()))
    assert speed["crops_per_second"] > 0 and speed["memory"]["peak_rss_gb"] > 0
    assert "s per case" in format_speed(speed)


def test_missing_folds_are_trained_fold_by_fold(monkeypatch):
    # every grader of a fold before the next fold: an interrupted ablation leaves complete sets
    import subprocess
    from types import SimpleNamespace

    from vfscreen.evaluation import ablation

    trained = {("supcon_sgd", 0), ("ce_sgd", 0), ("ce_adam", 0), ("ce_sgd", 1)}
    run = []
    monkeypatch.setattr(ablation, "trained_folds",
                        lambda name, configuration, plans, variant: sorted(f for v, f in trained if v == variant))
    monkeypatch.setattr(subprocess, "run", lambda command, check: run.append(command) or SimpleNamespace(returncode=0))
    commands = ablation.train_missing_folds(DATASET, "3d", [0, 1], "vfscreenPlans", None)
    assert [(c.split()[4], c.split()[8], c.split()[10]) for c in commands] == [
        ("1", "supcon", "ablation"), ("1", "ce", "ablationadam")]
    assert '"adam"' in commands[1]
