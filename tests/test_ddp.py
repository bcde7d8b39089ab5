"""A 2-process gloo DDP grader run on the CPU (torchrun) trains and writes exactly one set of artefacts."""
import json
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import torch
from grader_fakes import tiny_plans, write_dataset

from vfscreen import paths


@pytest.mark.slow  # ~25 s: three Python processes start (torchrun + 2 ranks)
def test_two_process_gloo_run_writes_one_set_of_artefacts():
    dataset_name = "Dataset978_GraderDDP"
    plans = tiny_plans(dataset_name, num_epochs=2)
    shutil.rmtree(paths.nnUNet_preprocessed / dataset_name, ignore_errors=True)
    shutil.rmtree(paths.nnUNet_results / dataset_name, ignore_errors=True)
    write_dataset(paths.nnUNet_preprocessed, dataset_name, plans)
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "VFSCREEN_QUIET": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "vfscreen.training.cli", "978", "3d", "fold0", "--stage", "grader", "-device", "cpu"]
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    model_folder = paths.nnUNet_results / dataset_name
    fold_folders = [p for p in model_folder.rglob("fold_*") if p.is_dir()]
    assert [p.relative_to(model_folder).as_posix() for p in fold_folders] == \
        ["vfscreen_grader__vfscreenPlans__3d/fold_0"]
    fold = fold_folders[0]
    assert sorted(p.relative_to(fold).as_posix() for p in fold.rglob("*") if p.is_file()) == [
        "checkpoint_best.pth", "checkpoint_final.pth", "checkpoint_latest.pth", "plans.json", "progress.png",
        "training_log.txt", "validation/metrics.json", "validation/predictions.csv",
        "validation/predictions_head.csv", "validation/predictions_probe.csv"]
    log = (fold / "training_log.txt").read_text()
    assert log.count("epoch 2/2:") == 1, "only rank 0 may write the log"
    assert "x2:" in log  # two processes

    checkpoint = torch.load(fold / "checkpoint_final.pth", weights_only=True)
    assert checkpoint["metadata"]["world_size"] == 2 and checkpoint["metadata"]["epoch"] == 2
    metrics = json.loads((fold / "validation/metrics.json").read_text())
    predictions = pd.read_csv(fold / "validation/predictions.csv", dtype={"case_id": str})
    # validation was sharded over the ranks and gathered: every validation vertebra exactly once
    assert metrics["num_vertebrae"] == len(predictions) == 20
    assert not predictions.duplicated(["case_id", "label"]).any()
