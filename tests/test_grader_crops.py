"""Grader-crop preprocessing (vfscreen.preprocessing.grader_crops) on a tiny raw dataset written here."""
import json
import os

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

import vfscreen.paths
from vfscreen.errors import ConfigError, InputError
from vfscreen.labels import MAX_VERSE_ID, verse_to_class
from vfscreen.preprocessing import grader_crops
from vfscreen.preprocessing.grader_crops import preprocess_grader_crops, read_crops_index

pytestmark = pytest.mark.filterwarnings("ignore:1 vertebra\\(e\\) have no grade")  # case_2's L2 (asserted once)

DATASET = "Dataset987_CropTest"
T12, L1, L2 = 19, 20, 21
# case -> {VerSe label: (z0, z1)} slabs of a box vertebra; case_2 has L2 cut by the top of the image.
CASES = {"case_0": {T12: (4, 10), L1: (13, 19)}, "case_1": {L1: (5, 11), L2: (14, 20)},
         "case_2": {T12: (3, 9), L2: (14, 24)}}
GRADES = [("case_0", T12, 0), ("case_0", L1, 2), ("case_1", L1, 0), ("case_1", L2, 3), ("case_2", T12, 1)]


def plans(margin_mm=3.0, dataset_name=DATASET):
    return {"dataset_name": dataset_name, "configurations": {"3d": {"grader": {"crop": {
        "mode": "spacing", "spacing_mm": 2.0, "patch_size": [16, 16, 16], "margin_mm": margin_mm,
        "windows": [{"name": "bone", "width": 1500, "level": 400},
                    {"name": "soft_tissue", "width": 200, "level": 40}],
        "mask_channel": "label_modulated", "use_truncated": True, "storage_dtype": "float16"}}}}}


@pytest.fixture
def dataset(tmp_path, monkeypatch):
    """A raw dataset (3 training cases, one test case) and its splits, in a private nnU-Net folder tree."""
    raw, preprocessed = tmp_path / "raw", tmp_path / "preprocessed"
    monkeypatch.setenv("nnUNet_raw", str(raw))
    monkeypatch.setenv("nnUNet_preprocessed", str(preprocessed))
    folder = raw / DATASET
    for split, cases in (("Tr", CASES), ("Ts", {"case_9": {L1: (5, 11)}})):
        (folder / f"images{split}").mkdir(parents=True)
        (folder / f"labels{split}").mkdir(parents=True)
        for number, (case_id, vertebrae) in enumerate(cases.items()):
            write_case(folder, split, case_id, vertebrae, orientation="PIR" if number == 1 else "LPS")
    pd.DataFrame(GRADES + [("case_9", L1, 1)], columns=["case_id", "label", "grade"]).to_csv(
        folder / "grades.csv", index=False)
    (preprocessed / DATASET).mkdir(parents=True)
    splits = [{"train": ["case_1", "case_2"], "val": ["case_0"]}, {"train": ["case_0"], "val": ["case_1", "case_2"]}]
    (preprocessed / DATASET / "splits_final.json").write_text(json.dumps(splits))
    return folder


def write_case(folder, split, case_id, vertebrae, orientation="LPS"):
    hounsfield = np.full((24, 20, 18), 40, dtype=np.int16)  # (z, y, x), soft tissue
    verse = np.zeros(hounsfield.shape, dtype=np.uint8)
    for label, (z0, z1) in vertebrae.items():
        hounsfield[z0:z1, 5:14, 4:13] = 700
        verse[z0:z1, 5:14, 4:13] = label
    images = []
    for array in (hounsfield, verse_to_class(verse)):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((1.5, 1.2, 2.0))
        image.SetOrigin((10.0, -20.0, 30.0))
        images.append(sitk.DICOMOrient(image, orientation))
    sitk.WriteImage(images[0], str(folder / f"images{split}" / f"{case_id}_0000.nii.gz"))
    sitk.WriteImage(images[1], str(folder / f"labels{split}" / f"{case_id}.nii.gz"))


