"""The ablation benchmark (SupCon vs cross-entropy vs morphometry vs fused) on fabricated grader folds: the paired
SupCon - CE difference equals the difference computed by scikit-learn here."""
import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from vfscreen.evaluation.benchmark import main

DATASET = "Dataset589_EvalAblation"


def _write_folds(session_home, loss_folder, predicted_grade_of, grades, splits):
    model = session_home / "results" / DATASET / f"{loss_folder}__vfscreenPlans__3d"
    for fold, split in enumerate(splits):
        rows = []
        for _, row in grades[grades["case_id"].isin(split["val"])].iterrows():
            predicted = predicted_grade_of(row)
            probabilities = np.full(4, 0.1)
            probabilities[predicted] = 0.7
            rows.append({"case_id": row.case_id, "label": row.label, "grade": row.grade, "predicted_grade": predicted,
                         **{f"p_G{g}": probabilities[g] for g in range(4)},
                         "genant_ratio": 0.7 if row.grade > 0 else 0.95})
        (model / f"fold_{fold}" / "validation").mkdir(parents=True)
        pd.DataFrame(rows).to_csv(model / f"fold_{fold}" / "validation" / "predictions.csv", index=False)
    return model


def test_ablation_without_training(session_home, capsys):
    rng = np.random.default_rng(5)
    cases = [f"ab{i:02d}" for i in range(10)]
    grades = pd.DataFrame([(c, label, int(rng.integers(0, 4))) for c in cases for label in (20, 21, 22)],
                          columns=["case_id", "label", "grade"])
    (session_home / "raw" / DATASET).mkdir(parents=True)
    grades.to_csv(session_home / "raw" / DATASET / "grades.csv", index=False)
    splits = [{"train": cases[5:], "val": cases[:5]}, {"train": cases[:5], "val": cases[5:]}]
    (session_home / "preprocessed" / DATASET).mkdir(parents=True)
    (session_home / "preprocessed" / DATASET / "splits_final.json").write_text(json.dumps(splits))
    supcon = _write_folds(session_home, "vfscreen_grader", lambda row: row.grade, grades, splits)  # perfect
    _write_folds(session_home, "vfscreen_graderCE", lambda row: 0, grades, splits)  # always G0
    with pytest.raises(SystemExit) as exited:
        main(["ablation", "-d", "589", "--no-train", "--bootstrap", "20", "--markdown"])
    assert exited.value.code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "SupCon - CE, vertebra macro_f1" in printed and "Cross Entropy" in printed
    ablation = json.loads((supcon / "ablation.json").read_text())
    assert ablation["folds"] == [0, 1]
    ordered = grades.sort_values(["case_id"], kind="stable")
    expected = f1_score(ordered["grade"], ordered["grade"], average="macro") - \
        f1_score(ordered["grade"], np.zeros(len(ordered), dtype=int), average="macro")
    difference = ablation["supcon_minus_ce"]["macro_f1"]
    assert difference["value"] == pytest.approx(expected, abs=1e-9)
    assert difference["ci95"][0] > 0 and difference["verdict"].startswith("SupCon better")
    # --markdown: the same rows as a README table; the perfect SupCon grader has macro-F1 1.00
    table = [line for line in printed.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| Loss | Score | Operating point | AUCROC")
    supcon_argmax = next(line for line in table if line.startswith("| SupCon | grader | argmax"))
    assert supcon_argmax.split(" | ")[6].startswith("1.00")


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
    # both losses of a fold before the next fold: an interrupted ablation leaves complete SupCon/CE pairs
    import subprocess
    from types import SimpleNamespace

    from vfscreen.evaluation import benchmark

    trained = {("supcon", 0), ("ce", 0), ("ce", 1)}
    run = []
    monkeypatch.setattr(benchmark, "trained_folds",
                        lambda name, configuration, plans, loss: sorted(f for lo, f in trained if lo == loss))
    monkeypatch.setattr(subprocess, "run", lambda command, check: run.append(command) or SimpleNamespace(returncode=0))
    commands = benchmark.train_missing_folds(DATASET, "3d", [0, 1, 2], "vfscreenPlans", None)
    assert [(c.split()[4], c.split()[-1]) for c in commands] == [("1", "supcon"), ("2", "supcon"), ("2", "ce")]
    assert len(run) == 3
