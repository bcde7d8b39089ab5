"""``vfscreen_demo``: the whole pipeline on the synthetic Dataset501, from nothing to an evaluated test set.

    vfscreen_demo                  # or: python -m vfscreen.demo

Stages (each is skipped, or continued, when an earlier run finished it):
  1. generate   nnUNet_raw/Dataset501_SyntheticSpine (demo preset)        skipped when the dataset exists
  2. plan       vfscreen_plan_and_preprocess -d 501 --device cpu --preset cpu_demo
                                                                           plans reused, preprocessing incremental
  3. segment    nnU-Net training of fold 0 (CPU plan)                      skipped at checkpoint_final.pth,
                                                                           continued from checkpoint_latest.pth
  4. grader     grader of fold 0 (the loss the plans chose)                same (the trainer's --c);
                then its fusion model + screening thresholds on fold 0's     refitted when the grader changed
                validation predictions (vfscreen_evaluate --cv --fit_fusion)
  5. predict    vfscreen_predict on imagesTs -> DEMO_OUTPUT                 --continue: finished cases kept
  6. evaluate   vfscreen_evaluate against labelsTs + grades.csv            always (seconds) -> DEMO_OUTPUT/metrics.json

Data go where every vfscreen command puts them: nnU-Net's folders ``nnUNet_raw`` / ``nnUNet_preprocessed`` /
``nnUNet_results`` when set, else ``$VFSCREEN_HOME/{raw,preprocessed,results}`` (``VFSCREEN_HOME`` defaults to
``./vfscreen_data``). Predictions and metrics go to ``-o`` (default ``$VFSCREEN_HOME/demo_predictions``).
A thin orchestration of the stages' Python APIs; nothing here re-implements a stage.
"""
from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from vfscreen.core.cli import CommandParser, RawDescriptionHelpFormatter, command
from vfscreen import paths
from vfscreen.core.devices import usable_cpu_count
from vfscreen.core.fusion_model import load_fusion
from vfscreen.core.model_folders import FUSION_FILE, grader_model_folder, segmentation_model_folder
from vfscreen.core.plans import grader_loss, load_plans, plans_file, segmentation_settings
from vfscreen.errors import ConfigError
from vfscreen.evaluation.cross_validation import fit_fusion_for_model
from vfscreen.evaluation.evaluate import evaluate_predictions
from vfscreen.evaluation.table import describe_method, format_result
from vfscreen.experiment_planning import cli as planning_cli
from vfscreen.inference.predict import predict
from vfscreen.phantom.generator import generate_dataset
from vfscreen.training.grader.trainer import prepare_grader_training, train_grader
from vfscreen.training.segmentation import train_segmentation
from vfscreen.utils.atomic import atomic_write_json

DATASET_ID = 501
DATASET_NAME = "Dataset501_SyntheticSpine"
CONFIGURATION = "3d"
FOLD = 0
PLANNING_PRESET = "cpu_demo"
PHANTOM_PRESET = "demo"
DEFAULT_BOOTSTRAP = 200


def default_output_folder() -> Path:
    return Path(os.environ.get("VFSCREEN_HOME", "vfscreen_data")).expanduser().resolve() / "demo_predictions"


@dataclass
class StageTiming:
    name: str
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # user + system time of this process and its finished children
    status: str = "done"  # "done" | "skipped" | "continued" | "reused"


@dataclass
class DemoRun:
    output_folder: Path
    num_threads: int
    bootstrap: int
    timings: list[StageTiming] = field(default_factory=list)

    @property
    def raw_folder(self) -> Path:
        return paths.nnUNet_raw / DATASET_NAME


def cpu_seconds() -> float:
    """CPU time used so far by this process and its reaped children (contention-independent, unlike wall time)."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _header(index: int, title: str) -> None:
    print(f"\n=== vfscreen_demo [{index}/6] {title} ===", flush=True)


# ------------------------------------------------------------------------------------------------------ the stages
def stage_generate(run: DemoRun) -> str:
    if (run.raw_folder / "dataset.json").is_file():  # the generator writes the folder atomically: present = complete
        print(f"{run.raw_folder} exists; reusing it")
        return "skipped"
    generate_dataset(paths.nnUNet_raw, seed=0, preset=PHANTOM_PRESET, num_processes=run.num_threads,
                     dataset_id=DATASET_ID)
    print(f"wrote {run.raw_folder}")
    return "done"


def stage_plan(run: DemoRun) -> str:
    """The planner's own CLI logic: existing plans are reused, nnU-Net preprocessing and crops are incremental."""
    reused = plans_file(DATASET_NAME).is_file()
    planning_cli.run(["-d", str(DATASET_ID), "--device", "cpu", "--preset", PLANNING_PRESET,
                      "-np", str(run.num_threads)])
    plans = load_demo_plans()
    if plans.get("preset") != PLANNING_PRESET:
        print(f"vfscreen_demo: note: the existing plans were made with preset {plans.get('preset')!r}, not "
              f"{PLANNING_PRESET!r}; timings may differ (vfscreen_plan_and_preprocess -d {DATASET_ID} --preset "
              f"{PLANNING_PRESET} --overwrite_plans re-plans)")
    return "reused" if reused else "done"


