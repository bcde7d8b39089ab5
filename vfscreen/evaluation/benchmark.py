"""``python -m vfscreen.evaluation.benchmark ablation -d 501 -c 3d``: the paper's ablation on our data
(``... speed -i INPUT``: prediction speed, see vfscreen.evaluation.speed; ``... speed --untrained-preset NAME``: the
speed of a plan without a trained model, see vfscreen.evaluation.untrained).

On the same folds (the plan's splits) and the same budget (the plan's grader settings), the SupCon grader (the paper)
and the cross-entropy grader (the paper's baseline) are trained where a fold has no validation predictions yet
(``vfscreen_train D C FOLD --stage grader --loss supcon|ce``; ``--no-train`` only evaluates what exists), then both are
evaluated by the cross-validation evaluation (vfscreen_evaluate --cv), next to morphometry alone and the fused score.
The SupCon - CE difference of macro-F1 and AUROC gets a *paired* 95 % bootstrap interval (the same patients drawn for
both graders in every replicate). Network (SE-ResNet vs ResNet) and optimiser variants of the paper's Table I are not
trained here: the plan fixes them (the result says so).

Writes ``ablation.json`` (default: in the SupCon grader's model folder) atomically and prints the table.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pandas as pd

from vfscreen.dataset import resolve_dataset_name
from vfscreen.errors import ConfigError, cli_entry
from vfscreen.evaluation.bootstrap import DEFAULT_SEED, bootstrap_intervals
from vfscreen.evaluation.cross_validation import evaluate_cross_validation
from vfscreen.evaluation.metrics import compute_metrics, defined, undefined
from vfscreen.evaluation.results import DEFAULT_PLANS, grader_model_folder
from vfscreen.evaluation.table import HEADER, LOSS_NAMES, describe_method, render, table_rows
from vfscreen.utils.atomic import atomic_write_json

LOSSES = ("supcon", "ce")
DEFAULT_ABLATION_RESAMPLES = 1000
QUICK_RESAMPLES = 100


def machine_description() -> dict:
    import torch

    return {"platform": platform.platform(), "python": platform.python_version(), "processor": platform.processor(),
            "cpu_model": _cpu_model(), "cpu_count": os.cpu_count(),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
            if hasattr(os, "sysconf") else None, "torch": torch.__version__, "cuda": torch.cuda.is_available(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def _cpu_model() -> str | None:
    """The CPU's model name (Linux /proc/cpuinfo; platform.processor() elsewhere)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def trained_folds(dataset_name: str, configuration: str, plans_name: str, loss: str) -> list[int]:
    folder = grader_model_folder(dataset_name, configuration, plans_name, loss)
    return sorted(int(p.parent.parent.name[len("fold_"):]) for p in folder.glob("fold_*/validation/predictions.csv")
                  if p.parent.parent.name[len("fold_"):].isdigit())


def train_missing_folds(dataset_name: str, configuration: str, folds: list[int], plans_name: str,
                        device: str | None) -> list[str]:
    """Train (grader stage) every (loss, fold) without validation predictions, fold by fold (both losses of a fold
    before the next fold: an interrupted run leaves complete pairs for --no-train); returns the commands run."""
    commands = []
    for fold in folds:
        for loss in LOSSES:
            if fold in trained_folds(dataset_name, configuration, plans_name, loss):
                continue
            command = [sys.executable, "-m", "vfscreen.training.cli", dataset_name, configuration, str(fold),
                       "--stage", "grader", "--loss", loss] + (["--device", device] if device else [])
            print(f"training: {' '.join(command[1:])}", flush=True)
            completed = subprocess.run(command, check=False)
            if completed.returncode != 0:
                raise ConfigError(f"training {loss} fold {fold} failed (exit {completed.returncode}); "
                                  f"command: {' '.join(command)}")
            commands.append(" ".join(command[1:]))
    return commands


