"""``vfscreen_train DATASET CONFIG FOLD``: the nnU-Net segmentation stage and the SupCon grader of one fold.

    vfscreen_train 501 3d fold0                       # segmentation (unless a model exists), then the grader
    vfscreen_train 501 3d 0 --stage grader --loss ce  # the paper's cross-entropy baseline grader only
    vfscreen_train 501 3d 0 --stage grader --c        # continue an interrupted grader training
    torchrun --nproc_per_node=2 -m vfscreen.training.cli 501 3d 0 --stage grader     # distributed data parallel
"""
from __future__ import annotations

import argparse
import os
import re
import json
from pathlib import Path

import torch

from vfscreen.core.cli import CommandParser, RawDescriptionHelpFormatter
from vfscreen.core.devices import DEVICE_TYPES, resolve_device
from vfscreen.core.model_folders import segmentation_model_folder
from vfscreen.core.plans import (CONFIGURATION, configuration_section, grader_section, load_plans,
                                 segmentation_settings, validate_plans)
from vfscreen.dataset import resolve_dataset_name
from vfscreen.errors import ConfigError, cli_entry
from vfscreen.experiment_planning.presets import deep_merge
from vfscreen.segmentation_source import check_model_folder, record_pretrained_segmentation
from vfscreen.training.grader.ddp import launched_by_torchrun
from vfscreen.training.grader.trainer import prepare_grader_training, train_grader
from vfscreen.training.segmentation import train_segmentation

STAGES = ("seg", "grader", "both")


def parse_fold(text: str):
    """'fold0' / 'fold_0' / '0' -> 0; 'all' / 'fold_all' -> 'all'."""
    match = re.fullmatch(r"(?:fold_?)?(\d+|all)", str(text).strip().lower())
    if not match:
        raise ConfigError(f"fold {text!r} is not understood (use e.g. fold0, 0 or all)")
    return "all" if match.group(1) == "all" else int(match.group(1))


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="vfscreen_train", description=__doc__,
                                     formatter_class=RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="dataset id or name, e.g. 501 or Dataset501_SyntheticSpine")
    parser.add_argument("configuration", choices=(CONFIGURATION,), help="vfscreen configuration in the plans")
    parser.add_argument("fold", help="fold0, 0, ... or all")
    parser.add_argument("--stage", choices=STAGES, default="both",
                        help="seg: nnU-Net segmentation only; grader: grader only; both (default): segmentation "
                             "unless a usable model exists, then the grader")
    parser.add_argument("--loss", choices=("supcon", "ce"), default=None,
                        help="grader loss (default: the plans'; ce = the paper's baseline, saved separately)")
    parser.add_argument("-device", "--device", choices=DEVICE_TYPES, default=None,
                        help="default: the device the plans were made for")
    parser.add_argument("--c", "--continue", dest="c", action="store_true", help="continue from the latest checkpoints")
    parser.add_argument("--pretrained_seg", "--pretrained-seg", metavar="MODEL_FOLDER", default=None,
                        help="a trained nnU-Net v2 vertebra model folder (dataset.json, plans.json, "
                             "fold_X/checkpoint_final.pth; e.g. TotalSegmentator's) instead of training segmentation: "
                             "recorded for the dataset, so every later vfscreen_predict -d DATASET segments with it")
    parser.add_argument("--npz", action="store_true", help="segmentation: also save validation softmax (nnU-Net)")
    parser.add_argument("--num_workers", "--num-workers", type=int, default=None,
                        help="grader data-augmentation worker processes (default: the plans')")
    parser.add_argument("--grader_override", "--grader-override", metavar="JSON", default=None,
                        help="grader stage: plan values to change for this run, as a JSON object merged into "
                             "configurations.<config>.grader (e.g. '{\"optimizer\": {\"name\": \"adam\"}}'); "
                             "needs --plans_tag")
    parser.add_argument("--plans_tag", "--plans-tag", default=None,
                        help="with --grader_override: the model goes to <trainer>__<plans>_<TAG>__<config>, so it "
                             "never overwrites the plans' own model")
    return parser


