"""No network at run time: planning + preprocessing, a short grader training and prediction all run with socket
creation disabled for the process (any download attempt would raise)."""
from __future__ import annotations

import json
import socket

import pytest

from robustness.conftest import (NETWORK_DATASET, PREDICT_DATASET, make_ct, no_network, run_cli,
                                 write_preprocessed_grader_dataset)
from vfscreen import paths
from vfscreen.errors import EXIT_OK
from vfscreen.inference.cli import main as predict_main
from vfscreen.inference.outputs import case_is_complete
from vfscreen.inference.predict import predict
from vfscreen.training.cli import main as train_main


def test_sockets_are_really_disabled():
    with no_network(), pytest.raises(OSError, match="network access"):
        socket.create_connection(("127.0.0.1", 9))
    with no_network(), pytest.raises(OSError, match="network access"):
        socket.socket(socket.AF_INET, socket.SOCK_STREAM)


def test_planning_and_preprocessing_offline(planned_tiny_dataset):
    name, files = planned_tiny_dataset  # the fixture runs vfscreen_plan_and_preprocess inside no_network()
    plans = json.loads(files["vfscreenPlans.json"])
    assert plans["dataset_name"] == name and plans["preset"] == "robustness_tiny"
    assert "vfscreen_crops_3d/crops.csv" in files and any(key.endswith(".npy") for key in files)


def test_grader_training_offline(capsys, monkeypatch):
    write_preprocessed_grader_dataset(NETWORK_DATASET, num_epochs=1)
    with no_network():
        code, out, err = run_cli(train_main, [NETWORK_DATASET, "3d", "0", "--stage", "grader"], capsys, monkeypatch)
    assert code == EXIT_OK, out + err
    fold = paths.nnUNet_results / NETWORK_DATASET / "vfscreen_grader__vfscreenPlans__3d" / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file()


def test_prediction_offline(trained_models, tmp_path, capsys, monkeypatch):
    (tmp_path / "in").mkdir()
    make_ct(tmp_path / "in" / "case.nii.gz")
    with no_network():
        code, out, err = run_cli(predict_main, ["-i", tmp_path / "in", "-o", tmp_path / "out", "-d", PREDICT_DATASET,
                                                "-np", "1"], capsys, monkeypatch)
    assert code == EXIT_OK, out + err
    assert case_is_complete(tmp_path / "out", "case")
    # the cases ran in a spawned worker (a fresh interpreter, outside this patch): run the pipeline in-process too
    with no_network():
        predict(tmp_path / "in", tmp_path / "out_in_process", dataset=PREDICT_DATASET, num_threads=1,
                isolate_cases=False)
    assert case_is_complete(tmp_path / "out_in_process", "case")
