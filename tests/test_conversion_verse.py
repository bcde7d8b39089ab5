"""VerSe converter on tiny fake VerSe 2019 / 2020 folders in the published layouts."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).parent))
from fake_layouts import build_verse19, build_verse20, make_case, write_csv, write_verse_scan  # noqa: E402

from vfscreen import labels  # noqa: E402
from vfscreen.conversion.verse import centroids_to_world, convert_verse, main  # noqa: E402
from vfscreen.dataset import image_path, label_path, list_cases, read_grades  # noqa: E402
from vfscreen.errors import ConfigError, InputError  # noqa: E402


def assert_same_geometry_exactly(a: sitk.Image, b: sitk.Image):
    assert a.GetSize() == b.GetSize()
    assert a.GetSpacing() == b.GetSpacing()
    assert a.GetOrigin() == b.GetOrigin()
    assert a.GetDirection() == b.GetDirection()


def assert_case_round_trips(dataset: Path, case_id: str, split: str, ct_file: Path, mask_file: Path,
                            expected_centroids: dict):
    ct_in, mask_in = sitk.ReadImage(str(ct_file)), sitk.ReadImage(str(mask_file))
    ct_out = sitk.ReadImage(str(image_path(dataset, case_id, split)))
    label_out = sitk.ReadImage(str(label_path(dataset, case_id, split)))
    assert_same_geometry_exactly(ct_in, ct_out)
    assert_same_geometry_exactly(ct_in, label_out)
    ct_out_array = sitk.GetArrayFromImage(ct_out)
    assert np.issubdtype(ct_out_array.dtype, np.integer)
    np.testing.assert_array_equal(ct_out_array, np.rint(sitk.GetArrayFromImage(ct_in)))
    expected_verse = sitk.GetArrayFromImage(mask_in).astype(np.int64)
    label_array = sitk.GetArrayFromImage(label_out)
    np.testing.assert_array_equal(labels.landmark_mask(label_array, "sacrum"), expected_verse == 26)  # kept
    expected_verse[np.isin(expected_verse, [26, 27])] = 0
    np.testing.assert_array_equal(labels.class_to_verse(label_array), expected_verse)
    centroids = json.loads((dataset / "centroids" / f"{case_id}.json").read_text())
    assert centroids["coordinate_system"] == "LPS" and centroids["source"] == "verse_ctd_json"
    got = {entry["label"]: entry["centroid_mm"] for entry in centroids["centroids"]}
    expected = {v: p for v, p in expected_centroids.items() if labels.is_vertebra(v)}
    assert set(got) == set(expected)
    for verse_id, point in expected.items():
        np.testing.assert_allclose(got[verse_id], point, atol=1e-6)


def test_verse19_without_split_folders(tmp_path):
    root = tmp_path / "verse19"
    expected = build_verse19(root)
    sheet = write_csv(tmp_path / "grades.csv", "subject,label,grade,fracture_type",
                      ["sub-verse004,T11,0,", "sub-verse004,20,2,wedge", "verse004,L2,1,biconcave",
                       "verse253,L1,3,crush", "verse253,L3,", "sub-verse401_split-verse253,L4,0,"])
    folder, written, problems = convert_verse([root], sheet, raw_root=tmp_path / "raw")
    assert folder.name == "Dataset502_VerSe" and problems.messages == []
    assert list_cases(folder, "Tr") == ["verse004", "verse401_split-verse253"]
    grades = read_grades(folder / "grades.csv")
    got = {(r.case_id, r.label): (r.grade, r.morphology if isinstance(r.morphology, str) else None)
           for r in grades.itertuples()}
    assert got == {("verse004", 18): (0, None), ("verse004", 20): (2, "wedge"), ("verse004", 21): (1, "biconcave"),
                   ("verse401_split-verse253", 20): (3, "crush"), ("verse401_split-verse253", 23): (0, None)}
    for case_id, stem in (("verse004", "sub-verse004"), ("verse401_split-verse253", "sub-verse401_split-verse253")):
        subject = stem.split("_")[0]
        assert_case_round_trips(folder, case_id, "Tr", root / "rawdata" / subject / f"{stem}_ct.nii.gz",
                                root / "derivatives" / subject / f"{stem}_seg-vert_msk.nii.gz", expected[case_id])
    dataset_json = json.loads((folder / "dataset.json").read_text())
    assert dataset_json["numTraining"] == 2
    assert dataset_json["vfscreen"]["patients"] == {"verse004": "verse004", "verse401_split-verse253": "verse401"}


def test_verse20_split_folders_pir_anisotropic_t13_l6_sacrum(tmp_path, capsys):
    root = tmp_path / "verse20"
    expected = build_verse20(root)
    sheet = write_csv(tmp_path / "grades.csv", "subject,label,grade",
                      ["sub-gl003_dir-ax,T13,1", "gl003_dir-ax,L6,2", "gl003,T12,0", "verse820,T9,3",
                       "verse506_dir-iso,T1,0", "verse506,T2,0", "verse506,T3,0"])
    folder, written, problems = convert_verse([root], sheet, raw_root=tmp_path / "raw", drop_cervical=True,
                                              exclude_implants="verse506:T2")
    assert problems.messages == []
    assert list_cases(folder, "Tr") == ["gl003_dir-ax", "verse506_dir-iso"]
    assert list_cases(folder, "Ts") == ["verse820"]
    grades = read_grades(folder / "grades.csv")
    assert sorted(zip(grades.case_id, grades.label, grades.grade)) == [
        ("gl003_dir-ax", 19, 0), ("gl003_dir-ax", 25, 2), ("gl003_dir-ax", 28, 1), ("verse506_dir-iso", 8, 0),
        ("verse506_dir-iso", 10, 0), ("verse820", 16, 3)]
    pir_label = sitk.ReadImage(str(label_path(folder, "gl003_dir-ax")))
    assert sitk.DICOMOrientImageFilter_GetOrientationFromDirectionCosines(pir_label.GetDirection()) == "PIR"
    assert pir_label.GetSpacing() == pytest.approx((0.7, 3.0, 1.3))
    assert set(np.unique(labels.class_to_verse(sitk.GetArrayFromImage(pir_label)))) == {0, 19, 20, 21, 25, 28}
    for case_id, split_folder, stem, split in (("gl003_dir-ax", "01_training", "sub-gl003_dir-ax", "Tr"),
                                               ("verse506_dir-iso", "01_training", "sub-verse506_dir-iso", "Tr"),
                                               ("verse820", "03_test", "sub-verse820", "Ts")):
        subject = stem.split("_")[0]
        assert_case_round_trips(folder, case_id, split, root / split_folder / "rawdata" / subject / f"{stem}_ct.nii.gz",
                                root / split_folder / "derivatives" / subject / f"{stem}_seg-vert_msk.nii.gz",
                                expected[case_id])
    summary = __import__("vfscreen.conversion.common", fromlist=["summary_text"]).summary_text(folder, written,
                                                                                               problems)
    assert "G0 3, G1 1, G2 1, G3 1" in summary and "kept as landmark: sacrum (26) in 1 case(s)" in summary
    assert "1 implant (--exclude_implants)" in summary


def test_centroids_of_a_flipped_axis_use_n_minus_1(tmp_path):
    """A centroid at reoriented voxel c on a flipped axis of n voxels is at original voxel n - 1 - c."""
    ct, _ = make_case(size=(10, 12, 14), orientation="LPS")
    ctd = tmp_path / "ctd.json"
    ctd.write_text(json.dumps([{"direction": ["R", "A", "S"]}, {"label": 20, "X": 2.0, "Y": 3.0, "Z": 4.0},
                               {"label": 26, "X": 1, "Y": 1, "Z": 1}, {"label": 21, "X": "nan", "Y": 0, "Z": 0}]))
    world = centroids_to_world(ctd, ct)
    assert set(world) == {20}
    np.testing.assert_allclose(world[20], ct.TransformContinuousIndexToPhysicalPoint((7.0, 8.0, 4.0)))


def test_bad_inputs_are_reported_one_by_one_and_the_rest_converted(tmp_path, capsys):
    root = tmp_path / "verse"
    ct, mask = make_case((19, 20), seed=1)
    write_verse_scan(root / "training", "sub-verse001", ct, mask)
    write_verse_scan(root / "training", "sub-verse002", *make_case((20, 21), seed=2)[:1], None)  # no mask
    ct3, mask3 = make_case((20, 21), seed=3)
    write_verse_scan(root / "validation", "sub-verse003", ct3, mask3)
    ct4, _ = make_case((20, 21), seed=4)
    _, mask4 = make_case((20, 21), spacing=(1.0, 1.0, 2.0), seed=4)
    write_verse_scan(root / "training", "sub-verse004", ct4, mask4)  # geometry mismatch
    write_verse_scan(root / "test", "sub-verse001", ct, mask)  # duplicate subject
    sheet = write_csv(tmp_path / "grades.csv", "subject,label,grade",
                      ["verse001,T12,0", "verse001,L1,5", "verse001,L3,1", "verse999,L1,0", "verse003,L1,1",
                       "verse003,L1,2", "verse003,X9,1"])
    folder, written, problems = convert_verse([root], sheet, raw_root=tmp_path / "raw", verify=False)
    text = "\n".join(problems.messages)
    assert "grade '5'" in text and "verse999" in text and "does not exist" in text
    assert "verse002" in text and "no vertebra mask" in text
    assert "verse004" in text and "geometry differs" in text
    assert "duplicate" in text and "graded twice" in text and "'X9' is not a vertebra" in text
    assert "L3 (22) but the mask has no such vertebra" in text
    assert len(problems.messages) == 8
    assert list_cases(folder, "Tr") == ["verse001", "verse003"] and list_cases(folder, "Ts") == []
    grades = read_grades(folder / "grades.csv")
    assert sorted(zip(grades.case_id, grades.label, grades.grade)) == [("verse001", 19, 0), ("verse003", 20, 1)]


def test_cli_exit_codes_and_nothing_half_written(tmp_path, session_home, capsys):
    root = tmp_path / "verse"
    write_verse_scan(root, "sub-verse001", make_case(seed=1)[0], None)
    sheet = write_csv(tmp_path / "grades.csv", "subject,label,grade", [])
    with pytest.raises(SystemExit) as exit_info:
        main(["-i", str(root), "--grades", str(sheet), "-d", "592"])
    assert exit_info.value.code == 3
    assert "no usable training case" in capsys.readouterr().err
    raw = Path(session_home) / "raw"
    assert not list(raw.glob("Dataset592_*")) and not list(raw.glob(".Dataset592_*"))

    write_verse_scan(root, "sub-verse002", *make_case(seed=2))
    with pytest.raises(SystemExit) as exit_info:
        main(["-i", str(root), "--grades", str(sheet), "-d", "592"])
    assert exit_info.value.code == 0
    out = capsys.readouterr()
    assert "cases: 1 (1 training, 0 test)" in out.out and "sub-verse001" in out.err
    with pytest.raises(SystemExit) as exit_info:
        main(["-i", str(root), "--grades", str(sheet), "-d", "592"])
    assert exit_info.value.code == 2 and "--overwrite" in capsys.readouterr().err


def test_missing_layout_is_a_config_error(tmp_path):
    (tmp_path / "empty").mkdir()
    sheet = write_csv(tmp_path / "grades.csv", "subject,label,grade", [])
    with pytest.raises(ConfigError, match="no 'rawdata' folder"):
        convert_verse([tmp_path / "empty"], sheet, raw_root=tmp_path / "raw")
    root = tmp_path / "verse"
    write_verse_scan(root, "sub-verse001", *make_case(seed=1))
    with pytest.raises(InputError, match="no 'grade' column"):
        convert_verse([root], write_csv(tmp_path / "bad.csv", "subject,label", ["verse001,L1"]),
                      raw_root=tmp_path / "raw")


@pytest.mark.slow
def test_planner_runs_on_a_converted_verse_dataset(tmp_path, session_home, monkeypatch):
    """vfscreen_plan_and_preprocess on a converted (fake) VerSe dataset: plans, nnU-Net preprocessing, crops."""
    from vfscreen.experiment_planning.cli import run

    monkeypatch.setenv("nnUNet_n_proc_DA", "1")  # conftest's 0 makes nnU-Net's planner call set_num_threads(0)
    from vfscreen.preprocessing.grader_crops import read_crops_index

    root, rows = tmp_path / "verse", []
    for number in range(6):
        ct, mask = make_case((19, 20, 21), orientation=("RAS", "LPS", "PIR")[number % 3], seed=number)
        write_verse_scan(root / ("03_test" if number == 5 else "01_training"), f"sub-verse{number:03d}", ct, mask)
        rows += [f"verse{number:03d},T12,0", f"verse{number:03d},L1,{number % 4}"]
    sheet = write_csv(tmp_path / "grades.csv", "subject,label,grade", rows)
    folder, written, problems = convert_verse([root], sheet, dataset_id=595, verify=False)
    assert folder.parent == Path(session_home) / "raw" and len(written) == 6
    assert run(["-d", "595", "--device", "cpu", "-np", "1"]) == 0
    crops = read_crops_index(Path(session_home) / "preprocessed" / folder.name / "vfscreen_crops_3d")
    assert sorted(zip(crops.case_id, crops.label, crops.grade.astype(object).where(crops.grade.notna(), None))) == [
        (f"verse{n:03d}", label, grade) for n in range(5) for label, grade in ((19, 0), (20, n % 4), (21, None))]

    # Faint-Features patches cropped with these plans, which are copied so the grader can train on the patches
    from fake_layouts import build_faint_features_patches

    from vfscreen.conversion.faint_features import convert_patches
    from vfscreen.core.plans import load_plans

    build_faint_features_patches(tmp_path / "processed")
    patch_folder, table, folds, problems = convert_patches(tmp_path / "processed", dataset_id=596, plans_from="595")
    plans = load_plans(patch_folder.name)
    crop_plan = plans["configurations"]["3d"]["grader"]["crop"]
    assert crop_plan == load_plans(folder.name)["configurations"]["3d"]["grader"]["crop"]
    shapes = [np.load(patch_folder / "vfscreen_crops_3d" / name).shape for name in table.file]
    assert all(s[0] == 3 and all(d <= p for d, p in zip(s[1:], reversed(crop_plan["patch_size"]))) for s in shapes)
    from vfscreen.training.grader.data import fold_case_ids, read_crops_table

    grader_table = read_crops_table(patch_folder / "vfscreen_crops_3d", hint="")
    assert fold_case_ids(grader_table, patch_folder / "splits_final.json", 0, plans["num_folds"]) == (
        ["1.2.840.113619.2.55.1", "patient_0002"], ["patient_0003"])


def test_thin_cli_scripts_run(tmp_path):
    import subprocess

    root = Path(__file__).resolve().parents[1]
    for script in ("Dataset502_VerSe.py", "Dataset503_FaintFeatures.py"):
        result = subprocess.run([sys.executable, str(root / "dataset_conversion" / script), "--help"],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and "--overwrite" in result.stdout


def test_wide_grade_sheet_and_a_test_split_given_as_root(tmp_path):
    root = tmp_path / "dataset-verse19test"
    write_verse_scan(root, "sub-verse010", *make_case((19, 20, 21), seed=1))
    write_verse_scan(tmp_path / "verse19", "sub-verse011", *make_case((19, 20), seed=2))
    sheet = write_csv(tmp_path / "wide.csv", "subject,T12,L1,L2,comment", ["verse010,0,,3,ok", "verse011,1,2,,"])
    folder, written, problems = convert_verse([tmp_path / "verse19", root], sheet, raw_root=tmp_path / "raw",
                                              verify=False)
    assert list_cases(folder, "Tr") == ["verse011"] and list_cases(folder, "Ts") == ["verse010"]
    grades = read_grades(folder / "grades.csv")
    assert sorted(zip(grades.case_id, grades.label, grades.grade)) == [
        ("verse010", 19, 0), ("verse010", 21, 3), ("verse011", 19, 1), ("verse011", 20, 2)]
    assert problems.messages == []


def test_real_ct_in_the_verse_layout(tmp_path, example_ct):
    """The real example CT (RAS, int32) with a bone mask split into three 'vertebrae': geometry, pixel type and
    centroids survive the conversion."""
    import shutil

    from fake_layouts import verse_centroid_json, world_centroids

    ct = sitk.ReadImage(str(example_ct))
    array = sitk.GetArrayFromImage(ct)
    mask_array = np.zeros(array.shape, np.uint8)
    bone = array > 250
    for number, (start, stop) in enumerate(((30, 50), (50, 70), (70, 90))):
        mask_array[start:stop][bone[start:stop]] = 20 + number
    mask = sitk.GetImageFromArray(mask_array)
    mask.CopyInformation(ct)
    raw_folder, derivatives = tmp_path / "verse" / "rawdata" / "sub-ts001", tmp_path / "verse" / "derivatives" / "sub-ts001"
    raw_folder.mkdir(parents=True)
    derivatives.mkdir(parents=True)
    shutil.copy(example_ct, raw_folder / "sub-ts001_ct.nii.gz")
    sitk.WriteImage(mask, str(derivatives / "sub-ts001_seg-vert_msk.nii.gz"))
    written_mask = sitk.ReadImage(str(derivatives / "sub-ts001_seg-vert_msk.nii.gz"))
    (derivatives / "sub-ts001_seg-subreg_ctd.json").write_text(json.dumps(verse_centroid_json(written_mask, "PIR")))
    sheet = write_csv(tmp_path / "grades.csv", "subject,label,grade", ["ts001,L1,0", "ts001,L2,1", "ts001,L3,2"])
    folder, written, problems = convert_verse([tmp_path / "verse"], sheet, raw_root=tmp_path / "raw", verify=False)
    assert problems.messages == []
    ct_out = sitk.ReadImage(str(image_path(folder, "ts001")))
    assert ct_out.GetPixelID() == ct.GetPixelID() == sitk.sitkInt32
    assert_case_round_trips(folder, "ts001", "Tr", raw_folder / "sub-ts001_ct.nii.gz",
                            derivatives / "sub-ts001_seg-vert_msk.nii.gz", world_centroids(written_mask))


def test_implant_list_from_a_file(tmp_path):
    from vfscreen.conversion.common import ProblemLog
    from vfscreen.conversion.verse import find_scans, read_exclusions

    write_verse_scan(tmp_path / "verse", "sub-verse001", *make_case(seed=1))
    write_verse_scan(tmp_path / "verse", "sub-verse002", *make_case(seed=2))
    implants = tmp_path / "implants.csv"
    implants.write_text("subject,label\nsub-verse001,L1\nverse001,T12  # screws\nverse002\nverse003,L1\n")
    problems = ProblemLog()
    scans = find_scans([tmp_path / "verse"], problems)
    assert read_exclusions(str(implants), scans, problems) == {"verse001": {19, 20}, "verse002": None}
    assert len(problems.messages) == 1 and "verse003" in problems.messages[0]
    with pytest.raises(ConfigError, match="does not exist"):
        read_exclusions(str(tmp_path / "missing.csv"), scans, problems)