def apply_grader_override(plans: dict, configuration: str, override: str | None, tag: str | None) -> dict:
    """The plans with ``override`` (a JSON object) merged into the grader plan, named ``<plans_name>_<tag>``."""
    if override is None and tag is None:
        return plans
    if override is None or not tag or not re.fullmatch(r"[A-Za-z0-9]+", tag):
        raise ConfigError("--grader_override and --plans_tag go together; the tag is letters and digits only")
    try:
        values = json.loads(override)
    except json.JSONDecodeError as error:
        raise ConfigError(f"--grader_override is not valid JSON ({error})") from None
    if not isinstance(values, dict):
        raise ConfigError("--grader_override must be a JSON object")
    grader = deep_merge(grader_section(plans, configuration), values)
    plans = deep_merge(plans, {"plans_name": f"{plans.get('plans_name', 'vfscreenPlans')}_{tag}",
                               "grader_override": values})
    plans["configurations"][configuration]["grader"] = grader
    validate_plans(plans, plans.get("dataset_name"), source="plans with --grader_override")
    return plans


def _record_pretrained_segmentation(dataset_name: str, model_folder: str, fold) -> None:
    """Check the model folder (this fold, or all its folds when it lacks this one) and record it for prediction."""
    folder = Path(model_folder).expanduser().resolve()
    folds = [fold] if (folder / f"fold_{fold}" / "checkpoint_final.pth").is_file() else None
    folder, folds = check_model_folder(folder, folds)
    path = record_pretrained_segmentation(dataset_name, folder, folds)
    print(f"vfscreen: segmentation model {folder} (folds {folds}) recorded in {path}; vfscreen_predict -d "
          f"{dataset_name} segments with it; no segmentation training")


def run_segmentation_stage(dataset_name: str, configuration: str, fold, plans: dict, args, stage: str) -> None:
    segmentation_plan = segmentation_settings(plans, configuration).section
    fold_name = "fold_all" if fold == "all" else f"fold_{fold}"
    existing = segmentation_model_folder(dataset_name, segmentation_plan) / fold_name / "checkpoint_final.pth"
    if stage == "both" and existing.is_file():
        print(f"vfscreen: segmentation model {existing.parent} exists; skipping segmentation training")
        return
    if launched_by_torchrun():
        raise ConfigError("run the segmentation stage without torchrun (nnU-Net starts its own processes); "
                          "use torchrun only with --stage grader")
    train_segmentation(dataset_name, plans, configuration, fold, device=args.device, continue_training=args.c,
                       export_validation_probabilities=args.npz)


def run(argv=None) -> int:
    args = build_parser().parse_args(argv)
    dataset_name = str(resolve_dataset_name(args.dataset))  # nnunetv2 may return a numpy.str_
    fold = parse_fold(args.fold)
    plans = load_plans(dataset_name)
    configuration_section(plans, args.configuration)
    plans = apply_grader_override(plans, args.configuration, args.grader_override, args.plans_tag)
    args.device = args.device or plans.get("device", {}).get("type", "cpu")
    if args.device not in DEVICE_TYPES:
        raise ConfigError(f"unknown device {args.device!r} in the plans (use -device cpu|cuda|mps)")
    grader_setup = None
    if args.stage in ("grader", "both"):
        grader_setup = prepare_grader_training(dataset_name, args.configuration, fold, plans, args.loss,
                                               args.device, int(os.environ.get("LOCAL_RANK", "0")))
    else:
        resolve_device(args.device)
    if args.pretrained_seg:
        _record_pretrained_segmentation(dataset_name, args.pretrained_seg, fold)
    elif args.stage in ("seg", "both"):
        run_segmentation_stage(dataset_name, args.configuration, fold, plans, args, args.stage)
    if grader_setup is not None:
        if grader_setup.device.type == "cpu":
            threads = int(plans.get("device", {}).get("num_threads") or torch.get_num_threads())
            world_size = int(os.environ.get("WORLD_SIZE", "1")) if launched_by_torchrun() else 1
            torch.set_num_threads(max(1, threads // world_size))
        train_grader(grader_setup, continue_training=args.c, num_workers=args.num_workers)
    return 0


main = cli_entry(run)

if __name__ == "__main__":
    main()