def paired_differences(tables: dict, n_resamples: int, seed: int) -> dict:
    """SupCon - CE differences of vertebra-level macro-F1 and AUROC with paired patient-bootstrap intervals."""
    def compute(current):
        supcon, ce = (compute_metrics(current[loss])["vertebra"]["grader"] for loss in LOSSES)
        out = {}
        for name, path in (("macro_f1", ("four_grades", "macro_f1")), ("auroc", ("auroc",))):
            values = []
            for result in (supcon, ce):
                node = result
                for key in path:
                    node = node.get(key, {})
                values.append(node.get("value"))
            out[name] = defined(values[0] - values[1]) if None not in values else \
                undefined("undefined for one of the graders")
        return out

    point = compute(tables)
    intervals = bootstrap_intervals(tables, compute, n_resamples=n_resamples, seed=seed, progress=True)
    for name, leaf in point.items():
        leaf["ci95"] = intervals.get(name, {}).get("ci95")
        interval = leaf["ci95"]
        if leaf["value"] is None:
            leaf["verdict"] = leaf["reason"]
        elif interval and interval[0] > 0:
            leaf["verdict"] = "SupCon better (paired 95 % interval above 0)"
        elif interval and interval[1] < 0:
            leaf["verdict"] = "cross-entropy better (paired 95 % interval below 0)"
        else:
            leaf["verdict"] = ("SupCon ahead" if leaf["value"] > 0 else "cross-entropy ahead" if leaf["value"] < 0
                               else "tie") + " on the point estimate; the paired 95 % interval includes 0"
    return point


def run_ablation(dataset, configuration: str = "3d", folds=None, plans_name: str = DEFAULT_PLANS,
                 train: bool = True, quick: bool = False, device: str | None = None,
                 n_resamples: int | None = None, seed: int = DEFAULT_SEED) -> dict:
    dataset_name = resolve_dataset_name(dataset)
    if folds is None:
        folds = [0] if quick else None
    commands = []
    if train:
        if folds is None:
            raise ConfigError("give the folds to train (-f 0 1 2 3 4), or --no-train to evaluate what exists")
        commands = train_missing_folds(dataset_name, configuration, folds, plans_name, device)
    if folds is None:  # evaluate the folds both graders have
        folds = sorted(set(trained_folds(dataset_name, configuration, plans_name, "supcon"))
                       & set(trained_folds(dataset_name, configuration, plans_name, "ce")))
        if not folds:
            raise ConfigError(f"{dataset_name}: no fold has validation predictions of both the SupCon and the CE "
                              "grader; train them (drop --no-train)")
    n_resamples = n_resamples if n_resamples is not None else (QUICK_RESAMPLES if quick
                                                               else DEFAULT_ABLATION_RESAMPLES)
    results, tables = {}, {}
    for loss in LOSSES:
        results[loss] = evaluate_cross_validation(dataset_name, configuration, folds=folds, plans_name=plans_name,
                                                  n_bootstrap=n_resamples, seed=seed, loss=loss)
        tables[loss] = pd.DataFrame(results[loss]["vertebrae"])  # the evaluation table, one row per vertebra
    keys = [set(zip(t["case_id"], t["label"])) for t in tables.values()]
    if keys[0] != keys[1]:
        raise ConfigError("the SupCon and CE evaluations cover different vertebrae; they must share folds and data")
    return {"schema_version": 1, "kind": "vfscreen_ablation",
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["python -m vfscreen.evaluation.benchmark"] + sys.argv[1:]),
            "dataset": dataset_name, "configuration": configuration, "plans": plans_name, "folds": folds,
            "quick": quick, "machine": machine_description(), "training_commands": commands,
            "not_ablated": "network (ResNet vs SE-ResNet) and optimiser (Adam vs SGD) are fixed by the plan",
            "supcon_minus_ce": paired_differences(tables, n_resamples, seed), "results": results}


