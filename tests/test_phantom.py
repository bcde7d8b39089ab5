"""Synthetic phantom dataset: CLI errors, atomic writing, determinism, nnU-Net integrity, grade mix."""
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from vfscreen import dataset, genant, labels
from vfscreen.errors import ConfigError
from vfscreen.phantom import cli, generator
from vfscreen.phantom.acquisition import PRESETS

TINY = PRESETS["demo"].with_changes(name="tiny", whole_vertebrae=(2, 3), inplane_spacing_mm=(2.6, 3.0),
                                    slice_thickness_mm=(3.0, 3.5))


def _generate(root: Path, seed: int, num_processes: int = 1, **kwargs) -> Path:
    settings = dict(num_cases=3, num_test_cases=1, preset=TINY, num_processes=num_processes, progress=False)
    settings.update(kwargs)
    return generator.generate_dataset(root, seed=seed, **settings)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    return _generate(tmp_path_factory.mktemp("phantom"), seed=7)


@pytest.mark.parametrize("argv", [
    ["--num-cases", "0"], ["--num-cases", "-3"], ["--num-cases", "abc"], ["--num-test-cases", "-1"],
    ["--seed", "-1"], ["--seed", "1.5"], ["--preset", "huge"], ["--patient-mix", "1:2"],
    ["--patient-mix", "0:0:0:0"], ["--patient-mix", "1:a:1:1"], ["-np", "0"], ["-d", "1000"], ["--bogus"],
])
def test_bad_arguments_give_one_message_and_write_nothing(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv + ["-o", str(tmp_path)])
    assert exit_info.value.code == 2
    error_lines = capsys.readouterr().err.strip().splitlines()
    assert len(error_lines) == 1 and error_lines[0].startswith("vfscreen: error:"), error_lines
    assert list(tmp_path.iterdir()) == []


