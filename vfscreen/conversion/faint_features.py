"""The Faint-Features dataset (Wei et al. 2022; github wxwxwwxxx/VertebralFractureGrading, "dataset" folder).

Two inputs, zipped or unzipped (a zip is read with :mod:`zipfile`; the input is never modified):

1. ``original_dataset.zip`` -> ``nnUNet_raw/Dataset503_FaintFeatures`` (segmentation + grading). Its content:
   CT images, vertebra masks (VerSe ids 1-25, 28) and ``annotation.yaml`` = ``{ct_filename: {vertebra label: grade}}``.
   A mask is recognised by its folder (``seg/``, ``mask(s)/``, ``label(s)/``...; same file name as its CT) or by a
   suffix (``<ct>_seg.nii.gz``, ``_msk``, ``_mask``, ``_label``). Case id = the CT file name without ``.nii[.gz]``
   (characters unsafe in file names replaced by ``_``). Every case goes to imagesTr (the dataset has no official
   test split); vertebrae the annotation does not grade are kept for segmentation only; centroids are the masks'
   centers of mass (world LPS, mm).
2. The processed patches (``processed_dataset.zip``: ``img/``, ``seg/``, ``{image}_{label}_{grade}.nii.gz``,
   ``train_file_list.{tag}.yaml`` / ``test_file_list.{tag}.yaml``) -> grader-only training data in
   ``nnUNet_preprocessed/Dataset504_FaintFeaturesPatches``: each patch becomes a crop (THE crop function of
   :mod:`vfscreen.preprocessing.crops` applied to the patch and its mask, in ``vfscreen_crops_3d/`` with ``crops.csv``
   in the columns of :mod:`vfscreen.preprocessing.grader_crops`), and each tag's train/test lists become one fold of
   ``splits_final.json`` (test list = validation; ``fold`` in crops.csv = the fold whose validation set holds the
   image, empty when none). The crop plan: ``--plans_from`` a planned dataset (its grader crop plan, and its plans
   are copied so that ``vfscreen_train 504 3d 0 --stage grader`` runs; context beyond the authors' patch, which is
   the vertebra's box, is air), else ``--crop_plan FILE``, else fit mode, margin 0, ``--patch_size``^3.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path, PurePosixPath

import yaml

from vfscreen import labels, paths
from vfscreen.conversion.common import (CERVICAL_VERSE_IDS, InputTree, ProblemLog, SourceCase, build_raw_dataset,
                                        converter_parser, nifti_stem, output_folder, safe_case_id, summary_text)
from vfscreen.core.cli import command
from vfscreen.errors import ConfigError, InputError
from vfscreen.preprocessing.crops import extract_vertebra_crops, validate_crop_plan
from vfscreen.preprocessing.grader_crops import CROPS_INDEX, CROP_PLAN_FILE, INDEX_COLUMNS, crop_plan_hash
from vfscreen.utils.atomic import atomic_directory, atomic_save_npy, atomic_write_csv, atomic_write_json
from vfscreen.utils.image_io import check_same_geometry, read_image
from vfscreen.core.plans import CONFIGURATION, PLANS_FILE_NAME, crop_section, load_plans, save_plans
from vfscreen.utils.progress import progress_bar

DATASET_NAME = "FaintFeatures"
PATCH_DATASET_NAME = "FaintFeaturesPatches"
DEFAULT_DATASET_ID = 503
DEFAULT_PATCH_DATASET_ID = 504
MASK_FOLDERS = {"seg", "segs", "segmentation", "segmentations", "mask", "masks", "msk", "label", "labels", "gt"}
MASK_SUFFIXES = ("_seg", "_msk", "_mask", "_label", "-seg")
PATCH_NAME = re.compile(r"^(?P<image>.+)_(?P<label>\d+)_(?P<grade>\d+)\.nii(\.gz)?$")
FILE_LIST = re.compile(r"^(?P<kind>train|test)_file_list\.(?P<tag>.+)\.ya?ml$")


class _FirstKeyWinsLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a repeated mapping key keeps its first value and is recorded (plain YAML
    silently keeps the last), so a CT annotated twice is reported instead of half-overwritten."""

    def __init__(self, stream):
        super().__init__(stream)
        self.duplicate_keys: list[tuple[object, int]] = []

    def construct_mapping(self, node, deep=False):
        self.flatten_mapping(node)
        mapping = {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in mapping:
                self.duplicate_keys.append((key, key_node.start_mark.line + 1))
                continue
            mapping[key] = self.construct_object(value_node, deep=deep)
        return mapping


def load_yaml(tree: InputTree, name: str, problems: ProblemLog | None = None):
    loader = _FirstKeyWinsLoader(tree.read_text(name))
    try:
        content = loader.get_single_data()
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise InputError(f"{tree.describe(name)}: not readable YAML ({str(error).splitlines()[0]})") from None
    finally:
        loader.dispose()
    for key, line in loader.duplicate_keys:
        if problems is not None:
            problems.skip(f"{PurePosixPath(name).name}, line {line}", f"{key!r} appears twice; the second entry")
    return content


def _as_grade(value) -> int:
    grade = float(str(value).strip())
    if not grade.is_integer() or int(grade) not in (0, 1, 2, 3):
        raise ValueError
    return int(grade)


# ------------------------------------------------------------------------------------------ original dataset
def find_original_cases(tree: InputTree, problems: ProblemLog) -> tuple[dict[str, tuple[str, str | None]], set]:
    """(CT key (file name without extension) -> (CT member, mask member or None), every CT key found)."""
    images: dict[str, list[str]] = {}
    masks: dict[str, list[str]] = {}
    niftis = [name for name in tree.files if nifti_stem(name) is not None]
    in_mask_folder = {name: bool({p.lower() for p in PurePosixPath(name).parts[:-1]} & MASK_FOLDERS) for name in niftis}
    folder_layout = any(in_mask_folder.values())  # masks in their own folder: suffixes mean nothing
    for name in niftis:
        stem = nifti_stem(name)
        suffix = next((s for s in MASK_SUFFIXES if stem.lower().endswith(s)), None)
        if in_mask_folder[name]:
            masks.setdefault(stem, []).append(name)
        elif suffix and not folder_layout:
            masks.setdefault(stem[: -len(suffix)], []).append(name)
        else:
            images.setdefault(stem, []).append(name)
    cases = {}
    for key, members in sorted(images.items()):
        if len(members) > 1:
            problems.skip(f"CT {key}", f"duplicate CT files {[tree.describe(m) for m in members]}")
            continue
        found = masks.get(key, [])
        if len(found) > 1:
            problems.skip(f"CT {key}", f"several masks {[tree.describe(m) for m in found]}")
            continue
        cases[key] = (members[0], found[0] if found else None)
    for key in sorted(set(masks) - set(images)):
        problems.problem(f"mask {tree.describe(masks[key][0])} has no CT (expected a CT file named {key}.nii.gz)")
    return cases, set(images)


def read_annotation(tree: InputTree, name: str, cases: dict, known: set[str], problems: ProblemLog
                    ) -> dict[str, dict[int, tuple[int, None]]]:
    """``{ct_filename: {label: grade}}`` -> CT key -> {VerSe id: (grade, None)}; bad entries reported and skipped."""
    content = load_yaml(tree, name, problems)
    if not isinstance(content, dict):
        raise InputError(f"{tree.describe(name)}: expected a mapping {{ct_filename: {{vertebra label: grade}}}}")
    grades = {}
    for ct_name, vertebrae in content.items():
        key = nifti_stem(str(ct_name)) or str(ct_name)
        where = f"annotation.yaml, {ct_name}"
        if key not in known:
            problems.skip(where, "no such CT in the dataset; its grades")
            continue
        if key not in cases:
            continue  # the CT itself was skipped (reported already)
        if key in grades:
            problems.skip(where, "annotated twice (as two file names); the second annotation")
            continue
        if not isinstance(vertebrae, dict):
            problems.skip(where, f"expected {{vertebra label: grade}}, got {vertebrae!r}")
            continue
        case_grades = grades.setdefault(key, {})
        for label, grade in vertebrae.items():
            try:
                verse_id = labels.parse_vertebra(label)
            except ValueError as error:
                problems.skip(f"{where}, {label!r}", str(error))
                continue
            try:
                case_grades[verse_id] = (_as_grade(grade), None)
            except ValueError:
                problems.skip(f"{where}, {label!r}", f"grade {grade!r} is not a Genant grade 0-3")
    return grades


def convert_original(source: Path, dataset_id: int = DEFAULT_DATASET_ID, drop_cervical: bool = False,
                     overwrite: bool = False, raw_root: Path | None = None, verify: bool = True,
                     progress: bool = True, tree: InputTree | None = None):
    """original_dataset(.zip) -> raw_root/DatasetXXX_FaintFeatures. Returns (folder, written cases, problems)."""
    tree = tree or InputTree(source)
    final_folder = output_folder(Path(raw_root) if raw_root else paths.nnUNet_raw, dataset_id, DATASET_NAME)
    if final_folder.exists() and any(final_folder.iterdir()) and not overwrite:
        raise ConfigError(f"{final_folder} exists and is not empty (use --overwrite to replace it)")
    problems = ProblemLog()
    annotations = [n for n in tree.files if PurePosixPath(n).name.lower() in ("annotation.yaml", "annotation.yml")]
    if len(annotations) != 1:
        raise InputError(f"{tree.path}: expected one annotation.yaml, found {len(annotations)}")
    cases, known = find_original_cases(tree, problems)
    if not cases:
        raise InputError(f"{tree.path}: no CT images (*.nii.gz) found")
    grades = read_annotation(tree, annotations[0], cases, known, problems)
    sources = []
    for key, (ct_member, mask_member) in cases.items():
        if mask_member is None:
            problems.skip(f"case {key}", f"{tree.describe(ct_member)}: no vertebra mask (expected seg/{key}.nii.gz "
                                         f"or {key}_seg.nii.gz)")
            continue
        not_graded = {v: "cervical (--drop_cervical)" for v in CERVICAL_VERSE_IDS} if drop_cervical else {}
        if key not in grades:
            not_graded[None] = "CT not in annotation.yaml"
        sources.append(SourceCase(
            case_id=safe_case_id(key), subject=key, split="Tr", description=tree.describe(ct_member),
            files=lambda c=ct_member, m=mask_member: tree.local(c, m), grades=grades.get(key, {}),
            not_graded=not_graded))
    written = build_raw_dataset(
        final_folder, sources, problems, overwrite=overwrite, verify=verify, progress=progress,
        description="Faint-Features dataset (Wei et al. 2022, CC BY-SA 4.0), converted by vfscreen",
        dataset_json_extra={"source": "Faint-Features original_dataset", "drop_cervical_grades": drop_cervical},
        licence="CC BY-SA 4.0", reference="Wei et al., Faint Features Tell, BIBM 2022; "
                                          "https://github.com/wxwxwwxxx/VertebralFractureGrading")
    return final_folder, written, problems


# ------------------------------------------------------------------------------------------ processed patches
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


def build_parser() -> argparse.ArgumentParser:
    parser = converter_parser(
        "Dataset503_FaintFeatures.py",
        "Convert the Faint-Features dataset: original_dataset(.zip) -> nnUNet_raw/Dataset503_FaintFeatures;"
        " processed_dataset(.zip) (patches + file lists) -> grader crops and folds in "
        "nnUNet_preprocessed/Dataset504_FaintFeaturesPatches.",
        None, "dataset id (default 503 for the original dataset, 504 for the patches)",
        "original dataset: do not grade C1-C7 (they stay in the masks)")
    parser.add_argument("-i", "--input", required=True, type=Path,
                        help="original_dataset.zip or processed_dataset.zip, or the folder it unzips to")
    parser.add_argument("--patch_size", "--patch-size", type=int, default=128,
                        help="patches: crop size (cube, voxels) when no --crop_plan is given (default 128)")
    parser.add_argument("--plans_from", "--plans-from", metavar="DATASET_OR_PLANS_JSON",
                        help="patches: crop with the grader crop plan of this planned dataset (id/name) or "
                             "vfscreenPlans.json, and copy those plans to the patch dataset so that the grader can "
                             "be trained on it (vfscreen_train -d 504 --stage grader)")
    parser.add_argument("--crop_plan", "--crop-plan", type=Path,
                        help="patches: a JSON crop plan (grader.crop) to crop with (no plans are written)")
    return parser


@command(build_parser)
def main(args: argparse.Namespace) -> int:
    if args.patch_size <= 0:
        raise ConfigError(f"--patch_size {args.patch_size} must be > 0")
    if args.plans_from and args.crop_plan:
        raise ConfigError("give either --plans_from or --crop_plan, not both")
    tree = InputTree(args.input)
    if any(PurePosixPath(n).name.lower() in ("annotation.yaml", "annotation.yml") for n in tree.files):
        folder, written, problems = convert_original(
            args.input, args.dataset_id or DEFAULT_DATASET_ID, args.drop_cervical, args.overwrite, tree=tree)
        print(summary_text(folder, written, problems))
    elif is_patch_layout(tree):
        folder, table, folds, problems = convert_patches(
            args.input, args.dataset_id or DEFAULT_PATCH_DATASET_ID, args.crop_plan, args.patch_size,
            args.overwrite, tree=tree, plans_from=args.plans_from)
        print(patch_summary_text(folder, table, folds, problems))
        if args.plans_from is None:
            print("  no vfscreenPlans.json written: to train the grader on these crops, convert with --plans_from "
                  "<a planned dataset> (e.g. 503 after vfscreen_plan_and_preprocess -d 503)")
    else:
        raise ConfigError(f"{args.input}: neither the original Faint-Features layout (CTs, masks, annotation.yaml) "
                          "nor the processed one (img/, seg/, train_file_list.<tag>.yaml, test_file_list.<tag>.yaml)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
