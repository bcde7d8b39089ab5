"""``vfscreen_plan_and_preprocess -d 501``: fingerprint -> plans -> splits -> nnU-Net preprocessing -> grader crops.

Everything is validated and planned in memory first; the fingerprint, nnUNetPlans.json, vfscreenPlans.json and
splits_final.json are written (atomically) only when planning succeeded, so a bad dataset or a budget too small
leaves no partial plan behind. An existing vfscreenPlans.json (possibly edited by hand) is reused unless
``--overwrite_plans``; preprocessing is incremental (nnU-Net's data is rebuilt only when its configuration or the raw
files changed; crops are re-made per case by the crop module). ``--stage grader`` cuts only the grader crops (the
grader and the loss ablation need nothing else), ``--stage seg`` only nnU-Net's data.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import sys
from pathlib import Path

from vfscreen.core.cli import CommandParser, RawDescriptionHelpFormatter
from vfscreen import paths
from vfscreen.core.devices import usable_cpu_count
from vfscreen.core.plans import (CONFIGURATION, fingerprint_file, load_plans, planned_speed, plans_file,
                                 preprocessed_folder, read_json, save_plans, validate_plans)
from vfscreen.errors import ConfigError, InputError, cli_entry
from vfscreen.experiment_planning import budget as B
from vfscreen.experiment_planning import calibration
from vfscreen.experiment_planning import planner as P
from vfscreen.experiment_planning import schedule as S
from vfscreen.experiment_planning.fingerprint import compute_fingerprint, ensure_dataset_name, run_nnunet_extractor
from vfscreen.experiment_planning.presets import load_preset
from vfscreen.experiment_planning.splits import SPLITS_FILE_NAME, splits_from_fingerprint, write_splits
from vfscreen.preprocessing.grader_crops import preprocess_grader_crops
from vfscreen.utils.atomic import atomic_write_json

paths.export_for_nnunet()  # nnunetv2 (imported on use, below) reads its folders once, at import


def detect_device(requested: str | None, gpu_memory_gb: float | None, preset: dict | None) -> B.DeviceBudget:
    """The device to plan for: CLI flags, else the preset's device, else the device present."""
    import torch

    preset_device = (preset or {}).get("device", {})
    device_type = requested or preset_device.get("type")
    if device_type is None:
        device_type = ("cuda" if torch.cuda.is_available()
                       else "mps" if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
                       else "cpu")
    if device_type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--device {device_type!r}: choose cpu, cuda or mps")
    memory_gb = gpu_memory_gb if gpu_memory_gb is not None else preset_device.get("memory_gb")
    if memory_gb is None:
        if device_type == "cuda" and torch.cuda.is_available():
            memory_gb = torch.cuda.get_device_properties(0).total_memory / B.GB
        elif device_type == "cuda":
            raise ConfigError("--device cuda: no CUDA GPU here; give --gpu_memory_gb N to plan for another machine")
        else:  # cpu, mps: system memory (unified memory on Apple silicon)
            memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / B.GB
    if memory_gb <= 0:
        raise ConfigError(f"--gpu_memory_gb must be > 0, got {memory_gb}")
    num_threads = int(preset_device.get("num_threads") or usable_cpu_count())
    return B.DeviceBudget(device_type, float(round(memory_gb, 2)), num_threads)


def run_nnunet_planner(dataset_name: str, device: B.DeviceBudget, targets: B.PlanningTargets) -> tuple[dict, str]:
    """nnunetv2's ExperimentPlanner, in memory; plus ``3d_vfscreen`` unless the device runs stock 3d_fullres."""
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

    class _InMemoryPlanner(ExperimentPlanner):
        def save_plans(self, plans):  # vfscreen writes the file atomically, after everything is planned
            self.plans = plans

    with contextlib.redirect_stdout(io.StringIO()), _at_least_one_thread():  # nnU-Net prints every configuration
        planner = _InMemoryPlanner(dataset_name, gpu_memory_target_in_gb=8)
        nnunet_plans = planner.plan_experiment()
    if "3d_fullres" not in nnunet_plans["configurations"]:
        raise InputError(f"{dataset_name}: nnU-Net planned no 3d_fullres configuration (is the data 2D?)")
    fullres = nnunet_plans["configurations"]["3d_fullres"]
    if P.uses_stock_nnunet(device):
        return nnunet_plans, "3d_fullres"
    if device.type == "cpu":
        configuration = P.plan_segmentation_cpu(fullres, device, targets)
    else:
        with contextlib.redirect_stdout(io.StringIO()), _at_least_one_thread():
            configuration = P.plan_segmentation_small_gpu(planner, fullres, device, targets)
    nnunet_plans["configurations"][P.VFSCREEN_SEG_CONFIGURATION] = configuration
    return nnunet_plans, P.VFSCREEN_SEG_CONFIGURATION


