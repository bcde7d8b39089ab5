"""Foundation: label mapping, Genant grading, atomic writes, image validation, error model, default paths."""
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import SimpleITK as sitk

from vfscreen import genant, labels
from vfscreen.errors import ConfigError, InputError, cli_entry
from vfscreen.utils import atomic, image_io


def test_label_mapping_is_consecutive_and_cranio_caudal():
    classes = [labels.VERSE_TO_CLASS[v] for v in labels.SPINE_ORDER]
    assert classes == list(range(1, labels.NUM_VERTEBRA_CLASSES + 1))
    assert sorted(labels.LANDMARK_CLASSES.values()) == list(range(labels.NUM_VERTEBRA_CLASSES + 1, labels.NUM_CLASSES))
    assert labels.name_of(labels.CLASS_TO_VERSE[20]) == "T13"
    assert labels.CLASS_TO_VERSE[19] == 19 and labels.CLASS_TO_VERSE[21] == 20  # T12, L1
    assert labels.spine_position(28) == labels.spine_position(19) + 1
    nnunet = labels.nnunet_labels_dict()
    assert nnunet["background"] == 0 and nnunet["L6"] == 26 and nnunet["rib"] == 27 and nnunet["sacrum"] == 28
    assert len(nnunet) == labels.NUM_CLASSES


def test_label_arrays_round_trip_and_reject_unknown():
    verse = np.array([[0, 1, 7], [8, 19, 28], [20, 25, 0]], dtype=np.int16)
    classes = labels.verse_to_class(verse)
    assert classes.tolist() == [[0, 1, 7], [8, 19, 20], [21, 26, 0]]
    assert np.array_equal(labels.class_to_verse(classes), verse)
    with pytest.raises(ValueError, match="26"):
        labels.verse_to_class(np.array([26]))  # the sacrum is no vertebra ...
    # ... but a landmark: kept where asked, and vertebra-only readers see background
    landmarks = labels.verse_to_class(np.array([26, labels.RIB_SOURCE_ID, 20]), landmarks=True)
    assert landmarks.tolist() == [labels.SACRUM_CLASS, labels.RIB_CLASS, 21]
    assert labels.class_to_verse(landmarks).tolist() == [0, 0, 20]
    with pytest.raises(ValueError, match="41"):
        labels.verse_to_class(np.array([41]), landmarks=True)
    with pytest.raises(ValueError):
        labels.class_to_verse(np.array([labels.NUM_CLASSES]))


@pytest.mark.parametrize("text,expected", [("L1", 20), ("l1", 20), (" T13 ", 28), ("20", 20), (7, 7), ("C1", 1)])
def test_parse_vertebra(text, expected):
    assert labels.parse_vertebra(text) == expected


@pytest.mark.parametrize("bad", ["S1", "26", "L7", "", "T0", 99])
def test_parse_vertebra_rejects(bad):
    with pytest.raises(ValueError):
        labels.parse_vertebra(bad)


@pytest.mark.parametrize("heights,grade", [
    ((25, 25, 25), 0), ((20.1, 25, 25), 0), ((20, 25, 25), 1), ((18.8, 25, 25), 1),
    ((18.75, 25, 25), 2), ((15.1, 25, 25), 2), ((25, 15, 25), 3), ((25, 25, 10), 3),
])
def test_genant_thresholds(heights, grade):
    # reduction 0.196 -> G0, exactly 0.20 -> G1, 0.248 -> G1, exactly 0.25 -> G2, 0.396 -> G2, 0.40 -> G3
    assert genant.grade_from_heights(*heights) == grade