def load_demo_plans() -> dict:
    return load_plans(DATASET_NAME)


def segmentation_fold_folder(plans: dict) -> Path:
    return segmentation_model_folder(DATASET_NAME, segmentation_settings(plans, CONFIGURATION).section) / f"fold_{FOLD}"


def stage_segmentation(run: DemoRun) -> str:
    plans = load_demo_plans()
    folder = segmentation_fold_folder(plans)
    if (folder / "checkpoint_final.pth").is_file():
        print(f"segmentation model {folder} is trained; reusing it")
        return "skipped"
    continuing = (folder / "checkpoint_latest.pth").is_file()
    segmentation = segmentation_settings(plans, CONFIGURATION).section
    print(f"nnU-Net {segmentation['nnunet_configuration']}, fold {FOLD}: {segmentation['num_epochs']} epochs x "
          f"{segmentation['iterations_per_epoch']} iterations" + (" (continuing)" if continuing else ""))

    train_segmentation(DATASET_NAME, plans, CONFIGURATION, FOLD, device="cpu", continue_training=continuing)
    return "continued" if continuing else "done"


def stage_grader(run: DemoRun) -> str:
    plans = load_demo_plans()
    setup = prepare_grader_training(DATASET_NAME, CONFIGURATION, FOLD, plans, None, "cpu")
    if (setup.fold_folder / "checkpoint_final.pth").is_file():
        print(f"grader {setup.fold_folder} is trained; reusing it")
        status = "skipped"
    else:
        continuing = (setup.fold_folder / "checkpoint_latest.pth").is_file()
        train_grader(setup, continue_training=True)  # --c: resumes checkpoint_latest.pth, else starts afresh
        status = "continued" if continuing else "done"
    fit_screening_thresholds(plans, setup.fold_folder.parent, refit=status != "skipped")
    return status


def fit_screening_thresholds(plans: dict, grader_folder: Path, refit: bool) -> None:
    """The fusion model and Youden thresholds on fold 0's validation predictions (vfscreen_evaluate --cv
    --fit_fusion): prediction flags vertebrae at this operating point instead of argmax
    (vfscreen.inference.screening)."""

    path = grader_folder / FUSION_FILE
    if refit or not path.is_file():
        path.unlink(missing_ok=True)  # a stale model must not outlive the grader it was fitted for
        try:
            path = fit_fusion_for_model(DATASET_NAME, CONFIGURATION, folds=[FOLD], progress=False,
                                        loss=grader_loss(plans, CONFIGURATION))
        except ConfigError as error:  # e.g. one class only among the validation vertebrae
            print(f"no screening thresholds ({error}); prediction flags vertebrae by argmax grade")
            return
    thresholds = load_fusion(path)["thresholds"]
    print(f"screening thresholds from fold {FOLD}'s validation predictions (Youden's J): fused P >= "
          f"{thresholds['fused']:.3f}, grader P >= {thresholds['grader']:.3f} -> {path}")


def stage_predict(run: DemoRun) -> str:
    reuse = not predictions_are_stale(run)
    if not reuse:
        print(f"a model is newer than the predictions in {run.output_folder}: predicting every case again")
    table = predict(run.raw_folder / "imagesTs", run.output_folder, dataset=DATASET_ID, configuration=CONFIGURATION,
                    folds=[FOLD], device="cpu", continue_prediction=reuse, num_threads=run.num_threads)
    finished, skipped, errors = table.attrs["finished"], table.attrs["skipped"], table.attrs["errors"]
    print(f"{len(finished)} case(s) predicted, {len(skipped)} already complete, {len(errors)} failed "
          f"-> {run.output_folder}")
    for error in errors:
        print(f"  {error['case_id']}: {error['error']}")
    if not finished and not errors:
        return "skipped"
    return "continued" if skipped else "done"


def predictions_are_stale(run: DemoRun) -> bool:
    """True when a fold-0 model was (re)trained after the last prediction run (its summary.csv)."""
    summary = run.output_folder / "summary.csv"
    if not summary.is_file():
        return False
    plans = load_demo_plans()
    checkpoints = [segmentation_fold_folder(plans) / "checkpoint_final.pth", vfscreen_grader_final(plans)]
    newest = max((c.stat().st_mtime for c in checkpoints if c.is_file()), default=0.0)
    return newest > summary.stat().st_mtime


