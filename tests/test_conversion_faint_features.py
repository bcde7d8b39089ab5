"""Faint-Features converter on tiny fake copies of original_dataset(.zip) and processed_dataset."""
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).parent))
from fake_layouts import (build_faint_features_original, build_faint_features_patches, make_case,  # noqa: E402
                          world_centroids, zip_folder)

from vfscreen import labels  # noqa: E402
from vfscreen.conversion.faint_features import convert_original, convert_patches, main  # noqa: E402
from vfscreen.dataset import image_path, label_path, list_cases, read_grades  # noqa: E402
from vfscreen.errors import ConfigError  # noqa: E402
from vfscreen.preprocessing.grader_crops import INDEX_COLUMNS, read_crops_index  # noqa: E402


def check_original_conversion(folder: Path, source: Path, grades: dict):
    assert list_cases(folder, "Tr") == sorted(grades)
    table = read_grades(folder / "grades.csv")
    assert {(r.case_id, r.label): r.grade for r in table.itertuples()} == {
        (case, label): grade for case, case_grades in grades.items() for label, grade in case_grades.items()}
    for case_id in grades:
        ct_in = sitk.ReadImage(str(source / "img" / f"{case_id}.nii.gz"))
        mask_in = sitk.ReadImage(str(source / "seg" / f"{case_id}.nii.gz"))
        ct_out = sitk.ReadImage(str(image_path(folder, case_id)))
        label_out = sitk.ReadImage(str(label_path(folder, case_id)))
        for image in (ct_out, label_out):
            assert (image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()) == (
                ct_in.GetSize(), ct_in.GetSpacing(), ct_in.GetOrigin(), ct_in.GetDirection())
        assert ct_out.GetPixelID() == ct_in.GetPixelID() == sitk.sitkInt16
        np.testing.assert_array_equal(sitk.GetArrayFromImage(ct_out), sitk.GetArrayFromImage(ct_in))
        np.testing.assert_array_equal(labels.class_to_verse(sitk.GetArrayFromImage(label_out)),
                                      sitk.GetArrayFromImage(mask_in))
        centroids = json.loads((folder / "centroids" / f"{case_id}.json").read_text())
        assert centroids["source"] == "mask_center_of_mass"
        expected = world_centroids(mask_in)
        assert [c["label"] for c in centroids["centroids"]] == sorted(expected, key=labels.spine_position)
        for entry in centroids["centroids"]:
            np.testing.assert_allclose(entry["centroid_mm"], expected[entry["label"]], atol=1e-6)


def test_original_unzipped_and_zipped(tmp_path):
    source = tmp_path / "original_dataset"
    grades = build_faint_features_original(source)
    folder, written, problems = convert_original(source, raw_root=tmp_path / "raw_a", verify=False)
    assert problems.messages == [] and folder.name == "Dataset503_FaintFeatures"
    check_original_conversion(folder, source, grades)
    pir = sitk.ReadImage(str(image_path(folder, "patient_0002")))
    assert sitk.DICOMOrientImageFilter_GetOrientationFromDirectionCosines(pir.GetDirection()) == "PIR"

    archive = zip_folder(source, tmp_path / "original_dataset.zip")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    folder, written, problems = convert_original(archive, raw_root=tmp_path / "raw_b", drop_cervical=True)
    assert problems.messages == []
    check_original_conversion(folder, source, grades)
    assert hashlib.sha256(archive.read_bytes()).hexdigest() == digest


def test_original_bad_inputs(tmp_path, capsys):
    source = tmp_path / "original_dataset"
    build_faint_features_original(source)
    ct, _ = make_case((20, 21), seed=11)
    sitk.WriteImage(ct, str(source / "img" / "no_mask.nii.gz"))
    _, wrong_mask = make_case((20, 21), spacing=(1.0, 2.0, 1.0), seed=12)
    sitk.WriteImage(ct, str(source / "img" / "mismatch.nii.gz"))
    sitk.WriteImage(wrong_mask, str(source / "seg" / "mismatch.nii.gz"))
    sitk.WriteImage(ct, str(source / "img" / "patient_0002.nii"))  # duplicate CT name
    with open(source / "annotation.yaml", "a") as handle:
        handle.write("ghost.nii.gz:\n  '20': '1'\n1.2.840.113619.2.55.1.nii.gz:\n  '20': '0'\n")
    text = (source / "annotation.yaml").read_text().replace("'18': '0'", "'18': '7'").replace("'21': '0'",
                                                                                          "'24': '1'")
    (source / "annotation.yaml").write_text(text)
    folder, written, problems = convert_original(source, raw_root=tmp_path / "raw", verify=False)
    messages = "\n".join(problems.messages)
    assert "no_mask" in messages and "no vertebra mask" in messages
    assert "mismatch" in messages and "geometry differs" in messages
    assert "patient_0002" in messages and "duplicate CT" in messages
    assert "ghost" in messages and "no such CT" in messages
    assert "appears twice" in messages and "grade '7'" in messages
    assert "L5 (24) but the mask has no such vertebra" in messages
    assert len(problems.messages) == 7
    assert list_cases(folder, "Tr") == ["1.2.840.113619.2.55.1"]
    table = read_grades(folder / "grades.csv")
    assert sorted(zip(table.label, table.grade)) == [(19, 1), (20, 3)]


