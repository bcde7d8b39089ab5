"""``vfscreen_evaluate``: metrics of prediction outputs against a reference, or of the grader's cross-validation.

    vfscreen_evaluate -ref REFERENCE -pred PREDICT_OUTPUT [-o metrics.json] [-d 501 -c 3d | --fusion fusion.json]
    vfscreen_evaluate -d 501 -c 3d --cv [-f 0 1 2 3 4] [--fit_fusion] [-o cv_metrics.json]

Prints a table laid out like Table I of the paper and writes the metrics as JSON (default: PREDICT_OUTPUT/metrics.json,
or cv_metrics.json in the grader model folder). Exit codes: see vfscreen.errors.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vfscreen.core.cli import CommandParser, RawDescriptionHelpFormatter, command
from vfscreen.core.model_folders import grader_fold_plans, grader_model_folder, loss_of_grader_folder
from vfscreen.core.plans import CONFIGURATION, PLANS_NAME
from vfscreen.dataset import resolve_dataset_name
from vfscreen.errors import ConfigError
from vfscreen.evaluation import evaluate
from vfscreen.evaluation.bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED
from vfscreen.evaluation.matching import MAX_CENTROID_DISTANCE_MM
from vfscreen.evaluation.results import fusion_path
from vfscreen.evaluation.table import describe_method, format_result
from vfscreen.utils.atomic import atomic_write_json


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="vfscreen_evaluate", description=__doc__.split("\n\n")[0].replace("``", ""),
                                     formatter_class=RawDescriptionHelpFormatter,
                                     epilog="REFERENCE: a raw dataset folder (labelsTs/ or labelsTr/ + grades.csv) or "
                                            "a folder of masks <case>.nii.gz with a grades.csv (VerSe ids unless a "
                                            "vfscreen dataset.json says nnU-Net class ids).")
    parser.add_argument("-ref", "--reference", help="reference folder (raw dataset or label masks + grades.csv)")
    parser.add_argument("-pred", "--prediction", help="output folder of vfscreen_predict")
    parser.add_argument("-d", "--dataset", help="dataset id or name (for --cv, or to find the fusion model)")
    parser.add_argument("-c", "--configuration", default=CONFIGURATION, choices=(CONFIGURATION,),
                        help=f"configuration (default: {CONFIGURATION})")
    parser.add_argument("-p", "--plans", default=PLANS_NAME, help=f"plans name (default: {PLANS_NAME})")
    parser.add_argument("--cv", action="store_true", help="pool the grader folds' validation predictions")
    parser.add_argument("--loss", choices=("supcon", "ce"), default="supcon",
                        help="which grader (supcon: vfscreen_grader, ce: the cross-entropy baseline vfscreen_graderCE)")
    parser.add_argument("-f", "--folds", nargs="+", type=int, help="folds for --cv (default: all with predictions)")
    parser.add_argument("--fit_fusion", "--fit-fusion", action="store_true",
                        help="with --cv: fit the fusion model + validation thresholds and save fusion.json")
    parser.add_argument("--fusion", help="fusion.json giving the fused score and validation thresholds")
    parser.add_argument("--split", choices=("Tr", "Ts", "all"),
                        help="labels split of a raw dataset reference (default: Ts when present, else Tr)")
    parser.add_argument("--include_truncated", "--include-truncated", action="store_true",
                        help="count reference vertebrae marked truncated in grades.csv that were not graded as "
                             "predicted G0 (default: exclude and list them)")
    parser.add_argument("-o", "--output", help="metrics JSON to write")
    parser.add_argument("--bootstrap", type=int, default=DEFAULT_RESAMPLES,
                        help=f"bootstrap resamples of patients (default {DEFAULT_RESAMPLES}; 0 = no intervals)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"bootstrap seed (default {DEFAULT_SEED})")
    parser.add_argument("--max_distance_mm", "--max-distance-mm", type=float, default=MAX_CENTROID_DISTANCE_MM,
                        help="centroid distance for identification (default 20 mm, as VerSe)")
    parser.add_argument("--matching", choices=("label", "position"), default="label",
                        help="label: a vertebra counts when the predicted one with its name lies within the distance "
                             "(identification, the default); position: nearest centroids one-to-one, names ignored "
                             "(detection: grading without naming errors)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _plans_of_model(args, result: dict) -> dict | None:
    """The grader's plans (for the FE / Loss / Optimizer columns): from -d/-c, else from the model folder named in
    the prediction JSONs."""
    if args.dataset:
        folder = grader_model_folder(resolve_dataset_name(args.dataset), args.configuration, args.loss, args.plans)
    else:
        grader = (result.get("model") or {}).get("grader")
        folder = grader.get("folder") if isinstance(grader, dict) else None
        if not isinstance(folder, str):
            return None
    return grader_fold_plans(Path(folder))


def run(args: argparse.Namespace) -> dict:
    if args.bootstrap < 0:
        raise ConfigError(f"--bootstrap {args.bootstrap}: must be >= 0")
    progress = not args.quiet
    if args.cv:
        if not args.dataset or args.reference or args.prediction:
            raise ConfigError("--cv needs -d DATASET [-c CONFIGURATION] and no -ref/-pred")
        result = evaluate.evaluate_cross_validation(args.dataset, args.configuration, folds=args.folds,
                                                    plans_name=args.plans, n_bootstrap=args.bootstrap,
                                                    seed=args.seed, fit_fusion=args.fit_fusion, progress=progress,
                                                    loss=args.loss, include_truncated=args.include_truncated)
        output = Path(args.output) if args.output else Path(result["model_folder"]) / "cv_metrics.json"
        if result["fusion"].get("saved"):
            print(f"fusion model written: {result['fusion']['saved']}")
    else:
        if not (args.reference and args.prediction):
            raise ConfigError("give -ref REFERENCE -pred PREDICT_OUTPUT, or -d DATASET -c CONFIGURATION --cv")
        if args.fit_fusion or args.folds:
            raise ConfigError("--fit_fusion and -f belong to --cv")
        fusion = args.fusion
        if fusion is None and args.dataset:
            candidate = fusion_path(args.dataset, args.configuration, args.plans, args.loss)
            fusion = candidate if candidate.is_file() else None
            if fusion is None:
                print(f"vfscreen: note: {candidate} not found; fused score and validation thresholds unavailable",
                      file=sys.stderr)
        result = evaluate.evaluate_predictions(args.reference, args.prediction, split=args.split, fusion=fusion,
                                               n_bootstrap=args.bootstrap, seed=args.seed,
                                               max_distance_mm=args.max_distance_mm,
                                               include_truncated=args.include_truncated, progress=progress,
                                               matching=args.matching)
        output = Path(args.output) if args.output else Path(args.prediction) / "metrics.json"
    configuration = (result.get("model") or {}).get("configuration") or args.configuration
    grader = (result.get("model") or {}).get("grader")
    loss = args.loss if args.cv or args.dataset else (
        loss_of_grader_folder(grader["folder"]) if isinstance(grader, dict) and isinstance(grader.get("folder"), str)
        else None)
    print(format_result(result, describe_method(_plans_of_model(args, result), configuration, loss),
                        dataset_label=result.get("dataset") or (Path(args.reference).name if args.reference else None)))
    atomic_write_json(output, result)
    print(f"metrics written: {output}")
    return result


@command(build_parser)
def main(args: argparse.Namespace) -> int:
    run(args)
    return 0



if __name__ == "__main__":
    main()
