"""Hand-made nnU-Net v2 plans for tiny test model folders (a 2-stage PlainConvUNet, CT normalisation), and such a
model folder with random weights."""
from __future__ import annotations

import json
from pathlib import Path


def tiny_nnunet_plans(dataset_name: str, patch_size=(16, 16, 16), spacing_mm: float = 3.0) -> dict:
    resampling_kwargs = {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None}
    return {
        "dataset_name": dataset_name, "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [spacing_mm] * 3, "original_median_shape_after_transp": list(patch_size),
        "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "experiment_planner_used": "handmade", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {
            "max": 1500.0, "mean": 300.0, "median": 280.0, "min": -200.0, "percentile_00_5": -100.0,
            "percentile_99_5": 1200.0, "std": 250.0}},
        "configurations": {"3d_fullres": {
            "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 2, "patch_size": list(patch_size), "median_image_size_in_voxels": list(patch_size),
            "spacing": [spacing_mm] * 3, "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
            "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_data_kwargs": resampling_kwargs,
            "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_seg_kwargs": {**resampling_kwargs, "is_seg": True},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": resampling_kwargs, "batch_dice": True,
            "architecture": {
                "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                "arch_kwargs": {"n_stages": 2, "features_per_stage": [4, 8], "conv_op": "torch.nn.modules.conv.Conv3d",
                                "kernel_sizes": [[3, 3, 3], [3, 3, 3]], "strides": [[1, 1, 1], [2, 2, 2]],
                                "n_conv_per_stage": [1, 1], "n_conv_per_stage_decoder": [1], "conv_bias": True,
                                "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                                "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None,
                                "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
                                "nonlin_kwargs": {"inplace": True}},
                "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}}}}


def write_tiny_nnunet_model(parent: Path, folds=(0, 1), dataset_name: str = "Dataset990_Tiny") -> Path:
    """``parent/nnUNetTrainer__nnUNetPlans__3d_fullres`` with a random 2-stage U-Net per fold, in nnU-Net's checkpoint
    format (numpy scalars in its training log, a torch.device in init_args)."""
    import numpy as np
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from vfscreen.labels import NUM_CLASSES, nnunet_labels_dict

    folder = Path(parent) / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    folder.mkdir(parents=True)
    plans = tiny_nnunet_plans(dataset_name)
    dataset_json = {"channel_names": {"0": "CT"}, "labels": nnunet_labels_dict(), "numTraining": 1,
                    "file_ending": ".nii.gz"}
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset_json))
    manager = PlansManager(plans)
    for fold in folds:
        torch.manual_seed(fold)
        network = nnUNetTrainer.build_network_architecture(
            manager, manager.get_configuration("3d_fullres"), 1, NUM_CLASSES, enable_deep_supervision=False)
        (folder / f"fold_{fold}").mkdir()
        torch.save({"network_weights": network.state_dict(), "trainer_name": "nnUNetTrainer",
                    "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": fold,
                                  "dataset_json": dataset_json, "device": torch.device("cpu")},
                    "inference_allowed_mirroring_axes": (0, 1, 2), "current_epoch": 1,
                    "_best_ema": np.float64(0.5), "logging": {"mean_fg_dice": [np.float64(0.4)],
                                                              "train_losses": [np.float32(1.0)]}},
                   folder / f"fold_{fold}" / "checkpoint_final.pth")
    return folder