class CountingCropper:
    """Wraps the crop function used by the preprocessing to count which cases were (re)computed."""

    def __init__(self, monkeypatch, fail_on=None):
        self.calls, self.fail_on, self.original = [], fail_on, grader_crops.extract_vertebra_crops
        monkeypatch.setattr(grader_crops, "extract_vertebra_crops", self)

    def __call__(self, ct, verse_labels, crop_plan, labels=None):
        self.calls.append(ct.GetSize())
        if self.fail_on is not None and len(self.calls) == self.fail_on:
            raise RuntimeError("simulated crash")
        return self.original(ct, verse_labels, crop_plan, labels)


def test_crops_index_and_files(dataset):
    with pytest.warns(UserWarning, match="1 vertebra"):  # case_2's L2 has no grade
        folder = preprocess_grader_crops(DATASET, plans(), num_processes=1)
    assert folder.name == "vfscreen_crops_3d"
    table = read_crops_index(folder)
    assert list(table.columns[:10]) == ["case_id", "label", "name", "grade", "fold", "truncated", "bbox",
                                        "crop_spacing_mm", "shape", "file"]
    assert sorted(zip(table.case_id, table.label)) == sorted((c, v) for c, vs in CASES.items() for v in vs)
    assert "case_9" not in set(table.case_id)  # test cases are not cropped for training
    row = table.set_index(["case_id", "label"])
    assert row.loc[("case_0", L1), "grade"] == 2 and row.loc[("case_1", L2), "name"] == "L2"
    assert pd.isna(row.loc[("case_2", L2), "grade"])
    assert row.loc[("case_0", T12), "fold"] == 0 and row.loc[("case_2", T12), "fold"] == 1
    assert row.loc[("case_2", L2), "truncated"] and not row.loc[("case_2", T12), "truncated"]
    assert (table.crop_spacing_mm == 2.0).all()
    for record in table.itertuples():
        crop = np.load(folder / record.file)
        assert crop.dtype == np.float16 and crop.shape == (3, *json.loads(record.shape))
        assert max(crop.shape[1:]) <= 16
        np.testing.assert_allclose(np.unique(crop[2]), [0, record.label / MAX_VERSE_ID], atol=1e-3)
    # case_1 is stored in PIR, case_0 in LPS: the same vertebra geometry gives the same L1 crop.
    l1_lps = np.load(folder / row.loc[("case_0", L1), "file"]).astype(np.float32)
    l1_pir = np.load(folder / row.loc[("case_1", L1), "file"]).astype(np.float32)
    np.testing.assert_allclose(l1_pir, l1_lps, atol=2e-3)
    assert not list(folder.glob(".*tmp*"))


def test_incremental_reuses_up_to_date_crops(dataset, monkeypatch):
    folder = preprocess_grader_crops(DATASET, plans(), num_processes=1)
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.npy")}
    counter = CountingCropper(monkeypatch)
    preprocess_grader_crops(DATASET, plans(), num_processes=1)
    assert counter.calls == []
    assert mtimes == {p.name: p.stat().st_mtime_ns for p in folder.glob("*.npy")}
    # New grades are joined without recomputing crops.
    grades = pd.read_csv(dataset / "grades.csv")
    grades.loc[(grades.case_id == "case_0") & (grades.label == L1), "grade"] = 3
    grades.to_csv(dataset / "grades.csv", index=False)
    table = read_crops_index(preprocess_grader_crops(DATASET, plans(), num_processes=1))
    assert counter.calls == [] and table.set_index(["case_id", "label"]).loc[("case_0", L1), "grade"] == 3
    # A newer input is recomputed, alone.
    label_file = dataset / "labelsTr" / "case_1.nii.gz"
    os.utime(label_file, ns=(label_file.stat().st_atime_ns, label_file.stat().st_mtime_ns + 10**9))
    preprocess_grader_crops(DATASET, plans(), num_processes=1)
    assert len(counter.calls) == 1
    # Another crop plan recomputes everything; overwrite too.
    preprocess_grader_crops(DATASET, plans(margin_mm=5.0), num_processes=1)
    assert len(counter.calls) == 4
    preprocess_grader_crops(DATASET, plans(margin_mm=5.0), num_processes=1, overwrite=True)
    assert len(counter.calls) == 7


