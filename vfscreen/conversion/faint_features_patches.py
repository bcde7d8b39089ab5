"""The Faint-Features processed patches (``processed_dataset.zip``: ``img/``, ``seg/``, ``{image}_{label}_{grade}.nii.gz``,
``train_file_list.{tag}.yaml`` / ``test_file_list.{tag}.yaml``) -> grader-only training data in
``nnUNet_preprocessed/Dataset504_FaintFeaturesPatches`` (see vfscreen.conversion.faint_features for both inputs)."""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path, PurePosixPath

from vfscreen import labels, paths
from vfscreen.conversion.common import InputTree, ProblemLog, output_folder, safe_case_id
from vfscreen.conversion.yaml_input import load_yaml
from vfscreen.core.plans import CONFIGURATION, PLANS_FILE_NAME, crop_section, load_plans, save_plans
from vfscreen.errors import ConfigError, InputError
from vfscreen.preprocessing.crops import extract_vertebra_crops, validate_crop_plan
from vfscreen.preprocessing.grader_crops import CROPS_INDEX, CROP_PLAN_FILE, INDEX_COLUMNS, crop_plan_hash
from vfscreen.utils.atomic import atomic_directory, atomic_save_npy, atomic_write_csv, atomic_write_json
from vfscreen.utils.image_io import check_same_geometry, read_image
from vfscreen.utils.progress import progress_bar

PATCH_DATASET_NAME = "FaintFeaturesPatches"
DEFAULT_PATCH_DATASET_ID = 504
PATCH_NAME = re.compile(r"^(?P<image>.+)_(?P<label>\d+)_(?P<grade>\d+)\.nii(\.gz)?$")
FILE_LIST = re.compile(r"^(?P<kind>train|test)_file_list\.(?P<tag>.+)\.ya?ml$")


def is_patch_layout(tree: InputTree) -> bool:
    return any(FILE_LIST.match(PurePosixPath(n).name) for n in tree.files)


def read_file_lists(tree: InputTree, problems: ProblemLog) -> tuple[str, dict[str, dict[str, list[str]]]]:
    """(folder holding img/ and seg/, {tag: {"train": [patch names], "test": [patch names]}})."""
    lists: dict[str, dict[str, list[str]]] = {}
    folders = set()
    for name in tree.files:
        match = FILE_LIST.match(PurePosixPath(name).name)
        if not match:
            continue
        folders.add(str(PurePosixPath(name).parent))
        content = load_yaml(tree, name)
        if isinstance(content, dict):
            content = list(content)
        if not isinstance(content, list):
            raise InputError(f"{tree.describe(name)}: expected a list of patch file names")
        lists.setdefault(match["tag"], {"train": [], "test": []})[match["kind"]] = [str(n) for n in content]
    if len(folders) != 1:
        raise InputError(f"{tree.path}: file lists found in several folders {sorted(folders)}; expected one dataset "
                         "folder with img/, seg/ and *_file_list.<tag>.yaml")
    for tag, kinds in sorted(lists.items()):
        for kind in ("train", "test"):
            if not kinds[kind]:
                problems.problem(f"{kind}_file_list.{tag}.yaml is missing or empty")
    return folders.pop(), lists


def _default_crop_plan(patch_size: int) -> dict:
    return {"mode": "fit", "spacing_mm": 1.0, "patch_size": [patch_size] * 3, "margin_mm": 0.0,
            "windows": [{"name": "bone", "width": 1500, "level": 400},
                        {"name": "soft_tissue", "width": 200, "level": 40}],
            "mask_channel": "label_modulated", "use_truncated": True, "storage_dtype": "float16"}


