"""The kill -9 rows of issue 8's table: a real process is killed (SIGKILL, no clean-up code runs) in the middle of
writing, then the run is continued; the result must equal an uninterrupted run's, and nothing half-written may be
taken for finished."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import SimpleITK as sitk

from robustness.conftest import (PREDICT_DATASET, assert_same_weights, final_weights, make_ct, run_cli,
                                 write_preprocessed_grader_dataset)
from vfscreen import paths
from vfscreen.errors import EXIT_OK
from vfscreen.inference.cli import main as predict_main
from vfscreen.inference.outputs import case_is_complete
from vfscreen.training.cli import main as train_main

CASES = ("case_a", "case_b", "case_c")


def run_killed(script: str) -> subprocess.CompletedProcess:
    """Run ``script`` in a fresh interpreter (same nnU-Net folders, one thread) and expect it to die of SIGKILL."""
    environment = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=environment, capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == -signal.SIGKILL, result.stdout + result.stderr
    return result


def test_kill_9_during_prediction_then_continue(trained_models, tmp_path, capsys, monkeypatch):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for number, case_id in enumerate(CASES):
        make_ct(inputs / f"{case_id}.nii.gz", num_vertebrae=2 + number)
    interrupted, uninterrupted = tmp_path / "interrupted", tmp_path / "uninterrupted"
    argv = ["-d", PREDICT_DATASET, "-np", "1"]

    # killed while writing case_b: its segmentation is on disk, its report half-written, its JSON (last) missing.
    # The cases run in this process (isolate_cases=False), so the process killed is the one writing: the whole run
    # dies, as a kill -9 of vfscreen_predict does (a killed case worker is tests/test_case_isolation.py's subject).
    run_killed(f"""
        import os, signal, sys
        import vfscreen.inference.report as report

        original = report.render_report
        def render_report(path, image, verse_map, case_json, morphometry):
            if case_json["case_id"] == "case_b":
                open(path, "wb").write(b"half a png")
                os.kill(os.getpid(), signal.SIGKILL)
            return original(path, image, verse_map, case_json, morphometry)
        report.render_report = render_report
        from vfscreen.inference.predict import predict
        predict({str(inputs)!r}, {str(interrupted)!r}, dataset={PREDICT_DATASET!r}, num_threads=1,
                isolate_cases=False)
    """)
    assert case_is_complete(interrupted, "case_a")
    assert (interrupted / "case_b_seg.nii.gz").is_file() and not case_is_complete(interrupted, "case_b")
    assert not (interrupted / "case_b_report.png").exists() and not (interrupted / "case_b.json").exists()
    assert not (interrupted / "case_c_seg.nii.gz").exists()
    case_a_json = (interrupted / "case_a.json").read_bytes()

    code, out, err = run_cli(predict_main, ["-i", inputs, "-o", interrupted, "--continue"] + argv, capsys, monkeypatch)
    assert code == EXIT_OK, out + err
    assert "2 case(s) predicted, 1 skipped" in out
    assert (interrupted / "case_a.json").read_bytes() == case_a_json  # the finished case was not redone
    code, out, err = run_cli(predict_main, ["-i", inputs, "-o", uninterrupted] + argv, capsys, monkeypatch)
    assert code == EXIT_OK, out + err

    for case_id in CASES:
        assert json.loads((interrupted / f"{case_id}.json").read_text()) == \
            json.loads((uninterrupted / f"{case_id}.json").read_text()), case_id
        first, second = (sitk.ReadImage(str(folder / f"{case_id}_seg.nii.gz")) for folder in (interrupted,
                                                                                                uninterrupted))
        assert np.array_equal(sitk.GetArrayFromImage(first), sitk.GetArrayFromImage(second))
        assert (first.GetOrigin(), first.GetSpacing(), first.GetDirection()) == \
            (second.GetOrigin(), second.GetSpacing(), second.GetDirection())
    pd.testing.assert_frame_equal(pd.read_csv(interrupted / "summary.csv"), pd.read_csv(uninterrupted / "summary.csv"))
    visible = sorted(p.name for p in interrupted.iterdir() if not p.name.startswith("."))
    assert visible == sorted(p.name for p in uninterrupted.iterdir())
    assert not list(interrupted.glob("*.tmp*")) and not list(interrupted.glob(".*.tmp*")), \
        "a temporary file of the killed run was left behind"


def test_kill_9_during_grader_training_then_continue(tmp_path, capsys, monkeypatch):
    killed, reference = "Dataset944_RobustKill", "Dataset945_RobustReference"
    for dataset_name in (killed, reference):
        write_preprocessed_grader_dataset(dataset_name, num_epochs=3)

    # killed while checkpoint_latest.pth of epoch 2 is half-written (epoch 1's is on disk)
    run_killed(f"""
        import os, signal, sys
        import torch

        real_save = torch.save
        def save(checkpoint, path, *args, **kwargs):
            if ".checkpoint_latest.pth." in str(path) and checkpoint["metadata"]["epoch"] == 2:
                real_save(checkpoint, path, *args, **kwargs)
                with open(path, "r+b") as handle:
                    handle.truncate(os.path.getsize(path) // 2)
                os.kill(os.getpid(), signal.SIGKILL)
            return real_save(checkpoint, path, *args, **kwargs)
        torch.save = save
        from vfscreen.training.cli import main
        sys.argv = ["vfscreen_train"]
        main(["944", "3d", "0", "--stage", "grader"])
    """)
    fold = paths.nnUNet_results / killed / "vfscreen_grader__vfscreenPlans__3d" / "fold_0"
    assert not (fold / "checkpoint_final.pth").exists()
    latest = __import__("torch").load(fold / "checkpoint_latest.pth", weights_only=True)
    assert latest["metadata"]["epoch"] == 1  # the half-written epoch-2 checkpoint never replaced it

    code, out, err = run_cli(train_main, ["944", "3d", "0", "--stage", "grader", "--c"], capsys, monkeypatch)
    assert code == EXIT_OK, out + err
    code, out, err = run_cli(train_main, ["945", "3d", "0", "--stage", "grader"], capsys, monkeypatch)
    assert code == EXIT_OK, out + err
    assert_same_weights(final_weights(killed), final_weights(reference))
    assert not [p.name for p in fold.rglob("*") if ".tmp" in p.name], "temporary checkpoint left behind"