def vfscreen_grader_final(plans: dict) -> Path:
    return grader_model_folder(DATASET_NAME, CONFIGURATION, grader_loss(plans, CONFIGURATION),
                               plans.get("plans_name", "vfscreenPlans")) / f"fold_{FOLD}" / "checkpoint_final.pth"


def stage_evaluate(run: DemoRun) -> str:
    result = evaluate_predictions(run.raw_folder, run.output_folder, split="Ts", n_bootstrap=run.bootstrap,
                                  progress=False)
    metrics_file = run.output_folder / "metrics.json"
    atomic_write_json(metrics_file, result)
    plans = load_demo_plans()
    method = describe_method(plans, CONFIGURATION, grader_loss(plans, CONFIGURATION))
    print("Matched by name (VerSe identification: same label, centroids within 20 mm) - the primary result:")
    print(format_result(result, method, dataset_label=f"{DATASET_NAME} imagesTs"))
    # naming errors hide how well vertebrae are found and graded: the same outputs, matched by position alone
    by_position = evaluate_predictions(run.raw_folder, run.output_folder, split="Ts", n_bootstrap=run.bootstrap,
                                       progress=False, matching="position")
    position_file = run.output_folder / "metrics_position_matching.json"
    atomic_write_json(position_file, by_position)
    print("\nMatched by position (nearest centroids within 20 mm, names ignored) - finding and grading without naming:")
    print(format_result(by_position, method, dataset_label=f"{DATASET_NAME} imagesTs"))
    print(f"\nmetrics: {metrics_file}, {position_file}")
    reports = sorted(run.output_folder.glob("*_report.png"))
    print(f"report images ({len(reports)}):")
    for report in reports:
        print(f"  {report}")
    return "done"


STAGES = (("generate the synthetic dataset", stage_generate),
          ("plan and preprocess", stage_plan),
          ("train segmentation (nnU-Net, fold 0)", stage_segmentation),
          ("train the grader (fold 0, loss from the plans)", stage_grader),
          ("predict the held-out test cases", stage_predict),
          ("evaluate against the ground truth", stage_evaluate))


def run_demo(output_folder: Path, num_threads: int, bootstrap: int = DEFAULT_BOOTSTRAP) -> DemoRun:
    import torch

    torch.set_num_threads(num_threads)
    run = DemoRun(Path(output_folder).resolve(), num_threads, bootstrap)
    print(f"vfscreen_demo: nnUNet_raw {paths.nnUNet_raw}, nnUNet_preprocessed {paths.nnUNet_preprocessed}, "
          f"nnUNet_results {paths.nnUNet_results}; predictions in {run.output_folder}; {num_threads} CPU thread(s)")
    start_all, start_cpu_all = time.perf_counter(), cpu_seconds()
    for index, (title, stage) in enumerate(STAGES, start=1):
        _header(index, title)
        start, start_cpu = time.perf_counter(), cpu_seconds()
        status = stage(run)
        run.timings.append(StageTiming(title, time.perf_counter() - start, cpu_seconds() - start_cpu, status))
        print(f"--- {title}: {status} in {_minutes(run.timings[-1].seconds)}", flush=True)
    total, total_cpu = time.perf_counter() - start_all, cpu_seconds() - start_cpu_all
    print("\nvfscreen_demo timings (wall, CPU time of all threads and processes):")
    for timing in run.timings:
        print(f"  {timing.name:<40} {_minutes(timing.seconds):>8}  cpu {_minutes(timing.cpu_seconds):>8}  "
              f"({timing.status})")
    print(f"  {'total':<40} {_minutes(total):>8}  cpu {_minutes(total_cpu):>8}")
    return run


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}:{seconds % 60:04.1f}"


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="vfscreen_demo", description=__doc__,
                                     formatter_class=RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="folder for the test-set predictions and metrics.json "
                             "(default: $VFSCREEN_HOME/demo_predictions)")
    parser.add_argument("-np", "--num_threads", "--num-threads", type=int, default=None,
                        help="CPU threads / worker processes (default: all cores of this machine)")
    parser.add_argument("--bootstrap", type=int, default=DEFAULT_BOOTSTRAP,
                        help=f"bootstrap resamples of the evaluation's confidence intervals (default "
                             f"{DEFAULT_BOOTSTRAP}; 0 = none)")
    return parser


@command(build_parser)
def main(args: argparse.Namespace) -> int:
    num_threads = usable_cpu_count() if args.num_threads is None else args.num_threads
    if num_threads < 1:
        raise ConfigError(f"-np must be >= 1, got {num_threads}")
    if args.bootstrap < 0:
        raise ConfigError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    run_demo(args.output or default_output_folder(), num_threads, args.bootstrap)
    return 0


if __name__ == "__main__":
    main()