def test_patches_become_crops_and_their_split_the_folds(tmp_path):
    source = tmp_path / "processed_dataset"
    patches = build_faint_features_patches(source)
    archive = zip_folder(source, tmp_path / "processed_dataset.zip", prefix="dataset/")
    folder, table, folds, problems = convert_patches(archive, patch_size=16, preprocessed_root=tmp_path / "pre")
    assert problems.messages == [] and folder.name == "Dataset504_FaintFeaturesPatches"
    crops = read_crops_index(folder / "vfscreen_crops_3d")
    assert set(INDEX_COLUMNS) <= set(crops.columns)
    expected = {(image, label): (grade, 0 if kind == "test" else None) for image, label, grade, kind in patches.values()}
    assert {(r.case_id, r.label): (r.grade, None if pd.isna(r.fold) else r.fold) for r in crops.itertuples()} == expected
    assert json.loads((folder / "vfscreen_crops_3d" / "crop_plan.json").read_text())["crop"]["patch_size"] == [16] * 3
    for row in crops.itertuples():
        data = np.load(folder / "vfscreen_crops_3d" / row.file)
        assert data.dtype == np.float16 and data.ndim == 4 and data.shape[0] == 3
        assert max(data.shape[1:]) == 16 and row.file == f"{row.case_id}_{row.label:02d}.npy"
        assert 0 <= data[:2].min() and data[:2].max() <= 1
        assert set(np.unique(data[2]).tolist()) <= {0.0, float(np.float16(row.label / labels.MAX_VERSE_ID))}
        assert data[2].max() == np.float16(row.label / labels.MAX_VERSE_ID)
    splits = json.loads((folder / "splits_final.json").read_text())
    assert splits == [{"train": ["1.2.840.113619.2.55.1", "patient_0002"], "val": ["patient_0003"]}]


def test_patch_bad_inputs_and_cli(tmp_path, session_home, capsys):
    source = tmp_path / "processed_dataset"
    build_faint_features_patches(source)
    (source / "seg" / "patient_0002_21_3.nii.gz").unlink()
    with open(source / "test_file_list.WA0aVG88.yaml", "a") as handle:
        handle.write("- patient_0002_20_1.nii.gz\n- patient_0003_27_0.nii.gz\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["-i", str(source), "--patch-size", "12", "-d", "594"])
    assert exit_info.value.code == 0
    out = capsys.readouterr()
    assert "missing" in out.err and "both the train and the test list" in out.err and "patient_0003_27_0" in out.err
    folder = Path(session_home) / "preprocessed" / "Dataset594_FaintFeaturesPatches"
    splits = json.loads((folder / "splits_final.json").read_text())
    assert splits == [{"train": ["1.2.840.113619.2.55.1"], "val": ["patient_0002", "patient_0003"]}]
    assert "crops: 5 from 3 images" in out.out

    with pytest.raises(SystemExit) as exit_info:
        main(["-i", str(tmp_path), "-d", "594"])
    assert exit_info.value.code == 2


def test_existing_output_needs_overwrite(tmp_path):
    source = tmp_path / "original_dataset"
    build_faint_features_original(source)
    convert_original(source, raw_root=tmp_path / "raw", verify=False)
    with pytest.raises(ConfigError, match="--overwrite"):
        convert_original(source, raw_root=tmp_path / "raw", verify=False)
    folder, written, problems = convert_original(source, raw_root=tmp_path / "raw", overwrite=True, verify=False)
    assert len(written) == 2
