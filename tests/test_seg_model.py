"""Another trained nnU-Net v2 model as the segmentation stage: a model folder laid out exactly like TotalSegmentator's
vertebra model (``Dataset292_..._vertebrae/nnUNetTrainerNoMirroring__nnUNetPlans__3d_fullres`` with its dataset.json
label names: 1 sacrum, 2 vertebrae_S1, 3 vertebrae_L5 ... 26 vertebrae_C1), built here with a tiny PlainConvUNet
(dynamic_network_architectures) whose output layer is set so that it labels every voxel vertebrae_L2 - a known
output, so the test can see the model's labels arrive through its dataset.json as VerSe L2 (21) - through
``vfscreen_predict --seg-model`` and through ``vfscreen_train --pretrained-seg`` + a plain ``vfscreen_predict -d``.
That output (one label over the whole scan) is also what the plausibility guard must refuse to grade."""
import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from vfscreen.inference.cli import main as predict_main
from vfscreen.training.cli import run as train_run

TS_VERTEBRAE = ["sacrum", "vertebrae_S1"] + [f"vertebrae_L{n}" for n in range(5, 0, -1)] + \
    [f"vertebrae_T{n}" for n in range(12, 0, -1)] + [f"vertebrae_C{n}" for n in range(7, 0, -1)]
OUTPUT_CLASS = TS_VERTEBRAE.index("vertebrae_L2") + 1  # 6
CONFIGURATION = {
    "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
    "patch_size": [32, 32, 32], "median_image_size_in_voxels": [60, 50, 56], "spacing": [6.0, 6.0, 6.0],
    "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
    "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
    "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
    "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
    "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
    "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
    "architecture": {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {"n_stages": 2, "features_per_stage": [4, 8], "conv_op": "torch.nn.modules.conv.Conv3d",
                        "kernel_sizes": [[3, 3, 3], [3, 3, 3]], "strides": [[1, 1, 1], [2, 2, 2]],
                        "n_conv_per_stage": [1, 1], "n_conv_per_stage_decoder": [1], "conv_bias": True,
                        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                        "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
                        "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
    "batch_dice": False}
TRAINER = "nnUNetTrainerNoMirroring"


def build_totalsegmentator_like_model(root, checkpoint_extra=None):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    folder = root / "Dataset292_TotalSegmentator_part2_vertebrae_1559subj" / f"{TRAINER}__nnUNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True)
    labels = {"background": 0, **{name: index for index, name in enumerate(TS_VERTEBRAE, start=1)}}
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": labels,
                                                     "numTraining": 1, "file_ending": ".nii.gz"}))
    plans = {"dataset_name": folder.parent.name, "plans_name": "nnUNetPlans",
             "original_median_spacing_after_transp": [6.0, 6.0, 6.0],
             "original_median_shape_after_transp": [60, 50, 56], "image_reader_writer": "SimpleITKIO",
             "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
             "configurations": {"3d_fullres": CONFIGURATION}, "experiment_planner_used": "ExperimentPlanner",
             "label_manager": "LabelManager",
             "foreground_intensity_properties_per_channel": {"0": {
                 "max": 1500.0, "mean": 300.0, "median": 280.0, "min": -200.0, "percentile_00_5": -100.0,
                 "percentile_99_5": 1200.0, "std": 200.0}}}
    (folder / "plans.json").write_text(json.dumps(plans))
    torch.manual_seed(0)
    kwargs = dict(CONFIGURATION["architecture"]["arch_kwargs"])
    kwargs.update(conv_op=torch.nn.Conv3d, norm_op=torch.nn.InstanceNorm3d, nonlin=torch.nn.LeakyReLU,
                  dropout_op=None)
    network = PlainConvUNet(input_channels=1, num_classes=len(labels), deep_supervision=False, **kwargs)
    with torch.no_grad():  # random weights everywhere, but the output layer says "vertebrae_L2" for every voxel
        for layer in network.decoder.seg_layers:
            layer.weight.zero_()
            layer.bias.fill_(-5.0)
            layer.bias[OUTPUT_CLASS] = 5.0
    checkpoint = {"network_weights": network.state_dict(), "init_args": {"configuration": "3d_fullres", "fold": 0},
                  "trainer_name": TRAINER, "inference_allowed_mirroring_axes": None, "current_epoch": 1,
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
    check_model_output(output, example_ct, ts_model, "--seg-model")


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
    check_model_output(output, example_ct, ts_model, "recorded by vfscreen_train --pretrained-seg")


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