def test_existing_folder_refused_without_overwrite(tmp_path, capsys):
    existing = tmp_path / "Dataset501_SyntheticSpine"
    existing.mkdir()
    (existing / "mine.txt").write_text("keep me")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["-o", str(tmp_path), "--num-cases", "1", "--num-test-cases", "0", "-np", "1"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "--overwrite" in error[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dataset501_SyntheticSpine"]
    assert (existing / "mine.txt").read_text() == "keep me"
    # with --overwrite the old content is replaced by a complete dataset
    _generate(tmp_path, seed=1, num_cases=1, num_test_cases=0, overwrite=True)
    assert not (existing / "mine.txt").exists() and (existing / "dataset.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dataset501_SyntheticSpine"]


def test_failure_midway_leaves_nothing_half_written(tmp_path, monkeypatch):
    real_generate_case, calls = generator.generate_case, []

    def failing_generate_case(spec):
        calls.append(spec.case_id)
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return real_generate_case(spec)

    monkeypatch.setattr(generator, "generate_case", failing_generate_case)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _generate(tmp_path, seed=3)
    assert list(tmp_path.iterdir()) == []  # neither the dataset nor its temporary folder


def test_settings_validation_names_the_field():
    with pytest.raises(ConfigError, match="test cases"):
        generator.validate_settings(0, 5, -1, 1, (1, 3, 3, 3), 501)
    with pytest.raises(ConfigError, match="preset"):
        generator.generate_dataset(Path("/nonexistent"), preset="huge")


def _dataset_arrays(folder: Path) -> dict:
    arrays = {}
    for path in sorted(folder.rglob("*.nii.gz")):
        image = sitk.ReadImage(str(path))
        arrays[path.relative_to(folder).as_posix()] = (sitk.GetArrayFromImage(image), image.GetSpacing(),
                                                        image.GetOrigin(), image.GetDirection())
    return arrays


def test_deterministic_by_seed_and_independent_of_processes(tiny_dataset, tmp_path):
    again = _generate(tmp_path / "again", seed=7, num_processes=2)
    other = _generate(tmp_path / "other", seed=8)
    reference, repeated = _dataset_arrays(tiny_dataset), _dataset_arrays(again)
    assert reference.keys() == repeated.keys() and len(reference) == 8
    for name, (array, *geometry) in reference.items():
        assert np.array_equal(array, repeated[name][0]), name
        assert geometry == list(repeated[name][1:]), name
    assert (tiny_dataset / "grades.csv").read_text() == (again / "grades.csv").read_text()
    different = _dataset_arrays(other)
    assert any(not np.array_equal(reference[name][0], different[name][0]) or reference[name][1:] != different[name][1:]
               for name in reference)


def test_dataset_passes_nnunet_integrity_check_and_matches_grades(tiny_dataset):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    verify_dataset_integrity(str(tiny_dataset), 1)
    grades = dataset.read_grades(tiny_dataset / "grades.csv")
    assert dataset.list_cases(tiny_dataset, "Tr") == ["synspine_0000", "synspine_0001", "synspine_0002"]
    assert dataset.list_cases(tiny_dataset, "Ts") == ["synspine_0003"]
    for split in ("Tr", "Ts"):
        for case_id in dataset.list_cases(tiny_dataset, split):
            ct = sitk.ReadImage(str(dataset.image_path(tiny_dataset, case_id, split)))
            label = sitk.ReadImage(str(dataset.label_path(tiny_dataset, case_id, split)))
            assert ct.GetPixelID() == sitk.sitkInt16 and label.GetPixelID() == sitk.sitkUInt8
            present = set(labels.class_to_verse(np.unique(sitk.GetArrayFromImage(label)))) - {0}
            rows = grades[grades["case_id"] == case_id]
            assert set(rows["label"]) == present and len(present) >= 3
            assert (rows["split"] == split).all()
            ct_array = sitk.GetArrayFromImage(ct)
            assert ct_array.min() < -900 and ct_array.max() > 600  # air behind the back, cortical bone
    for row in grades.itertuples():  # ground truth = Genant of the reported heights, morphology consistent
        assert row.grade == genant.grade_from_heights(row.anterior_mm, row.middle_mm, row.posterior_mm)
        assert row.morphology == genant.morphology_from_heights(row.anterior_mm, row.middle_mm, row.posterior_mm)


def test_default_mix_has_every_grade_and_morphology():
    specs = generator.case_specs(0, 48, 12, PRESETS["demo"])
    assert len({spec.case_id for spec in specs}) == 60
    worst, vertebra_grades, morphologies = [], [], set()
    for spec in specs:
        anatomy = generator.case_anatomy(spec)
        whole = [anatomy.vertebrae[i] for i in anatomy.whole]
        worst.append(max(v.grade for v in whole))
        vertebra_grades += [v.grade for v in whole]
        morphologies |= {v.morphology for v in whole}
    assert set(vertebra_grades) == {0, 1, 2, 3}
    assert morphologies == {"normal", "wedge", "biconcave", "crush"}
    assert np.mean(np.asarray(vertebra_grades) == 0) > 0.7  # most vertebrae normal
    counts = np.bincount(worst, minlength=4)
    assert counts[0] >= 3 and all(counts[1:] >= 10), counts  # ~1:3:3:3 by patient worst grade


def test_patient_mix_allocation_is_exact():
    rng = np.random.default_rng(0)
    targets = generator.allocate_worst_grades(10, (1, 3, 3, 3), rng)
    assert np.bincount(targets, minlength=4).tolist() == [1, 3, 3, 3]
    assert np.bincount(generator.allocate_worst_grades(7, (0, 0, 1, 1), rng), minlength=4).tolist() == [0, 0, 4, 3]


def test_console_entry_point_writes_dataset(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["-o", str(tmp_path), "--num-cases", "1", "--num-test-cases", "0", "-np", "1", "-d", "777",
                  "--seed", "5", "--patient-mix", "0:0:0:1"])
    assert exit_info.value.code == 0
    folder = tmp_path / "Dataset777_SyntheticSpine"
    grades = pd.read_csv(folder / "grades.csv")
    assert grades["grade"].max() >= 2  # a G3 patient (bands may shift a vertebra to G2 by endplate irregularity)
    assert os.path.isfile(folder / "dataset.json") and "wrote" in capsys.readouterr().out


def test_sagittal_preview_is_written(tiny_dataset, tmp_path, capsys):
    from vfscreen.phantom import preview

    output = tmp_path / "figures" / "example.png"
    with pytest.raises(SystemExit) as exit_info:
        preview.main([str(tiny_dataset), "synspine_0001", str(output)])
    assert exit_info.value.code == 0 and output.stat().st_size > 10_000
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit) as exit_info:
        preview.main([str(tiny_dataset), "no_such_case", str(tmp_path / "x.png")])
    assert exit_info.value.code == 2 and "no_such_case" in capsys.readouterr().err
