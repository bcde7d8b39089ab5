"""The raw dataset format: grades.csv validation, dataset.json with the vfscreen label mapping, name resolution."""
import json

import pytest

from vfscreen import dataset, labels
from vfscreen.errors import ConfigError, InputError


def _write(path, text):
    path.write_text(text)
    return path


def test_read_grades_valid(tmp_path):
    table = dataset.read_grades(_write(tmp_path / "g.csv", "case_id,label,grade,anterior_mm\n001,20,1,19.5\n001,28,0,25\n"))
    assert table["case_id"].tolist() == ["001", "001"]  # ids stay strings
    assert table["label"].tolist() == [20, 28] and table["grade"].tolist() == [1, 0]


@pytest.mark.parametrize("content,message", [
    ("case_id,label\nA,20\n", "missing column"),
    ("case_id,label,grade\nA,20,7\n", "grade 7 is outside 0-3"),
    ("case_id,label,grade\nA,26,1\n", "label 26 is not a VerSe vertebra"),
    ("case_id,label,grade\nA,20,x\n", "grade 'x' is not a number"),
    ("case_id,label,grade\nA,20,1.5\n", "not an integer"),
    ("case_id,label,grade\nA,20,1\nA,20,2\n", "graded twice"),
])
def test_read_grades_rejects(tmp_path, content, message):
    with pytest.raises(InputError, match=message):
        dataset.read_grades(_write(tmp_path / "g.csv", content))


def test_read_grades_missing_file(tmp_path):
    with pytest.raises(InputError, match="grades file missing"):
        dataset.read_grades(tmp_path / "nope.csv")


def test_dataset_json_carries_the_mapping(tmp_path):
    dataset.write_dataset_json(tmp_path, "Dataset999_Test", 3, "unit test")
    content = json.loads((tmp_path / "dataset.json").read_text())
    assert content["labels"] == labels.nnunet_labels_dict()
    assert content["vfscreen"]["verse_ids"]["20"] == 28  # class 20 is T13
    assert content["file_ending"] == ".nii.gz" and content["numTraining"] == 3
    # nnU-Net's placeholders ("Whoever converted this dataset was lazy ...") never reach a vfscreen dataset.json
    assert content["licence"] == dataset.UNKNOWN_LICENCE and content["converted_by"] == "vfscreen"
    dataset.write_dataset_json(tmp_path, "Dataset999_Test", 3, "unit test", licence="CC BY-SA 4.0", reference="x")
    content = json.loads((tmp_path / "dataset.json").read_text())
    assert content["licence"] == "CC BY-SA 4.0" and content["reference"] == "x"


def test_resolve_dataset_name(session_home):
    (session_home / "raw" / "Dataset611_ResolveOnly").mkdir(parents=True, exist_ok=True)
    assert dataset.resolve_dataset_name("611") == "Dataset611_ResolveOnly"
    assert dataset.resolve_dataset_name("Dataset611_ResolveOnly") == "Dataset611_ResolveOnly"
    with pytest.raises(ConfigError, match="not found"):
        dataset.resolve_dataset_name(612)
    with pytest.raises(ConfigError, match="not a dataset id"):
        dataset.resolve_dataset_name("../../etc")
