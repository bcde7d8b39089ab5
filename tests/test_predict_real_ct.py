"""End-to-end: vfscreen_predict on the real abdominal CT with a trained demo model.

Needs a trained Dataset501 model (segmentation + grader, fold 0). Until the project's tests train a tiny one in a
session fixture, point VFSCREEN_TEST_RESULTS at an nnUNet_results folder holding it (e.g. after ``vfscreen_demo``);
without it the test is skipped with that reason.
"""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk


@pytest.fixture
def trained_results(monkeypatch):
    folder = os.environ.get("VFSCREEN_TEST_RESULTS")
    if not folder or not (Path(folder) / "Dataset501_SyntheticSpine").is_dir():
        pytest.skip("no trained Dataset501 model (set VFSCREEN_TEST_RESULTS to an nnUNet_results folder with one)")
    import vfscreen.paths
    monkeypatch.setattr(vfscreen.paths, "nnUNet_results", Path(folder))
    monkeypatch.setenv("nnUNet_results", folder)
    return Path(folder)


@pytest.mark.slow
def test_predict_real_ct_keeps_geometry(example_ct, trained_results, tmp_path):
    from vfscreen.inference.outputs import validate_case_json
    from vfscreen.inference.predict import predict

    input_folder = tmp_path / "in"
    input_folder.mkdir()
    shutil.copy(example_ct, input_folder / "example_ct.nii.gz")
    table = predict(input_folder, tmp_path / "out", dataset=501, folds=[0], device="cpu", num_threads=2)
    assert table.attrs["errors"] == [] and table.attrs["finished"] == ["example_ct"]
    data = json.loads((tmp_path / "out" / "example_ct.json").read_text())
    validate_case_json(data)
    image = sitk.ReadImage(str(example_ct))
    seg = sitk.ReadImage(str(tmp_path / "out" / "example_ct_seg.nii.gz"))
    assert seg.GetSize() == image.GetSize()
    assert seg.GetSpacing() == image.GetSpacing() and seg.GetOrigin() == image.GetOrigin()
    assert seg.GetDirection() == image.GetDirection()
    labels = set(np.unique(sitk.GetArrayFromImage(seg)).tolist()) - {0}
    assert labels == {v["label"] for v in data["vertebrae"]}
    assert (tmp_path / "out" / "example_ct_report.png").is_file()