@contextlib.contextmanager
def _at_least_one_thread():
    """nnU-Net's planner sets torch's threads to nnUNet_n_proc_DA while estimating VRAM; 0 (no data-augmentation
    workers, a valid training setting) would crash it, so planning sees at least 1."""
    previous = os.environ.get("nnUNet_n_proc_DA")
    if previous is not None and previous.strip() in ("0", ""):
        os.environ["nnUNet_n_proc_DA"] = "1"
    try:
        yield
    finally:
        if previous is not None:
            os.environ["nnUNet_n_proc_DA"] = previous


def write_nnunet_plans(dataset_name: str, nnunet_plans: dict) -> Path:
    """nnUNetPlans.json, atomically; other (custom) configurations of an existing file are kept, as nnU-Net does."""
    from nnunetv2.utilities.json_export import recursive_fix_for_json_export

    path = preprocessed_folder(dataset_name) / f"{P.NNUNET_PLANS_IDENTIFIER}.json"
    if path.is_file():
        with contextlib.suppress(json.JSONDecodeError, KeyError, OSError):
            old = json.loads(path.read_text())["configurations"]
            for name, configuration in old.items():
                nnunet_plans["configurations"].setdefault(name, configuration)
    recursive_fix_for_json_export(nnunet_plans)
    atomic_write_json(path, nnunet_plans)
    return path


def plan_dataset(dataset_name: str, device: B.DeviceBudget, preset: dict | None, num_processes: int,
                 verify_integrity: bool, seed: int = P.DEFAULT_SEED, measure_speed: bool = True) -> dict:
    """Fingerprint and plan; write fingerprint, nnU-Net plans, vfscreen plans and splits. Returns the plans.

    ``measure_speed`` (CPU plans): time a few training steps of both planned networks on this machine and size
    their epochs from the measured seconds per step instead of the speed model (see calibration, schedule)."""
    targets = B.PlanningTargets.from_preset((preset or {}).get("budget"))
    fingerprint = compute_fingerprint(dataset_name, num_processes, with_nnunet_fingerprint=False,
                                      verify_dataset_integrity=verify_integrity)
    P.plan_grader(fingerprint, device, targets, P.DEFAULT_NUM_FOLDS)  # fails early on a budget too small
    fingerprint["nnunet_fingerprint"] = run_nnunet_extractor(dataset_name, num_processes)
    nnunet_plans, seg_configuration = run_nnunet_planner(dataset_name, device, targets)
    measure = measure_speed and device.type == "cpu"
    if measure and seg_configuration == P.VFSCREEN_SEG_CONFIGURATION:
        dataset_json = read_json(paths.nnUNet_raw / dataset_name / "dataset.json", "dataset.json")
        timing = calibration.measure_segmentation_step(nnunet_plans, seg_configuration, dataset_json,
                                                       device.num_threads)
        P.apply_segmentation_speed(nnunet_plans["configurations"][seg_configuration], timing, targets)
    plans = P.assemble_plans(dataset_name, fingerprint, nnunet_plans, seg_configuration, device, targets, preset,
                             seed=seed)
    if measure:
        grader = plans["configurations"][CONFIGURATION]["grader"]
        timing = calibration.measure_grader_step(grader, device.num_threads)
        fixed = (preset or {}).get("configurations", {}).get(CONFIGURATION, {}).get("grader", {})
        S.apply_grader_speed(grader, fingerprint, device, targets, plans["num_folds"], timing, fixed)
    validate_plans(plans, dataset_name, source=f"plans for {dataset_name}")
    splits = splits_from_fingerprint(fingerprint, plans["num_folds"], plans["seed"])
    folder = preprocessed_folder(dataset_name)
    atomic_write_json(fingerprint_file(dataset_name), fingerprint)
    write_nnunet_plans(dataset_name, nnunet_plans)
    write_splits(splits, folder)
    save_plans(plans)  # last: its presence means "planning finished"
    return plans


