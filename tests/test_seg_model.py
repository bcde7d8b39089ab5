"""Another trained nnU-Net v2 model as the segmentation stage: a model folder laid out exactly like TotalSegmentator's
vertebra model (``Dataset292_..._vertebrae/nnUNetTrainerNoMirroring__nnUNetPlans__3d_fullres`` with its dataset.json
label names: 1 sacrum, 2 vertebrae_S1, 3 vertebrae_L5 ... 26 vertebrae_C1), built here with a tiny PlainConvUNet
(nnunetv2's own network builder, dynamic_network_architectures) whose output layer is set so that it labels every voxel vertebrae_L2 - a known
output, so the test can see the model's labels arrive through its dataset.json as VerSe L2 (21) - through
``vfscreen_predict --seg-model`` and through ``vfscreen_train --pretrained-seg`` + a plain ``vfscreen_predict -d``.
That output (one label over the whole scan) is also what the plausibility guard must refuse to grade."""
import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_fakes import tiny_nnunet_plans
from vfscreen.inference.cli import main as predict_main
from vfscreen.training.cli import run as train_run

TS_VERTEBRAE = ["sacrum", "vertebrae_S1"] + [f"vertebrae_L{n}" for n in range(5, 0, -1)] + \
    [f"vertebrae_T{n}" for n in range(12, 0, -1)] + [f"vertebrae_C{n}" for n in range(7, 0, -1)]
OUTPUT_CLASS = TS_VERTEBRAE.index("vertebrae_L2") + 1  # 6
TRAINER = "nnUNetTrainerNoMirroring"


def build_totalsegmentator_like_model(root, checkpoint_extra=None):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    folder = root / "Dataset292_TotalSegmentator_part2_vertebrae_1559subj" / f"{TRAINER}__nnUNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True)
    labels = {"background": 0, **{name: index for index, name in enumerate(TS_VERTEBRAE, start=1)}}
    dataset_json = {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 1, "file_ending": ".nii.gz"}
    (folder / "dataset.json").write_text(json.dumps(dataset_json))
    plans = tiny_nnunet_plans(folder.parent.name, patch_size=(32, 32, 32), spacing_mm=6.0)
    (folder / "plans.json").write_text(json.dumps(plans))
    manager = PlansManager(plans)
    torch.manual_seed(0)
    network = nnUNetTrainer.build_network_architecture(manager, manager.get_configuration("3d_fullres"), 1,
                                                       len(labels), enable_deep_supervision=False)
    with torch.no_grad():  # random weights everywhere, but the output layer says "vertebrae_L2" for every voxel
        for layer in network.decoder.seg_layers:
            layer.weight.zero_()
            layer.bias.fill_(-5.0)
            layer.bias[OUTPUT_CLASS] = 5.0
    # what nnU-Net's trainer saves (numpy scalars in the log, a torch.device in init_args)
    checkpoint = {"network_weights": network.state_dict(), "trainer_name": TRAINER,
                  "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": 0,
                                "dataset_json": dataset_json, "device": torch.device("cpu")},
                  "inference_allowed_mirroring_axes": None, "current_epoch": 1, "_best_ema": np.float64(0.5),
                  "logging": {"mean_fg_dice": [np.float64(0.4)], "train_losses": [np.float32(1.0)]},
                  **(checkpoint_extra or {})}
    torch.save(checkpoint, folder / "fold_0" / "checkpoint_final.pth")
    return folder


@pytest.fixture(scope="module")
def ts_model(tmp_path_factory):
    return build_totalsegmentator_like_model(tmp_path_factory.mktemp("ts_model"))


def run_predict(*arguments) -> int:
    with pytest.raises(SystemExit) as stop:
        predict_main([str(a) for a in arguments])
    return stop.value.code


def case_input(tmp_path, example_ct):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(example_ct, folder / "example.nii.gz")
    return folder


