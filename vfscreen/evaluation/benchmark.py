"""``vfscreen_benchmark ablation -d 501 -f 0 1 2 3 4``: SupCon vs cross-entropy, fairly (see
vfscreen.evaluation.ablation); ``... curves -d 501 -f 0``: both losses as the step budget grows (see
vfscreen.evaluation.curves); ``... morphometry -d 501``: morphometry vs the phantom's exact heights
(see vfscreen.evaluation.morphometry_benchmark); ``... naming -d 501``: what each piece of the naming adds to
identification (see vfscreen.evaluation.naming_benchmark); ``... speed -i INPUT``: prediction speed, see vfscreen.evaluation.speed;
``... speed --untrained_preset NAME``: the speed of a plan without a trained model, see vfscreen.evaluation.untrained.

Each writes its JSON atomically and prints its table (``--markdown``: the same rows as a README table).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from vfscreen.core.cli import CommandParser, command
from vfscreen.core.devices import DEVICE_TYPES
from vfscreen.core.plans import CONFIGURATION, PLANS_NAME
from vfscreen.dataset import resolve_dataset_name
from vfscreen.errors import ConfigError
from vfscreen.evaluation.ablation import VARIANTS, format_ablation, run_ablation, trained_folds, variant_folder
from vfscreen.evaluation.bootstrap import DEFAULT_SEED
from vfscreen.evaluation.curves import DEFAULT_STEPS, format_curves, run_curves, write_curves
from vfscreen.evaluation.morphometry_benchmark import (format_example, format_morphometry, run_example_comparison,
                                                        run_morphometry_benchmark)
from vfscreen.evaluation.naming_benchmark import format_naming, run_naming_benchmark
from vfscreen.evaluation.size_sweep import format_size_sweep, parse_size, run_size_sweep
from vfscreen.evaluation.speed import format_speed, machine_description, run_speed
from vfscreen.evaluation.untrained import DEFAULT_FOLDS, run_untrained_speed
from vfscreen.phantom import field_of_view
from vfscreen.utils.atomic import atomic_write_json

DEFAULT_ABLATION_RESAMPLES = 1000
QUICK_RESAMPLES = 100


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="vfscreen_benchmark", description="vfscreen benchmarks")
    commands = parser.add_subparsers(dest="command", required=True)
    ablation = commands.add_parser("ablation", help="SupCon (SGD) vs CE (SGD) vs CE (Adam), head and probe readouts")
    ablation.add_argument("-d", "--dataset", required=True)
    ablation.add_argument("-c", "--configuration", default=CONFIGURATION, choices=(CONFIGURATION,))
    ablation.add_argument("-p", "--plans", default=PLANS_NAME)
    ablation.add_argument("-f", "--folds", nargs="+", type=int, default=None,
                          help="folds (default: 0-4; with --no_train: those every grader has)")
    ablation.add_argument("--quick", action="store_true", help="smoke test: fold 0, 100 bootstrap resamples")
    ablation.add_argument("--no_train", "--no-train", action="store_true", help="only evaluate folds trained already")
    ablation.add_argument("--diagnostics_at_steps", "--diagnostics-at-steps", nargs="+", type=int, default=None,
                          help="also record the curves of every grader at these steps (training unchanged; read "
                               "them with: curves --no_train --plans_tag ablation)")
    ablation.add_argument("-device", "--device", choices=DEVICE_TYPES, default=None)
    ablation.add_argument("--bootstrap", type=int, default=None)
    ablation.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ablation.add_argument("-o", "--output", help="JSON to write (default: ablation.json in the SupCon (SGD) model "
                          "folder)")
    ablation.add_argument("--markdown", action="store_true", help="also print the table for the README")
    curves = commands.add_parser("curves", help="SupCon vs cross-entropy as the step budget grows (one fold)")
    curves.add_argument("-d", "--dataset", required=True)
    curves.add_argument("-c", "--configuration", default=CONFIGURATION, choices=(CONFIGURATION,))
    curves.add_argument("-f", "--fold", type=int, default=0)
    curves.add_argument("--steps", nargs="+", type=int, default=None,
                        help="budgets in SGD steps (default 100 200 400 800 1600)")
    curves.add_argument("--grader_override", "--grader-override", metavar="JSON", default=None,
                        help="grader plan values changed for both losses (a change tried against the curves)")
    curves.add_argument("--tag", default="", help="letters/digits naming this curves run (default: none)")
    curves.add_argument("--plans_tag", "--plans-tag", default=None,
                        help="the models' plans tag (default curves<TAG>; 'ablation': the ablation's SGD graders)")
    curves.add_argument("--losses", nargs="+", choices=("supcon", "ce"), default=["supcon", "ce"],
                        help="losses to train and show (default both)")
    curves.add_argument("--no_train", "--no-train", action="store_true", help="only read curves trained already")
    curves.add_argument("-device", "--device", choices=DEVICE_TYPES, default=None)
    curves.add_argument("-o", "--output", default=".", help="folder for curves.json and curves.png (default .)")
    curves.add_argument("--markdown", action="store_true", help="also print the table for the README")
    morphometry = commands.add_parser("morphometry", help="morphometry vs the phantom's exact heights, on ground-truth "
                                      "masks and on the same masks degraded to a coarse grid")
    morphometry.add_argument("-d", "--dataset", default="501")
    morphometry.add_argument("-n", "--num_cases", "--num-cases", type=int, default=20,
                             help="first N training cases (default 20)")
    morphometry.add_argument("--coarse_mm", "--coarse-mm", type=float, default=3.0,
                             help="degraded grid spacing (default 3)")
    morphometry.add_argument("--example", nargs=2, metavar=("CT", "MASK"), default=None,
                             help="instead: both tools' heights on one real CT with its vertebra mask, side by side "
                                  "(no ground truth)")
    morphometry.add_argument("--no_totalsegmentator", "--no-totalsegmentator", action="store_true",
                             help="do not run TotalSegmentator's height measurement side by side")
    morphometry.add_argument("-o", "--output", default="morphometry.json", help="JSON to write")
    morphometry.add_argument("--markdown", action="store_true", help="also print the table for the README")
    naming = commands.add_parser("naming", help="identification of the trained segmentation's vertebrae named with "
                                 "each piece of the naming switched on in turn (CT ribs, calibrated regions, gaps)")
    naming.add_argument("-d", "--dataset", default="501")
    naming.add_argument("--split", choices=("Ts", "Tr"), default="Ts", help="cases with reference masks (default Ts)")
    naming.add_argument("-n", "--num_cases", "--num-cases", type=int, default=None, help="first N cases (default all)")
    naming.add_argument("-f", "--folds", nargs="+", type=int, help="segmentation folds (default: those trained)")
    naming.add_argument("-device", "--device", choices=DEVICE_TYPES, default="cpu")
    naming.add_argument("-o", "--output", default="naming.json", help="JSON to write (default: ./naming.json)")
    naming.add_argument("--markdown", action="store_true", help="also print the table for the README")
    speed = commands.add_parser("speed", help="seconds per case for each stage of prediction, crops/s, peak memory")
    speed.add_argument("-i", "--input", help="input cases (as for vfscreen_predict); with --untrained_preset: "
                       "optional (default: a generated phantom), needs --labels")
    speed.add_argument("-d", "--dataset", default="501")
    speed.add_argument("-c", "--configuration", default=CONFIGURATION, choices=(CONFIGURATION,))
    speed.add_argument("-f", "--folds", nargs="+", type=int, help="folds (default: those trained)")
    speed.add_argument("-device", "--device", choices=DEVICE_TYPES, default="cpu")
    speed.add_argument("-n", "--num_cases", "--num-cases", type=int, help="time only the first N cases")
    speed.add_argument("-np", "--num_threads", "--num-threads", type=int, help="torch CPU threads")
    speed.add_argument("--saliency", action="store_true", help="include Grad-CAM")
    speed.add_argument("-o", "--output", default="speed.json", help="JSON to write (default: ./speed.json)")
    speed.add_argument("--markdown", action="store_true", help="also print the result as a README table")
    untrained = speed.add_argument_group(
        "untrained models", "time a plan without a trained model: the real planner plans generated phantoms with a "
        "plans preset, the networks get random (seeded) weights, segmentation runs on the image and every later "
        "stage on the ground-truth mask (see vfscreen.evaluation.untrained)")
    untrained.add_argument("--untrained_preset", "--untrained-preset", metavar="NAME|PATH|none",
                           help="plans preset (a name of vfscreen/presets/ or a path; 'none': the planner's defaults)")
    untrained.add_argument("--phantom_preset", "--phantom-preset", default="full",
                           help="phantom preset planned and timed (default full)")
    untrained.add_argument("--slice_thickness_mm", "--slice-thickness-mm", type=float, default=1.5,
                           help="slice thickness of the timed phantom (default 1.5)")
    untrained.add_argument("--field_of_view", "--field-of-view", default="thoracolumbar",
                           help="thoracolumbar | thoracic | cervicothoracic (default thoracolumbar)")
    untrained.add_argument("--planning_cases", "--planning-cases", type=int, default=8,
                           help="phantoms the planner sees (default 8)")
    untrained.add_argument("--labels", help="ground-truth masks (nnU-Net class ids) of -i: a file or a folder of "
                           "<case>.nii.gz")
    untrained.add_argument("--tile_step_size", "--tile-step-size", type=float, default=0.5,
                           help="nnU-Net sliding window step (0.5)")
    untrained.add_argument("--disable_tta", "--disable-tta", dest="disable_tta", action="store_true", help="no mirroring")
    untrained.add_argument("--seed", type=int, default=0, help="phantom and weight seed (default 0)")
    untrained.add_argument("--work_dir", "--work-dir",
                           help="keep the planning data, phantom and models here (default: temporary)")
    sweep = speed.add_argument_group(
        "size sweep", "input size -> seconds and peak memory per stage, each size predicted by a fresh process on a "
        "generated 0.8 x 0.8 x 1.0 mm scan (see vfscreen.evaluation.size_sweep)")
    sweep.add_argument("--size_sweep", "--size-sweep", nargs="+", metavar="XxYxZ",
                       help="sizes in voxels, e.g. 512x512x100 512x512x400")
    sweep.add_argument("--sweep_content", "--sweep-content", choices=("spine", "noise"), default="spine",
                       help="a phantom spine in a body (default) or noise with a bright column")
    sweep.add_argument("--memory_budget_gb", "--memory-budget-gb", type=float, default=None,
                       help="as for vfscreen_predict")
    return parser


def sweep_scan_maker(content: str):
    """The size sweep's scans: a phantom spine in a body (one rendered case, reused for every size) or noise with a
    bright column (vfscreen.phantom.field_of_view)."""
    if content == "noise":
        return field_of_view.noise_with_column
    if content != "spine":
        raise ConfigError(f"--sweep_content {content!r}: spine or noise")
    source = field_of_view.spine_source()
    return lambda size, spacing: field_of_view.embedded_spine(size, spacing, source)


def _report(result: dict, formatter, markdown: bool, output, what: str) -> int:
    """Print a benchmark's table (and with --markdown its README table: ``formatter(result, markdown=True)``), then
    write its JSON."""
    print(formatter(result))
    if markdown:
        print(formatter(result, markdown=True))
    atomic_write_json(output, result)
    print(f"{what} written: {output}")
    return 0


@command(build_parser)
def main(args: argparse.Namespace) -> int:
    if args.command == "speed" and args.size_sweep:
        sweep = run_size_sweep([parse_size(size) for size in args.size_sweep], sweep_scan_maker(args.sweep_content),
                               args.sweep_content, args.dataset, args.configuration, args.folds, args.device,
                               args.num_threads, memory_budget_gb=args.memory_budget_gb)
        return _report(sweep, format_size_sweep, args.markdown, args.output, "size sweep")
    if args.command == "speed":
        if args.untrained_preset is not None:
            if args.saliency:
                raise ConfigError("--saliency is not timed with --untrained_preset")
            speed = run_untrained_speed(
                None if args.untrained_preset.lower() == "none" else args.untrained_preset, args.input, args.labels,
                args.work_dir, args.phantom_preset, args.slice_thickness_mm, args.field_of_view,
                args.planning_cases, args.folds if args.folds is not None else DEFAULT_FOLDS, args.seed,
                args.device, args.num_cases, args.num_threads, args.tile_step_size, not args.disable_tta)
        elif args.input is None:
            raise ConfigError("speed needs -i INPUT (or --untrained_preset NAME to time a plan without a model)")
        else:
            speed = run_speed(args.input, args.dataset, args.configuration, args.folds, args.device, args.num_cases,
                              args.saliency, num_threads=args.num_threads)
        return _report(speed, format_speed, args.markdown, args.output, "speed")
    if args.command == "morphometry":
        if args.example:
            for path in args.example:
                if not Path(path).is_file():
                    raise ConfigError(f"--example: {path} does not exist")
            result = run_example_comparison(*args.example)
            return _report(result, format_example, args.markdown, args.output, "morphometry comparison")
        result = run_morphometry_benchmark(resolve_dataset_name(args.dataset), args.num_cases, args.coarse_mm,
                                           totalsegmentator=not args.no_totalsegmentator)
        return _report(result, format_morphometry, args.markdown, args.output, "morphometry benchmark")
    if args.command == "naming":
        result = run_naming_benchmark(resolve_dataset_name(args.dataset), args.split, args.num_cases, args.folds,
                                      args.device)
        return _report(result, format_naming, args.markdown, args.output, "naming benchmark")
    if args.command == "curves":
        if args.tag and not args.tag.isalnum():
            raise ConfigError(f"--tag {args.tag!r}: letters and digits only")
        try:
            override = json.loads(args.grader_override) if args.grader_override else None
        except json.JSONDecodeError as error:
            raise ConfigError(f"--grader_override is not valid JSON ({error})") from None
        result = run_curves(resolve_dataset_name(args.dataset), args.configuration, args.fold,
                            args.steps or DEFAULT_STEPS, override, args.tag, args.device, train=not args.no_train,
                            losses=tuple(args.losses), plans_tag=args.plans_tag)
        print(format_curves(result))
        if args.markdown:
            print(format_curves(result, markdown=True))
        for path in write_curves(result, Path(args.output)):
            print(f"curves written: {path}")
        return 0
    dataset_name = resolve_dataset_name(args.dataset)
    folds = args.folds if args.folds is not None else [0] if args.quick else None
    if folds is None:
        folds = [0, 1, 2, 3, 4] if not args.no_train else sorted(set.intersection(*(
            set(trained_folds(dataset_name, args.configuration, args.plans, v)) for v in VARIANTS)))
        if not folds:
            raise ConfigError(f"{dataset_name}: no fold has validation predictions of every ablation grader; "
                              "train them (drop --no_train)")
    n_resamples = args.bootstrap if args.bootstrap is not None else QUICK_RESAMPLES if args.quick else \
        DEFAULT_ABLATION_RESAMPLES
    ablation = run_ablation(dataset_name, args.configuration, folds, args.plans, train=not args.no_train,
                            device=args.device, n_resamples=n_resamples, seed=args.seed,
                            common_override={"diagnostics_at_steps": args.diagnostics_at_steps}
                            if args.diagnostics_at_steps else None)
    ablation["machine"] = machine_description()
    output = Path(args.output) if args.output else variant_folder(dataset_name, args.configuration, args.plans,
                                                                  "supcon_sgd") / "ablation.json"
    return _report(ablation, format_ablation, args.markdown, output, "ablation")


if __name__ == "__main__":
    main()
