"""Never a silent death: a case whose worker process is killed, or that would exceed the memory budget, fails alone
in errors.csv (exit code 1), with the reason; the other cases finish."""
import functools
import os
import signal

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from test_predict_outputs import FakeGrader, fake_segmenter, make_ct
from vfscreen.inference.predict import Models

KILL_MARKER_SPACING = 1.25  # the case whose x spacing is this is killed in its worker


def killing_segmenter(image):
    """fake_segmenter, except that the worker process dies by SIGKILL (as by the out-of-memory killer) on the
    marked case."""
    if abs(image.GetSpacing()[0] - KILL_MARKER_SPACING) < 1e-6:
        os.kill(os.getpid(), signal.SIGKILL)
    return fake_segmenter(image)


def killing_models():
    return Models(segmenter=killing_segmenter, grader=FakeGrader(), info={"dataset": "fake", "grader": {"folds": [0]}})


@pytest.fixture
def cases(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a", "killed", "z"):
        make_ct(folder / f"{name}.nii.gz")
    image = sitk.ReadImage(str(folder / "killed.nii.gz"))
    image.SetSpacing((KILL_MARKER_SPACING,) + image.GetSpacing()[1:])
    sitk.WriteImage(image, str(folder / "killed.nii.gz"))
    return folder


def test_killed_worker_is_a_failed_case_and_exit_code_1(cases, tmp_path, monkeypatch, capsys):
    import vfscreen.inference.cli as cli_module
    from vfscreen.inference.cli import main

    monkeypatch.setattr(cli_module, "predict",
                        functools.partial(cli_module.predict, models=killing_models(), isolate_cases=True))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["-i", str(cases), "-o", str(out)])
    assert exit_info.value.code == 1
    errors = pd.read_csv(out / "errors.csv")
    assert errors["case_id"].tolist() == ["killed"]
    assert "killed by SIGKILL" in errors["error"][0]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("killed")) == []  # nothing half-written
    assert (out / "a.json").is_file() and (out / "z.json").is_file()  # the worker was replaced for the next case
    assert "1 failed" in capsys.readouterr().out


def test_case_over_the_memory_budget_fails_before_reading(tmp_path):
    """A 1024 x 1024 x 800 scan's header alone is enough to refuse it under a 6 GB budget: the file below has no
    voxel data at all, so reading it would fail with another message."""
    import nibabel

    from vfscreen.inference.predict import predict

    folder = tmp_path / "in"
    folder.mkdir()
    header = nibabel.Nifti1Header()
    header.set_data_shape((1024, 1024, 800))
    header.set_data_dtype(np.int16)
    header.set_zooms((0.8, 0.8, 1.0))
    with open(folder / "huge.nii", "wb") as handle:
        handle.write(header.binaryblock + b"\0" * 4)
    make_ct(folder / "small.nii.gz")
    table = predict(folder, tmp_path / "out", models=Models(segmenter=fake_segmenter, grader=FakeGrader()),
                    memory_budget_gb=6.0)
    assert table.attrs["finished"] == ["small"]
    errors = pd.read_csv(tmp_path / "out" / "errors.csv")
    assert errors["case_id"].tolist() == ["huge"]
    assert "1024 x 1024 x 800 voxels" in errors["error"][0] and "memory budget of 6.0 GB" in errors["error"][0]


def test_spine_region_over_the_budget_fails_with_the_reason(tmp_path):
    from vfscreen.inference import resources
    from vfscreen.inference.pipeline import predict_case

    image = make_ct(tmp_path / "ct.nii.gz")
    models = Models(segmenter=fake_segmenter, grader=FakeGrader())

    def refusing(image, check_region=None):  # a segmenter that asks before bringing its region back
        check_region(10**9, 27)
        return fake_segmenter(image)

    with pytest.raises(resources.MemoryBudgetError, match="spine region"):
        predict_case(image, "ct", Models(segmenter=refusing, grader=models.grader), memory_budget=2**30)


def test_budget_defaults_to_the_smaller_memory_minus_headroom(monkeypatch):
    from vfscreen.inference import resources

    monkeypatch.setattr(resources, "physical_memory_bytes", lambda: 24 * resources.GB)
    assert resources.memory_budget_bytes(8) == int(8 * resources.GB * (1 - resources.HEADROOM_FRACTION))
    assert resources.memory_budget_bytes(None) == int(24 * resources.GB * (1 - resources.HEADROOM_FRACTION))
    assert resources.memory_budget_bytes(8, override_gb=3) == 3 * resources.GB
