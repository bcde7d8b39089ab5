"""Grader data: the preprocessed vertebra crops of one fold, as torch datasets fed by background worker processes.

Crops come from ``nnUNet_preprocessed/<Dataset>/vfscreen_crops_<config>/`` (``crops.csv`` + ``<case>_<label>.npy``
float16 (3, D, H, W), written by vfscreen_plan_and_preprocess). The fold's training/validation cases come from
nnU-Net's ``splits_final.json`` when it exists, else from the ``fold`` column of crops.csv (the fold in which a case
is validation). Fold 'all' trains on every case and validates on the training cases (as nnU-Net does).
Augmentation runs in torch DataLoader worker processes (like nnU-Net's background data augmentation); every item
carries its own seed, so batches do not depend on the number of workers.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from vfscreen.dataset import read_csv_table
from vfscreen.errors import ConfigError
from vfscreen.genant import GRADE_NAMES
from vfscreen.preprocessing.grader_crops import CROPS_INDEX, load_crop
from vfscreen.training.grader.augmentation import centred_patch

CROPS_TABLE = CROPS_INDEX
CROPS_COLUMNS = ("case_id", "label", "grade", "fold", "truncated", "file")
PREPROCESS_HINT = "run vfscreen_plan_and_preprocess -d {dataset_id} first"


def read_crops_table(folder: Path, hint: str) -> pd.DataFrame:
    """crops.csv with absolute 'path' and integer 'grade' (-1 = ungraded) columns; ConfigError if missing/invalid."""
    table_path = Path(folder) / CROPS_TABLE
    if not table_path.is_file():
        raise ConfigError(f"grader crops missing: {table_path} not found; {hint}")
    table = read_csv_table(table_path, CROPS_COLUMNS, ConfigError, "crops table", hint)
    table["grade"] = pd.to_numeric(table["grade"], errors="coerce").fillna(-1).astype(int)
    table["truncated"] = table["truncated"].astype(str).str.lower().isin(("true", "1", "1.0", "yes"))
    table["path"] = [str(Path(folder) / name) for name in table["file"]]
    absent = [path for path in table["path"] if not Path(path).is_file()]
    if absent:
        raise ConfigError(f"{len(absent)} crop file(s) listed in {table_path} are missing (e.g. {absent[0]}); {hint}")
    return table


def fold_case_ids(table: pd.DataFrame, splits_file: Path, fold, num_folds: int) -> tuple[list[str], list[str]]:
    """(training case ids, validation case ids) of ``fold`` (int or 'all')."""
    all_cases = sorted(table["case_id"].unique())
    if fold == "all":
        return all_cases, all_cases
    if Path(splits_file).is_file():
        splits = json.loads(Path(splits_file).read_text())
        if not 0 <= fold < len(splits):
            raise ConfigError(f"fold {fold} is outside the split: {splits_file} has folds 0-{len(splits) - 1}")
        return sorted(splits[fold]["train"]), sorted(splits[fold]["val"])
    if not 0 <= fold < num_folds:
        raise ConfigError(f"fold {fold} is outside the split: the plans have folds 0-{num_folds - 1}")
    folds = pd.to_numeric(table["fold"], errors="coerce")
    return sorted(table.loc[folds != fold, "case_id"].unique()), sorted(table.loc[folds == fold, "case_id"].unique())


def select_fold(table: pd.DataFrame, train_cases, val_cases, use_truncated: bool, fold, num_classes: int = 4):
    """Graded training/validation rows of the fold; ConfigError if a grade has no training sample.

    Without ``use_truncated``, vertebrae cut by the field of view are left out of training *and* validation, because
    prediction does not grade them either (it flags them ``truncated``): validation measures what prediction does.
    """
    graded = table[table["grade"] >= 0]
    if not use_truncated:
        graded = graded[~graded["truncated"]]
    train = graded[graded["case_id"].isin(set(train_cases))]
    val = graded[graded["case_id"].isin(set(val_cases))]
    counts = np.bincount(train["grade"].to_numpy(), minlength=num_classes)
    empty = [GRADE_NAMES[g] for g in range(num_classes) if counts[g] == 0]
    if empty:
        raise ConfigError(f"fold {fold}: grade(s) {', '.join(empty)} have no training sample (per grade: "
                          f"{counts.tolist()}); the per-class sampler needs every grade - use another split or "
                          "more data")
    if val.empty:
        raise ConfigError(f"fold {fold}: no graded validation vertebra")
    return train.reset_index(drop=True), val.reset_index(drop=True)


class TrainingViews(Dataset):
    """Item (index, item_seed) -> (views (V, 3, *patch_size) float32, grade int)."""

    def __init__(self, crop_paths, grades, augmentation, num_views: int = 2):
        self.crop_paths = list(crop_paths)
        self.grades = [int(g) for g in grades]
        self.augmentation = augmentation
        self.num_views = int(num_views)

    def __len__(self) -> int:
        return len(self.crop_paths)

    def __getitem__(self, item):
        index, item_seed = item
        crop = load_crop(self.crop_paths[index])
        view_seeds = np.random.SeedSequence(int(item_seed)).generate_state(self.num_views)
        views = torch.stack([self.augmentation(crop, int(seed)) for seed in view_seeds])
        return views, self.grades[index]


class ValidationPatches(Dataset):
    """Item i -> (centred patch (3, *patch_size) float32, i)."""

    def __init__(self, crop_paths, patch_size):
        self.crop_paths = list(crop_paths)
        self.patch_size = tuple(patch_size)
        self._centred_patch = centred_patch

    def __len__(self) -> int:
        return len(self.crop_paths)

    def __getitem__(self, index):
        return self._centred_patch(load_crop(self.crop_paths[index]), self.patch_size), index


class ProbePatches(Dataset):
    """The training crops for a linear probe: item i -> (patch (3, *patch_size) float32, i); items
    ``k * (1 + copies)`` are the centred crops, the ``copies`` after each are seeded augmented views of it."""

    def __init__(self, crop_paths, patch_size, augmentation, copies: int, seed: int):
        self.crop_paths = list(crop_paths)
        self.patch_size = tuple(patch_size)
        self.augmentation = augmentation
        self.copies = int(copies)
        self.seed = int(seed)
        self._centred_patch = centred_patch

    def __len__(self) -> int:
        return len(self.crop_paths) * (1 + self.copies)

    def __getitem__(self, index):
        crop_index, copy = divmod(index, 1 + self.copies)
        crop = load_crop(self.crop_paths[crop_index])
        if copy == 0:
            return self._centred_patch(crop, self.patch_size), index
        item_seed = int(np.random.SeedSequence([self.seed, crop_index, copy]).generate_state(1)[0])
        return self.augmentation(crop, item_seed), index


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)


def make_loader(dataset: Dataset, num_workers: int, pin_memory: bool, batch_sampler=None, batch_size=None):
    """DataLoader with ``num_workers`` background processes (0 = in the main process)."""
    kwargs = dict(num_workers=num_workers, pin_memory=pin_memory, worker_init_fn=_worker_init)
    if num_workers > 0:
        kwargs.update(persistent_workers=True, prefetch_factor=2)
    if batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=batch_sampler, **kwargs)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, **kwargs)
