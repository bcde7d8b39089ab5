"""Safe loading of segmentation checkpoints on ``vfscreen_train --c``: nnunetv2 itself loads them with
``weights_only=False``; vfscreen forces torch's safe loader around it. A genuine nnU-Net checkpoint still loads, a
pickle of an arbitrary object is refused with one clear message and its code never runs."""
from __future__ import annotations

import pickle
from pathlib import Path

from robustness.conftest import error_lines, run_cli
from robustness.test_bad_inputs import Payload
from vfscreen import paths
from vfscreen.errors import EXIT_USAGE
from vfscreen.training.cli import main as train_main


def _trainer(dataset_name):
    from vfscreen.core.plans import load_plans
    from vfscreen.training.segmentation import build_trainer

    segmentation_plan = load_plans(dataset_name)["configurations"]["3d"]["segmentation"]
    return build_trainer(dataset_name, segmentation_plan, 0, "cpu", continue_training=True)


def test_genuine_nnunet_checkpoint_loads_with_weights_only(planned_tiny_dataset):
    import torch

    from vfscreen.training.segmentation import weights_only_loading

    name, _ = planned_tiny_dataset
    trainer = _trainer(name)
    trainer.initialize()
    trainer.current_epoch = 3
    path = paths.nnUNet_results / name / "genuine_checkpoint.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(str(path))  # nnU-Net's own format (optimizer, logger, init_args with a torch.device)
    resumed = _trainer(name)
    with weights_only_loading():
        resumed.load_checkpoint(str(path))
    assert resumed.current_epoch == 4  # nnU-Net stores the next epoch to run
    for key, tensor in trainer.network.state_dict().items():
        assert torch.equal(tensor, resumed.network.state_dict()[key]), key
    path.unlink()


def test_hostile_segmentation_checkpoint_on_continue(planned_tiny_dataset, tmp_path, capsys, monkeypatch):
    name, _ = planned_tiny_dataset
    fold = Path(_trainer(name).output_folder)
    fold.mkdir(parents=True, exist_ok=True)
    marker = tmp_path / "pwned"
    (fold / "checkpoint_latest.pth").write_bytes(pickle.dumps(Payload(marker)))
    try:
        code, out, err = run_cli(train_main, [name, "3d", "0", "--stage", "seg", "--c"], capsys, monkeypatch)
        assert code == EXIT_USAGE, out + err
        lines = error_lines(err)
        assert len(lines) == 1 and "Traceback" not in out + err, err
        assert "cannot continue" in lines[0] and "UnpicklingError" in lines[0], lines[0]
        assert not marker.exists(), "the checkpoint's pickled code ran"
        assert not (fold / "checkpoint_final.pth").exists()
    finally:
        (fold / "checkpoint_latest.pth").unlink()
