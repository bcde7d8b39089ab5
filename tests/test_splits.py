"""Splits: patient-level, stratified by worst grade, deterministic, nnU-Net's format."""
import json
from collections import Counter

import pytest

from vfscreen.errors import InputError
from vfscreen.experiment_planning.splits import make_patient_splits, write_splits


def _dataset(num_patients=40, cases_per_patient=2):
    case_patients, worst = {}, {}
    for patient in range(num_patients):
        for visit in range(cases_per_patient):
            case_patients[f"p{patient:02d}_v{visit}"] = f"p{patient:02d}"
        worst[f"p{patient:02d}"] = [0, 1, 2, 3][patient % 4] if patient % 10 else 3
    return case_patients, worst


def test_patient_level_and_complete():
    case_patients, worst = _dataset()
    splits = make_patient_splits(case_patients, worst, 5, seed=1)
    assert len(splits) == 5
    all_val = [case for split in splits for case in split["val"]]
    assert sorted(all_val) == sorted(case_patients)  # every case validated exactly once
    for split in splits:
        assert not set(split["train"]) & set(split["val"])
        assert sorted(split["train"] + split["val"]) == sorted(case_patients)
        train_patients = {case_patients[c] for c in split["train"]}
        val_patients = {case_patients[c] for c in split["val"]}
        assert not train_patients & val_patients  # a patient's cases never cross folds


def test_stratified_by_worst_grade():
    case_patients, worst = _dataset(num_patients=40, cases_per_patient=1)
    overall = Counter(worst.values())
    for split in make_patient_splits(case_patients, worst, 5, seed=3):
        in_val = Counter(worst[case_patients[c]] for c in split["val"])
        for grade, count in overall.items():
            assert abs(in_val[grade] - count / 5) <= 1


def test_deterministic_by_seed():
    case_patients, worst = _dataset()
    assert make_patient_splits(case_patients, worst, 5, 7) == make_patient_splits(case_patients, worst, 5, 7)
    assert make_patient_splits(case_patients, worst, 5, 7) != make_patient_splits(case_patients, worst, 5, 8)


def test_rare_grades_are_merged_not_fatal():
    case_patients = {f"c{i}": f"c{i}" for i in range(12)}
    worst = {f"c{i}": 0 for i in range(8)} | {"c8": 3, "c9": 2, "c10": 1, "c11": 1}
    splits = make_patient_splits(case_patients, worst, 5, 0)
    assert sorted(c for s in splits for c in s["val"]) == sorted(case_patients)


def test_too_few_patients_and_nnunet_format(tmp_path):
    with pytest.raises(InputError, match="3 patient"):
        make_patient_splits({"a": "a", "b": "b", "c": "c"}, {}, 5, 0)
    case_patients, worst = _dataset(10, 1)
    path = write_splits(make_patient_splits(case_patients, worst, 2, 0), tmp_path)
    loaded = json.loads(path.read_text())
    assert path.name == "splits_final.json" and set(loaded[0]) == {"train", "val"}