def load_crop_plan(path: Path | None, patch_size: int, plans_from: str | None = None) -> tuple[dict, dict | None]:
    """(crop plan, plans to copy or None) for the patches: the grader crop plan of an existing vfscreenPlans.json
    (``plans_from``: a planned dataset's id/name or a plans file; the plans are then copied to the patch dataset so
    the grader can be trained on it), else a JSON crop plan file, else the default (fit mode, margin 0, the standard
    windows, ``patch_size``^3)."""
    if plans_from is not None:
        if Path(plans_from).is_file():
            try:
                planned_for = json.loads(Path(plans_from).read_text())["dataset_name"]
            except (OSError, ValueError, KeyError, TypeError) as error:
                raise ConfigError(f"--plans_from {plans_from}: not a vfscreenPlans.json ({error})") from None
            plans = load_plans(planned_for, plans_from)
        else:
            plans = load_plans(plans_from)
        try:
            return validate_crop_plan(crop_section(plans, CONFIGURATION)), plans
        except (KeyError, TypeError):
            raise ConfigError(f"--plans_from {plans_from}: plans without configurations.3d.grader.crop") from None
    if path is None:
        return validate_crop_plan(_default_crop_plan(int(patch_size))), None
    try:
        content = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path}: not a readable JSON crop plan ({error})") from None
    return validate_crop_plan(content), None


def _patch_fold_membership(lists, problems: ProblemLog):
    """Parse every listed patch; per tag the train/val case ids (a case in both = validation only)."""
    patches, folds = {}, []
    for tag, kinds in sorted(lists.items()):
        fold = {"tag": tag, "train": set(), "val": set()}
        for kind, names in kinds.items():
            for listed in names:
                name = PurePosixPath(listed).name
                match = PATCH_NAME.match(name)
                if match is None or not labels.is_vertebra(int(match["label"])) or int(match["grade"]) > 3:
                    if name not in patches:
                        problems.skip(f"patch {name}", "name is not {image}_{VerSe id}_{grade 0-3}.nii.gz")
                        patches[name] = None
                    continue
                case_id = safe_case_id(match["image"])
                patches.setdefault(name, (case_id, int(match["label"]), int(match["grade"])))
                fold["val" if kind == "test" else "train"].add(case_id)
        leaked = fold["train"] & fold["val"]
        for case_id in sorted(leaked):
            problems.problem(f"tag {tag}: image {case_id} has patches in both the train and the test list; all its "
                             "patches are used for validation only")
        fold["train"] -= leaked
        folds.append(fold)
    return {name: parsed for name, parsed in patches.items() if parsed is not None}, folds


