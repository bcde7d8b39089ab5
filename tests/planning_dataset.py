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