def check_model_output(output, example_ct, model_folder, how):
    data = json.loads((output / "example.json").read_text())
    assert data["segmentation"]["source"] == "seg_model"
    assert data["segmentation"]["model_folder"] == str(model_folder.resolve())
    assert data["model"]["segmentation"]["folder"] == str(model_folder.resolve())
    assert data["model"]["segmentation"]["how"].startswith(how)
    assert [v["name"] for v in data["vertebrae"]] == ["L2"]  # class 6 = vertebrae_L2 by the model's dataset.json
    seg = sitk.ReadImage(str(output / "example_seg.nii.gz"))
    ct = sitk.ReadImage(str(example_ct))
    assert (seg.GetSize(), seg.GetSpacing(), seg.GetOrigin(), seg.GetDirection()) == \
        (ct.GetSize(), ct.GetSpacing(), ct.GetOrigin(), ct.GetDirection())
    assert set(np.unique(sitk.GetArrayFromImage(seg))) == {21}
    # one "vertebra" filling the scan: refused by the plausibility guard, never graded or flagged
    vertebra = data["vertebrae"][0]
    assert vertebra["implausible"] and vertebra["grade"] is None and vertebra["morph_grade"] is None
    assert data["patient"]["implausible"] and data["patient"]["any_fracture"] is False
    assert "implausible" in data["patient"]["message"]


def test_seg_model_folder(tmp_path, example_ct, ts_model):
    output = tmp_path / "out"
    assert run_predict("-i", case_input(tmp_path, example_ct), "-o", output, "-d", "996", "--seg-model",
                       ts_model) == 0
    check_model_output(output, example_ct, ts_model, "--seg_model")


def test_pretrained_seg_is_used_by_plain_predict(tmp_path, example_ct, ts_model, capsys):
    from grader_fakes import tiny_plans, write_dataset
    from vfscreen import paths

    dataset_name = "Dataset995_PretrainedSeg"
    write_dataset(paths.nnUNet_preprocessed, dataset_name, tiny_plans(dataset_name))
    inputs = case_input(tmp_path, example_ct)
    # before: the dataset has no segmentation model of its own, so a plain prediction cannot segment
    assert run_predict("-i", inputs, "-o", tmp_path / "before", "-d", "995") == 2
    assert "no trained segmentation fold" in capsys.readouterr().err
    assert train_run([dataset_name, "3d", "0", "--stage", "seg", "--pretrained-seg", str(ts_model)]) == 0
    assert "recorded" in capsys.readouterr().out
    output = tmp_path / "after"
    assert run_predict("-i", inputs, "-o", output, "-d", "995") == 0
    check_model_output(output, example_ct, ts_model, "recorded by vfscreen_train --pretrained_seg")


def test_bad_model_folders(tmp_path, example_ct, ts_model, capsys):
    inputs = case_input(tmp_path, example_ct)
    missing = tmp_path / "nowhere"
    assert run_predict("-i", inputs, "-o", tmp_path / "o1", "--seg-model", missing) == 2
    assert f"{missing} does not exist" in capsys.readouterr().err
    no_dataset_json = tmp_path / "no_dataset_json"
    shutil.copytree(ts_model, no_dataset_json)
    (no_dataset_json / "dataset.json").unlink()
    assert run_predict("-i", inputs, "-o", tmp_path / "o2", "--seg-model", no_dataset_json) == 2
    assert f"{no_dataset_json / 'dataset.json'} is missing" in capsys.readouterr().err
    unsafe = build_totalsegmentator_like_model(tmp_path / "unsafe", {"trainer_class": shutil.copytree})
    assert run_predict("-i", inputs, "-o", tmp_path / "o4", "--seg-model", unsafe) == 2
    assert "cannot be loaded safely" in capsys.readouterr().err
    no_fold = tmp_path / "no_fold"
    shutil.copytree(ts_model, no_fold)
    shutil.rmtree(no_fold / "fold_0")
    assert run_predict("-i", inputs, "-o", tmp_path / "o5", "--seg-model", no_fold) == 2
    assert f"looked for {no_fold / 'fold_X' / 'checkpoint_final.pth'}" in capsys.readouterr().err
    for output in ("o1", "o2", "o4", "o5"):
        assert not (tmp_path / output / "example.json").exists()