def test_a_crash_mid_way_leaves_no_index_and_the_next_run_resumes(dataset, monkeypatch):
    folder = preprocess_grader_crops(DATASET, plans(), num_processes=1)
    old_index = read_crops_index(folder)
    counter = CountingCropper(monkeypatch, fail_on=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        preprocess_grader_crops(DATASET, plans(margin_mm=6.0), num_processes=1)
    assert not (folder / "crops.csv").exists()  # no index claims crops of the half-finished new plan
    assert not list(folder.glob(".*tmp*"))
    counter.fail_on = None
    table = read_crops_index(preprocess_grader_crops(DATASET, plans(margin_mm=6.0), num_processes=1))
    assert len(counter.calls) == 2 + 2  # the case finished before the crash is not recomputed
    assert table.plan_hash.nunique() == 1 and table.plan_hash.iloc[0] != old_index.plan_hash.iloc[0]


def test_parallel_run_matches_inline_run(dataset):
    inline = read_crops_index(preprocess_grader_crops(DATASET, plans(), num_processes=1))
    inline_arrays = {f: np.load(crops_path(f)) for f in inline.file}
    parallel = read_crops_index(preprocess_grader_crops(DATASET, plans(), num_processes=2, overwrite=True))
    pd.testing.assert_frame_equal(inline, parallel)
    for file_name, array in inline_arrays.items():
        np.testing.assert_array_equal(np.load(crops_path(file_name)), array)


def crops_path(file_name):
    return vfscreen.paths.nnUNet_preprocessed / DATASET / "vfscreen_crops_3d" / file_name


def test_stale_crops_of_removed_cases_are_deleted(dataset):
    folder = preprocess_grader_crops(DATASET, plans(), num_processes=1)
    for path in (dataset / "imagesTr" / "case_2_0000.nii.gz", dataset / "labelsTr" / "case_2.nii.gz"):
        path.unlink()
    with pytest.warns(UserWarning, match=r"grades for case\(s\) \['case_2'\] that are neither"):
        table = read_crops_index(preprocess_grader_crops(DATASET, plans(), num_processes=1))
    assert "case_2" not in set(table.case_id)
    assert not list(folder.glob("case_2*"))


def test_bad_inputs(dataset):
    grades = pd.read_csv(dataset / "grades.csv")
    pd.concat([grades, pd.DataFrame([("case_1", T12, 1)], columns=grades.columns)]).to_csv(
        dataset / "grades.csv", index=False)
    with pytest.raises(InputError, match=r"case_1 grades label\(s\) \[19\] \(T12\)"):
        preprocess_grader_crops(DATASET, plans(), num_processes=1)
    folder = grader_crops.crops_folder(DATASET)
    assert not (folder / "crops.csv").exists() and not list(folder.glob("case_1_*.npy"))
    grades.to_csv(dataset / "grades.csv", index=False)

    write_case(dataset, "Tr", "case_0", {})  # empty mask
    with pytest.raises(InputError, match="case_0 is empty"):
        preprocess_grader_crops(DATASET, plans(), num_processes=1)
    write_case(dataset, "Tr", "case_0", CASES["case_0"])

    label_file = dataset / "labelsTr" / "case_1.nii.gz"
    moved = sitk.ReadImage(str(label_file))
    moved.SetOrigin([o + 3 for o in moved.GetOrigin()])
    sitk.WriteImage(moved, str(label_file))
    with pytest.raises(InputError, match="case_1.nii.gz: geometry differs"):
        preprocess_grader_crops(DATASET, plans(), num_processes=1)
    write_case(dataset, "Tr", "case_1", CASES["case_1"], orientation="PIR")

    (dataset / "labelsTr" / "case_2.nii.gz").unlink()
    with pytest.raises(InputError, match="case_2.nii.gz: label mask of case case_2 missing"):
        preprocess_grader_crops(DATASET, plans(), num_processes=1)
    write_case(dataset, "Tr", "case_2", CASES["case_2"])

    with pytest.raises(ConfigError, match="made for Dataset001_Other"):
        preprocess_grader_crops(DATASET, plans(dataset_name="Dataset001_Other"))
    with pytest.raises(ConfigError, match="configurations.2d.grader.crop"):
        preprocess_grader_crops(DATASET, plans(), configuration="2d")
    (vfscreen.paths.nnUNet_preprocessed / DATASET / "splits_final.json").unlink()
    with pytest.raises(ConfigError, match="splits_final.json: splits missing"):
        preprocess_grader_crops(DATASET, plans())