def convert_patches(source: Path, dataset_id: int = DEFAULT_PATCH_DATASET_ID, crop_plan_file: Path | None = None,
                    patch_size: int = 128, overwrite: bool = False, preprocessed_root: Path | None = None,
                    progress: bool = True, tree: InputTree | None = None, plans_from: str | None = None):
    """processed_dataset(.zip) -> preprocessed_root/DatasetXXX_FaintFeaturesPatches/{vfscreen_crops_3d/, splits}.

    Returns (folder, crops table, folds, problems)."""
    import numpy as np
    import pandas as pd
    import SimpleITK as sitk
    

    if preprocessed_root is None:
        preprocessed_root = paths.nnUNet_preprocessed
    tree = tree or InputTree(source)
    crop_plan, plans = load_crop_plan(crop_plan_file, patch_size, plans_from)
    final_folder = output_folder(Path(preprocessed_root), dataset_id, PATCH_DATASET_NAME)
    problems = ProblemLog()
    base, lists = read_file_lists(tree, problems)
    prefix = "" if base in ("", ".") else base + "/"
    patches, folds = _patch_fold_membership(lists, problems)
    validation_fold = {}
    for number, fold in enumerate(folds):
        for case_id in fold["val"]:
            validation_fold.setdefault(case_id, number)
    available = set(tree.files)
    rows, seen, plan_hash = [], set(), crop_plan_hash(crop_plan)
    try:
        with atomic_directory(final_folder, overwrite=overwrite) as tmp_folder:
            crops_folder = tmp_folder / "vfscreen_crops_3d"
            for name, (case_id, verse_id, grade) in progress_bar(sorted(patches.items()), desc="patches -> crops",
                                                         unit="patch", disable=not progress):
                members = (f"{prefix}img/{name}", f"{prefix}seg/{name}")
                missing = [tree.describe(m) for m in members if m not in available]
                if missing:
                    problems.skip(f"patch {name}", f"listed but missing: {', '.join(missing)}")
                    continue
                if (case_id, verse_id) in seen:
                    problems.skip(f"patch {name}", f"a second patch of {case_id} {labels.name_of(verse_id)}")
                    continue
                try:
                    with tree.local(*members) as (image_file, mask_file):
                        patch, patch_mask = read_image(image_file, "patch"), read_image(mask_file, "patch mask")
                    check_same_geometry(patch, patch_mask, source=f"seg/{name}")
                    mask_array = sitk.GetArrayViewFromImage(patch_mask) > 0
                    if not mask_array.any():
                        raise InputError(f"seg/{name}: the patch mask is empty")
                    label_image = sitk.GetImageFromArray(mask_array.astype(np.uint8) * np.uint8(verse_id))
                    label_image.CopyInformation(patch)
                    crop = extract_vertebra_crops(patch, label_image, crop_plan, labels=[verse_id])[0]
                except InputError as error:
                    problems.skip(f"patch {name}", str(error))
                    continue
                seen.add((case_id, verse_id))
                file_name = f"{case_id}_{verse_id:02d}.npy"
                atomic_save_npy(crops_folder / file_name, crop.data.astype(crop_plan.get("storage_dtype", "float16")))
                rows.append({  # the columns of vfscreen.preprocessing.grader_crops' crops.csv (+ source_file)
                    "case_id": case_id, "label": verse_id, "name": labels.name_of(verse_id), "grade": grade,
                    "fold": validation_fold.get(case_id), "truncated": False,  # the patch is the vertebra's box
                    "bbox": json.dumps([list(b) for b in crop.bbox_index]),
                    "crop_spacing_mm": round(crop.spacing_mm[0], 6), "shape": json.dumps(list(crop.shape)),
                    "file": file_name, "centroid_mm": json.dumps([round(v, 3) for v in crop.centroid_mm]),
                    "voxel_count": crop.voxel_count, "plan_hash": plan_hash, "source_file": name})
            if not rows:
                raise InputError(f"{tree.path}: no usable patch; nothing was written (see the problems above)")
            table = pd.DataFrame(rows, columns=list(INDEX_COLUMNS) + ["source_file"])
            table["fold"] = table["fold"].astype("Int64")  # empty = in no validation set
            atomic_write_json(crops_folder / CROP_PLAN_FILE, {
                "dataset_name": final_folder.name, "configuration": "3d", "plan_hash": plan_hash, "crop": crop_plan,
                "source": "Faint-Features processed patches (margin 0: each patch is its vertebra's box)",
                "fold_tags": [fold["tag"] for fold in folds]})
            atomic_write_csv(crops_folder / CROPS_INDEX, table)
            if plans is not None:
                save_plans({**plans, "dataset_name": final_folder.name}, tmp_folder / PLANS_FILE_NAME)
            usable = set(table.case_id)
            atomic_write_json(tmp_folder / "splits_final.json", [
                {"train": sorted(fold["train"] & usable), "val": sorted(fold["val"] & usable)} for fold in folds])
    except FileExistsError as error:
        raise ConfigError(str(error)) from None
    return final_folder, table, folds, problems


def patch_summary_text(folder: Path, table, folds, problems: ProblemLog) -> str:
    histogram = Counter(table.grade)
    lines = [f"{folder}:", f"  crops: {len(table)} from {table.case_id.nunique()} images",
             "  grades: " + ", ".join(f"G{g} {histogram.get(g, 0)}" for g in range(4))]
    usable = set(table.case_id)
    for number, fold in enumerate(folds):
        lines.append(f"  fold {number} (tag {fold['tag']}): {len(fold['train'] & usable)} training images, "
                     f"{len(fold['val'] & usable)} validation images")
    if problems.skipped:
        lines.append(f"  skipped ({len(problems.skipped)}):")
        lines.extend(f"    - {what}: {why}" for what, why in problems.skipped)
    lines.append(f"  problems: {len(problems.messages)}" + (" (listed above)" if problems.messages else ""))
    return "\n".join(lines)
