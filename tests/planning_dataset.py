"""Tiny fabricated raw datasets for the planner tests: a few small CT volumes with box-shaped vertebrae."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from vfscreen import labels
from vfscreen.dataset import write_dataset_json

VERTEBRAE = (20, 21, 22, 23)  # VerSe ids L1-L4


def make_case(size=(32, 32, 32), spacing=(1.5, 1.5, 1.5), vertebrae=VERTEBRAE, seed=0, origin=(0.0, 0.0, 0.0)):
    """(CT image in HU, label image in nnU-Net class ids) with one box per vertebra stacked along z."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = size[2], size[1], size[0]
    ct = rng.normal(-800, 30, (nz, ny, nx)).astype(np.int16)
    label = np.zeros((nz, ny, nx), np.uint8)
    ct[:, 4:ny - 4, 4:nx - 4] = rng.normal(40, 20, (nz, ny - 8, nx - 8))
    height = (nz - 4) // len(vertebrae)
    for index, verse_id in enumerate(vertebrae):
        z0 = 2 + index * height
        box = (slice(z0 + 1, z0 + height - 1), slice(ny // 2 - 6, ny // 2 + 6), slice(nx // 2 - 5, nx // 2 + 5))
        label[box] = labels.VERSE_TO_CLASS[verse_id]
        ct[box] = rng.normal(400, 50, label[box].shape)
    images = []
    for array in (ct, label):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(spacing)
        image.SetOrigin(origin)
        images.append(image)
    return images


def make_dataset(raw_root: Path, dataset_id: int = 990, name: str = "PlanTest", num_cases: int = 10,
                 spacing=(1.5, 1.5, 1.5), size=(32, 32, 32), grades=None) -> str:
    """Write ``Dataset<id>_<name>`` into ``raw_root``; grades cycle so every grade occurs. Returns the dataset name."""
    dataset_name = f"Dataset{dataset_id:03d}_{name}"
    folder = Path(raw_root) / dataset_name
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir(parents=True)
    rows = ["case_id,label,grade"]
    for case in range(num_cases):
        case_id = f"case{case:03d}"
        ct, label = make_case(size=size, spacing=spacing, seed=case)
        sitk.WriteImage(ct, str(folder / "imagesTr" / f"{case_id}_0000.nii.gz"))
        sitk.WriteImage(label, str(folder / "labelsTr" / f"{case_id}.nii.gz"))
        for index, verse_id in enumerate(VERTEBRAE):
            grade = grades(case, index) if grades else (case + index) % 4 if index < 2 else 0
            rows.append(f"{case_id},{verse_id},{grade}")
    (folder / "grades.csv").write_text("\n".join(rows) + "\n")
    write_dataset_json(folder, dataset_name, num_cases, "planner test dataset")
    return dataset_name


def synthetic_fingerprint(p95_extent_mm=90.0, min_spacing_mm=0.8, grade_counts=(500, 60, 50, 40)) -> dict:
    """The parts of a vfscreen fingerprint the grader planner reads."""
    return {"vertebra_extent_mm": {"p50": p95_extent_mm * 0.8, "p95": p95_extent_mm, "max": p95_extent_mm * 1.1},
            "median_min_spacing_mm": min_spacing_mm,
            "grade_histogram_vertebrae": {str(g): n for g, n in enumerate(grade_counts)}}


def fullres_configuration(spacing=(1.0, 1.0, 1.0), median_shape=(200, 160, 160)) -> dict:
    """An nnU-Net 3d_fullres configuration like nnunetv2's planner writes (the keys vfscreen's planner reads)."""
    return {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
        "patch_size": [128, 112, 112], "median_image_size_in_voxels": list(median_shape), "spacing": list(spacing),
        "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {"n_stages": 6, "features_per_stage": [32, 64, 128, 256, 320, 320],
                            "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": [[3, 3, 3]] * 6,
                            "strides": [[1, 1, 1]] + [[2, 2, 2]] * 5, "n_conv_per_stage": [2] * 6,
                            "n_conv_per_stage_decoder": [2] * 5, "conv_bias": True,
                            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                            "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
                            "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
                            "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
        "batch_dice": False}


def nnunet_plans(configurations: dict | None = None, dataset_name="Dataset990_PlanTest") -> dict:
    return {"dataset_name": dataset_name, "plans_name": "nnUNetPlans", "transpose_forward": [0, 1, 2],
            "transpose_backward": [0, 1, 2], "image_reader_writer": "SimpleITKIO", "label_manager": "LabelManager",
            "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
            "original_median_shape_after_transp": [200, 160, 160],
            "foreground_intensity_properties_per_channel": {},
            "configurations": configurations or {"3d_fullres": fullres_configuration()}}