def preprocess_segmentation(dataset_name: str, plans: dict, num_processes: int) -> None:
    """nnU-Net's preprocessing of the plan's configuration (skipped when up to date)."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import preprocess_dataset
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    segmentation = plans["configurations"][CONFIGURATION]["segmentation"]
    folder = preprocessed_folder(dataset_name)
    nnunet_plans_path = folder / f"{segmentation['nnunet_plans_identifier']}.json"
    if not nnunet_plans_path.is_file():
        raise ConfigError(f"{nnunet_plans_path}: nnU-Net plans missing; re-run with --overwrite_plans")
    try:
        configuration = PlansManager(str(nnunet_plans_path)).get_configuration(segmentation["nnunet_configuration"])
    except ValueError:
        raise ConfigError(f"{nnunet_plans_path}: configuration {segmentation['nnunet_configuration']!r} missing; "
                          "re-run with --overwrite_plans") from None
    _check_segmentation_mirrors_nnunet(segmentation, configuration.configuration, nnunet_plans_path)
    output = folder / configuration.data_identifier
    stamp = _preprocessing_stamp(dataset_name, configuration.configuration)
    stamp_file = folder / f"vfscreen_preprocessed_{configuration.data_identifier}.json"  # nnU-Net's folder: data only
    if stamp_file.is_file() and output.is_dir() and json.loads(stamp_file.read_text()) == stamp:
        print(f"nnU-Net preprocessing of {segmentation['nnunet_configuration']} is up to date ({output})")
        return
    stamp_file.unlink(missing_ok=True)
    dataset_id = int(dataset_name[len("Dataset"):len("Dataset") + 3])
    with contextlib.redirect_stdout(io.StringIO()):
        preprocess_dataset(dataset_id, segmentation["nnunet_plans_identifier"],
                           configurations=[segmentation["nnunet_configuration"]],
                           num_processes=[max(1, num_processes)], verbose=False, show_progress_bar=True)
    atomic_write_json(stamp_file, stamp)


def _check_segmentation_mirrors_nnunet(segmentation: dict, configuration: dict, nnunet_plans_path: Path) -> None:
    """The segmentation network is defined by nnUNetPlans.json; vfscreenPlans.json mirrors it. A hand edit of only
    the mirror would silently not take effect, so it is refused."""
    mirrored = {"patch_size": configuration["patch_size"], "batch_size": configuration["batch_size"],
                "target_spacing_mm": configuration["spacing"],
                "features_per_stage": configuration["architecture"]["arch_kwargs"]["features_per_stage"]}
    schedule = configuration.get("vfscreen", {"iterations_per_epoch": 250, "num_epochs": 1000})  # stock: nnU-Net's
    mirrored.update({key: schedule[key] for key in ("iterations_per_epoch", "num_epochs") if key in schedule})
    for field, value in mirrored.items():
        expected = [round(float(v), 4) for v in value] if isinstance(value, list) else value
        actual = segmentation[field]
        actual = [round(float(v), 4) for v in actual] if isinstance(actual, list) else actual
        if actual != expected:
            raise ConfigError(f"field 'configurations.{CONFIGURATION}.segmentation.{field}' is {segmentation[field]} "
                              f"but {nnunet_plans_path.name} ({segmentation['nnunet_configuration']}) says {value}; "
                              f"the segmentation network is defined there: edit {nnunet_plans_path} (or re-plan "
                              "with --overwrite_plans)")


def _preprocessing_stamp(dataset_name: str, configuration: dict) -> dict:
    """What nnU-Net's preprocessed data depends on: the configuration and every raw training file's size/mtime."""
    raw = paths.nnUNet_raw / dataset_name
    files = sorted(p for sub in ("imagesTr", "labelsTr") for p in (raw / sub).glob("*.nii.gz"))
    state = [(p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in files]
    text = json.dumps({"configuration": configuration, "files": state}, sort_keys=True, default=str)
    return {"hash": hashlib.sha256(text.encode()).hexdigest()}


def preprocess_crops(dataset_name: str, plans: dict, num_processes: int) -> Path | None:
    return preprocess_grader_crops(dataset_name, plans, CONFIGURATION, num_processes=max(1, num_processes))


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="vfscreen_plan_and_preprocess", description=__doc__,
                           formatter_class=RawDescriptionHelpFormatter)
    parser.add_argument("-d", "--dataset", action="append", required=True,
                        help="dataset id or name (501 or Dataset501_SyntheticSpine); repeatable")
    parser.add_argument("--device", choices=("cpu", "cuda", "mps"), default=None,
                        help="device training will run on (default: the one present)")
    parser.add_argument("--gpu_memory_gb", "--gpu-memory-gb", type=float, default=None,
                        help="memory of that device in GB (default: detected)")
    parser.add_argument("--preset", default=None, help="preset name (vfscreen/presets/<name>.json) or path to a preset JSON")
    parser.add_argument("-np", "--num_processes", "--num-processes", type=int, default=min(4, os.cpu_count() or 1),
                        help="worker processes for fingerprinting and preprocessing")
    parser.add_argument("--verify_dataset_integrity", action="store_true",
                        help="also run nnU-Net's dataset integrity check")
    parser.add_argument("--no_preprocess", "--no-preprocess", action="store_true",
                        help="only fingerprint, plan and split")
    parser.add_argument("--stage", choices=("seg", "grader", "both"), default="both",
                        help="what to preprocess: seg = nnU-Net's data only, grader = the grader crops only (all a "
                             "grader training or the loss ablation needs), both (default)")
    parser.add_argument("--overwrite_plans", "--overwrite-plans", action="store_true",
                        help="re-plan even if vfscreenPlans.json exists (default: reuse it, e.g. after hand edits)")
    parser.add_argument("--seed", type=int, default=P.DEFAULT_SEED, help="seed of the splits")
    parser.add_argument("--no_measure_speed", "--no-measure-speed", dest="measure_speed", action="store_false",
                        default=os.environ.get("VFSCREEN_MEASURE_SPEED", "1") != "0",
                        help="CPU plans: size the training epochs from the speed model only (deterministic plans, "
                             "tests; also VFSCREEN_MEASURE_SPEED=0). Default: time a few seconds of real training "
                             "steps of both planned networks on this machine and size the epochs from them")
    return parser


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.num_processes < 1:
        raise ConfigError(f"-np must be >= 1, got {args.num_processes}")
    preset = load_preset(args.preset) if args.preset else None
    dataset_names = [ensure_dataset_name(d) for d in args.dataset]
    for dataset_name in dataset_names:
        existing = plans_file(dataset_name)
        if existing.is_file() and not args.overwrite_plans:
            plans = load_plans(dataset_name)
            print(f"{dataset_name}: using existing {existing} (--overwrite_plans to re-plan)")
            if not (preprocessed_folder(dataset_name) / SPLITS_FILE_NAME).is_file():
                raise ConfigError(f"{preprocessed_folder(dataset_name) / SPLITS_FILE_NAME}: splits missing; re-run "
                                  "with --overwrite_plans")
        else:
            device = detect_device(args.device, args.gpu_memory_gb, preset)
            print(f"{dataset_name}: planning for {device.type} ({device.memory_gb} GB, {device.num_threads} threads)"
                  + (f", preset {preset['name']}" if preset else ""))
            plans = plan_dataset(dataset_name, device, preset, args.num_processes, args.verify_dataset_integrity,
                                 seed=args.seed, measure_speed=args.measure_speed)
        _print_summary(dataset_name, plans)
        if args.no_preprocess:
            continue
        if args.stage in ("seg", "both"):
            preprocess_segmentation(dataset_name, plans, args.num_processes)
        crops = preprocess_crops(dataset_name, plans, args.num_processes) if args.stage in ("grader", "both") else None
        print(f"{dataset_name}: done (plans {plans_file(dataset_name)}"
              + (f", crops {crops})" if crops is not None else ", grader crops not made: --stage seg)"))
    return 0


def _print_summary(dataset_name: str, plans: dict) -> None:
    seg = plans["configurations"][CONFIGURATION]["segmentation"]
    grader = plans["configurations"][CONFIGURATION]["grader"]
    print(f"{dataset_name}: segmentation {seg['nnunet_configuration']} ({seg['trainer']}): spacing "
          f"{seg['target_spacing_mm']} mm, patch {seg['patch_size']}, batch {seg['batch_size']}, features "
          f"{seg['features_per_stage']}, {seg['num_epochs']} epochs x {seg['iterations_per_epoch']} iterations, "
          f"~{seg['estimated_memory_gb']:.2f} GB")
    network = grader["network"]
    print(f"{dataset_name}: grader {network.get('name', network['block'])} {network['features_per_stage']}, crops "
          f"{grader['crop']['patch_size']} ({grader['crop']['mode']}, {grader['crop']['spacing_mm']} mm), "
          f"{grader['sampler']['samples_per_class']} per grade x {grader['sampler']['views']} views, "
          f"{grader['num_epochs']} epochs, ~{grader['estimated_memory_gb']:.2f} GB")
    for stage in ("segmentation", "grader"):
        speed = planned_speed(plans, stage)
        if speed.modelled_seconds_per_step is None:
            continue
        measured = ("" if speed.measured_seconds_per_step is None else
                    f"measured {speed.measured_seconds_per_step:.3f} s (x{speed.measured_over_modelled:.2f} the "
                    f"model, median of {speed.measured_steps} steps at {speed.measured_threads} threads), ")
        sized = "measured" if speed.source == "measured" else "modelled"
        print(f"{dataset_name}: {stage} epochs sized from the {sized} speed: {measured}modelled "
              f"{speed.modelled_seconds_per_step:.3f} s per training step; planned ~{speed.planned_minutes:.1f} min"
              + (f" ({speed.note})" if speed.note else ""))


@cli_entry
def main(argv: list[str] | None = None) -> int:
    return run(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
