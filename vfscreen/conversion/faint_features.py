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
import sys
from pathlib import Path, PurePosixPath

from vfscreen import labels, paths
from vfscreen.conversion.common import (CERVICAL_VERSE_IDS, InputTree, ProblemLog, SourceCase, build_raw_dataset,
                                        converter_parser, nifti_stem, output_folder, safe_case_id, summary_text)
from vfscreen.conversion.faint_features_patches import (DEFAULT_PATCH_DATASET_ID, convert_patches, is_patch_layout,
                                                        patch_summary_text)
from vfscreen.conversion.yaml_input import load_yaml
from vfscreen.core.cli import command
from vfscreen.errors import ConfigError, InputError

DATASET_NAME = "FaintFeatures"
DEFAULT_DATASET_ID = 503
MASK_FOLDERS = {"seg", "segs", "segmentation", "segmentations", "mask", "masks", "msk", "label", "labels", "gt"}
MASK_SUFFIXES = ("_seg", "_msk", "_mask", "_label", "-seg")


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