def format_ablation(ablation: dict, markdown: bool = False) -> str:
    """Table I-like rows: each grader (argmax, validation threshold), morphometry once, the fused score of each
    grader; then the paired SupCon - CE differences. ``markdown``: the same rows as a README table (loss, score,
    operating point and the metrics; network, optimiser and dataset are the same in every row)."""
    rows = _ablation_rows(ablation)
    if markdown:
        columns = [1, 4, 5] + list(range(6, len(HEADER)))
        lines = ["| " + " | ".join(HEADER[c] for c in columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
        return "\n".join(lines + [""] + _difference_lines(ablation))
    lines = [f"Ablation on {ablation['dataset']} ({ablation['configuration']}), folds {ablation['folds']}, "
             "cross-validation; 95 % patient-bootstrap intervals", render(HEADER, rows), ""]
    lines += _difference_lines(ablation)
    lines.append(f"Not ablated: {ablation['not_ablated']}")
    return "\n".join(lines)


def _difference_lines(ablation: dict) -> list[str]:
    lines = []
    for name, leaf in ablation["supcon_minus_ce"].items():
        value = "n/a" if leaf["value"] is None else f"{leaf['value']:+.3f}"
        interval = leaf.get("ci95")
        interval = f" [{interval[0]:+.3f}, {interval[1]:+.3f}]" if interval else ""
        lines.append(f"SupCon - CE, vertebra {name}: {value}{interval} -> {leaf['verdict']}")
    return lines


def _ablation_rows(ablation: dict) -> list[list]:
    rows = []
    for loss in LOSSES:
        result = ablation["results"][loss]
        method = describe_method(_fold_plans(Path(result["model_folder"])), ablation["configuration"], loss)
        for row in table_rows(result, method, ablation["dataset"]):
            score = row[4]
            if score == "morphometry" and loss != LOSSES[0]:
                continue  # morphometry does not depend on the grader
            if score == "fused":
                row = row[:1] + [f"{LOSS_NAMES[loss]} + morphometry"] + row[2:]
            rows.append(row)
    return rows


def _fold_plans(model_folder: Path) -> dict | None:
    for plans_file in sorted(model_folder.glob("fold_*/plans.json")):
        try:
            return json.loads(plans_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vfscreen_benchmark", description="vfscreen benchmarks")
    commands = parser.add_subparsers(dest="command", required=True)
    ablation = commands.add_parser("ablation", help="SupCon vs cross-entropy vs morphometry vs fused (Table I)")
    ablation.add_argument("-d", "--dataset", required=True)
    ablation.add_argument("-c", "--configuration", default="3d")
    ablation.add_argument("-p", "--plans", default=DEFAULT_PLANS)
    ablation.add_argument("-f", "--folds", nargs="+", type=int, help="folds (default: 0-4; --quick: 0)")
    ablation.add_argument("--quick", action="store_true", help="smoke test: fold 0, 100 bootstrap resamples")
    ablation.add_argument("--no-train", action="store_true", help="only evaluate folds trained already")
    ablation.add_argument("-device", "--device", choices=("cpu", "cuda", "mps"), default=None)
    ablation.add_argument("--bootstrap", type=int, default=None)
    ablation.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ablation.add_argument("-o", "--output", help="JSON to write (default: ablation.json in the SupCon model folder)")
    ablation.add_argument("--markdown", action="store_true", help="also print the table for the README")
    ablation.add_argument("--verbose", action="store_true")
    speed = commands.add_parser("speed", help="seconds per case for each stage of prediction, crops/s, peak memory")
    speed.add_argument("-i", "--input", help="input cases (as for vfscreen_predict); with --untrained-preset: "
                       "optional (default: a generated phantom), needs --labels")
    speed.add_argument("-d", "--dataset", default="501")
    speed.add_argument("-c", "--configuration", default="3d")
    speed.add_argument("-f", "--folds", nargs="+", type=int, help="folds (default: those trained)")
    speed.add_argument("-device", "--device", choices=("cpu", "cuda", "mps"), default="cpu")
    speed.add_argument("-n", "--num-cases", type=int, help="time only the first N cases")
    speed.add_argument("-np", "--num-threads", type=int, help="torch CPU threads")
    speed.add_argument("--saliency", action="store_true", help="include Grad-CAM")
    speed.add_argument("-o", "--output", default="speed.json", help="JSON to write (default: ./speed.json)")
    speed.add_argument("--markdown", action="store_true", help="also print the result as a README table")
    untrained = speed.add_argument_group(
        "untrained models", "time a plan without a trained model: the real planner plans generated phantoms with a "
        "plans preset, the networks get random (seeded) weights, segmentation runs on the image and every later "
        "stage on the ground-truth mask (see vfscreen.evaluation.untrained)")
    untrained.add_argument("--untrained-preset", metavar="NAME|PATH|none",
                           help="plans preset (plans/<name>.json or a path; 'none': the planner's defaults)")
    untrained.add_argument("--phantom-preset", default="full", help="phantom preset planned and timed (default full)")
    untrained.add_argument("--slice-thickness-mm", type=float, default=1.5,
                           help="slice thickness of the timed phantom (default 1.5)")
    untrained.add_argument("--field-of-view", default="thoracolumbar",
                           help="thoracolumbar | thoracic | cervicothoracic (default thoracolumbar)")
    untrained.add_argument("--planning-cases", type=int, default=8, help="phantoms the planner sees (default 8)")
    untrained.add_argument("--labels", help="ground-truth masks (nnU-Net class ids) of -i: a file or a folder of "
                           "<case>.nii.gz")
    untrained.add_argument("--tile-step-size", type=float, default=0.5, help="nnU-Net sliding window step (0.5)")
    untrained.add_argument("--disable-tta", action="store_true", help="no mirroring (nnU-Net's --disable_tta)")
    untrained.add_argument("--seed", type=int, default=0, help="phantom and weight seed (default 0)")
    untrained.add_argument("--work-dir", help="keep the planning data, phantom and models here (default: temporary)")
    speed.add_argument("--verbose", action="store_true")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "speed":
        from vfscreen.evaluation.speed import format_speed, format_speed_markdown, run_speed

        if args.untrained_preset is not None:
            from vfscreen.evaluation.untrained import DEFAULT_FOLDS, run_untrained_speed

            if args.saliency:
                raise ConfigError("--saliency is not timed with --untrained-preset")
            speed = run_untrained_speed(
                None if args.untrained_preset.lower() == "none" else args.untrained_preset, args.input, args.labels,
                args.work_dir, args.phantom_preset, args.slice_thickness_mm, args.field_of_view,
                args.planning_cases, args.folds if args.folds is not None else DEFAULT_FOLDS, args.seed,
                args.device, args.num_cases, args.num_threads, args.tile_step_size, not args.disable_tta)
        elif args.input is None:
            raise ConfigError("speed needs -i INPUT (or --untrained-preset NAME to time a plan without a model)")
        else:
            speed = run_speed(args.input, args.dataset, args.configuration, args.folds, args.device, args.num_cases,
                              args.saliency, num_threads=args.num_threads)
        print(format_speed(speed))
        if args.markdown:
            print(format_speed_markdown(speed))
        atomic_write_json(args.output, speed)
        print(f"speed written: {args.output}")
        return 0
    folds = args.folds if args.folds is not None else (None if args.no_train or args.quick else [0, 1, 2, 3, 4])
    ablation = run_ablation(args.dataset, args.configuration, folds, args.plans, train=not args.no_train,
                            quick=args.quick, device=args.device, n_resamples=args.bootstrap, seed=args.seed)
    print(format_ablation(ablation))
    if args.markdown:
        print(format_ablation(ablation, markdown=True))
    output = Path(args.output) if args.output else Path(ablation["results"]["supcon"]["model_folder"]) / \
        "ablation.json"
    atomic_write_json(output, ablation)
    print(f"ablation written: {output}")
    return 0


if __name__ == "__main__":
    main()