def test_genant_rejects_bad_heights():
    for bad in [(0, 0, 0), (-1, 20, 20), (float("nan"), 20, 20)]:
        with pytest.raises(ValueError):
            genant.genant_ratio(*bad)
    assert genant.morphology_from_heights(15, 24, 25) == "wedge"
    assert genant.morphology_from_heights(24, 15, 25) == "biconcave"
    assert genant.morphology_from_heights(25, 25, 25) == "normal"


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    atomic.atomic_write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert json.loads(target.read_text()) == {"a": 1}  # old content intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_atomic_directory(tmp_path):
    final = tmp_path / "dataset"
    with pytest.raises(RuntimeError):
        with atomic.atomic_directory(final) as tmp:
            (tmp / "half.txt").write_text("x")
            raise RuntimeError("crash")
    assert not final.exists() and list(tmp_path.iterdir()) == []
    with atomic.atomic_directory(final) as tmp:
        (tmp / "done.txt").write_text("x")
    assert (final / "done.txt").exists()
    with pytest.raises(FileExistsError):
        with atomic.atomic_directory(final):
            pass
    with atomic.atomic_directory(final, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("y")
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset"]


def _image(shape=(8, 9, 10), spacing=(1.0, 1.0, 2.0), value=0.0):
    image = sitk.GetImageFromArray(np.full(shape[::-1], value, dtype=np.float32))
    image.SetSpacing(spacing)
    return image


def test_read_image_validation(tmp_path):
    good = tmp_path / "good.nii.gz"
    sitk.WriteImage(_image(), str(good))
    assert image_io.read_image(good).GetSize() == (8, 9, 10)

    text = tmp_path / "text.nii.gz"
    text.write_text("not an image")
    with pytest.raises(InputError, match="cannot read"):
        image_io.read_image(text)
    with pytest.raises(InputError, match="does not exist"):
        image_io.read_image(tmp_path / "missing.nii.gz")

    flat = tmp_path / "flat.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((9, 8), np.float32)), str(flat))
    with pytest.raises(InputError, match="2D"):
        image_io.read_image(flat)

    four_d = tmp_path / "4d.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5, 6), np.float32), isVector=False), str(four_d))
    with pytest.raises(InputError, match="3 volumes"):
        image_io.read_image(four_d)
    one_volume = tmp_path / "4d1.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((1, 4, 5, 6), np.float32), isVector=False), str(one_volume))
    assert image_io.read_image(one_volume).GetSize() == (6, 5, 4)

    coarse = tmp_path / "coarse.nii.gz"
    sitk.WriteImage(_image(spacing=(1, 1, 600)), str(coarse))
    with pytest.raises(InputError, match="spacing"):
        image_io.read_image(coarse)


def test_intensity_checks():
    with pytest.raises(InputError, match="NaN"):
        image_io.check_ct_intensities(np.array([0.0, np.nan]))
    with pytest.raises(InputError, match="same value"):
        image_io.check_ct_intensities(np.zeros(100))
    with pytest.warns(UserWarning, match="MR"):
        image_io.check_ct_intensities(np.linspace(0, 1000, 1000))
    ct_like = np.concatenate([np.full(500, -1000.0), np.linspace(-100, 1200, 500)])
    image_io.check_ct_intensities(ct_like)  # no warning, no error
    # a spine in a large field of view: bone in 0.2 % of the voxels is still CT, a scan without any bone is not
    whole_body = np.concatenate([np.full(5000, -1000.0), np.full(4980, 40.0), np.full(20, 700.0)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image_io.check_ct_intensities(whole_body)
    with pytest.warns(UserWarning, match="MR"):
        image_io.check_ct_intensities(np.concatenate([np.full(5000, -1000.0), np.full(5000, 40.0)]))


def test_geometry_and_case_ids():
    a, b = _image(), _image()
    image_io.check_same_geometry(a, b)
    b.SetOrigin((0, 0, 1))
    with pytest.raises(InputError, match="geometry"):
        image_io.check_same_geometry(a, b)
    for bad in ["../evil", "a/b", "x\n", "", ".hidden", "a..b"]:
        with pytest.raises(InputError):
            image_io.check_case_id(bad)
    assert image_io.check_case_id("sub-verse004_dir-ax") == "sub-verse004_dir-ax"
    lps = _image()
    assert image_io.orientation_code(lps) == "LPS"


def test_cli_entry_exit_codes(capsys):
    @cli_entry
    def failing():
        raise ConfigError("plans file missing field 'x'")

    with pytest.raises(SystemExit) as exit_info:
        failing()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "vfscreen: error: plans file missing field 'x'"


def test_default_data_folders_under_vfscreen_home(tmp_path):
    """Importing vfscreen.paths changes nothing and prints nothing; the folders follow the environment at each access;
    a module that uses nnunetv2 exports vfscreen's defaults before nnunetv2 reads them (once, at its import)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_") and k != "VFSCREEN_QUIET"}
    env["VFSCREEN_HOME"] = str(tmp_path / "home")
    code = ("import os, vfscreen.paths as p; print('nnUNet_raw' in os.environ); print(p.nnUNet_raw); "
            "os.environ['VFSCREEN_HOME'] = os.environ['VFSCREEN_HOME'] + '2'; print(p.nnUNet_raw); "
            "os.environ['VFSCREEN_HOME'] = os.environ['VFSCREEN_HOME'][:-1]; "
            "import vfscreen.dataset, nnunetv2.paths as n; print(n.nnUNet_results)")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    exported_at_import, raw, raw_after_change, results = result.stdout.split()
    assert exported_at_import == "False"
    assert raw == str(tmp_path / "home" / "raw") and raw_after_change == str(tmp_path / "home2" / "raw")
    assert results == str(tmp_path / "home" / "results")
    assert "vfscreen" not in result.stderr
