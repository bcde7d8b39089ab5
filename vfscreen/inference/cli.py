"""Screen CT scans for vertebral fractures: per vertebra its name, Genant grade, P(fracture), uncertainty and
measured heights (<case>.json, summary.csv), the labels (<case>_seg.nii.gz, input geometry) and a sagittal report
(<case>_report.png).

``vfscreen_predict`` is a thin command-line wrapper of :func:`vfscreen.inference.predict.predict`.
"""
from __future__ import annotations

import argparse

from vfscreen.core.cli import CommandParser, command
from vfscreen.core.plans import CONFIGURATION
from vfscreen.errors import EXIT_CASES_FAILED, EXIT_OK
from vfscreen.inference.predict import predict


def _mask_labels(value: str) -> str:
    if value in ("verse", "totalseg", "totalseg_v1") or value.endswith(".json"):
        return value
    raise argparse.ArgumentTypeError(f"{value!r}: use verse, totalseg, totalseg_v1 or a path to a dataset.json")


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="vfscreen_predict", description=__doc__.split("\n\n")[0],
                           verbose_help="timings and peak memory per stage, tracebacks")
    parser.add_argument("-i", dest="input", required=True,
                        help="a NIfTI file, a folder of NIfTI files (*.nii.gz, *.nii, nnU-Net's case_0000.nii.gz "
                             "naming) or DICOM series (one folder per series)")
    parser.add_argument("-o", dest="output", required=True, help="output folder (must differ from the input folder)")
    parser.add_argument("-d", dest="dataset", default="501", help="dataset id or name of the trained model [501]")
    parser.add_argument("-c", dest="configuration", default=CONFIGURATION, choices=(CONFIGURATION,),
                        help=f"configuration [{CONFIGURATION}]")
    parser.add_argument("-f", dest="folds", nargs="+", type=int, default=None,
                        help="folds of the ensemble [all trained folds]")
    parser.add_argument("-chk", dest="checkpoint", choices=("final", "best", "latest"), default="final",
                        help="checkpoint of every fold [final]")
    parser.add_argument("-device", dest="device", choices=("cpu", "cuda", "mps"), default="cpu", help="[cpu]")
    parser.add_argument("--c", "--continue", "--continue_prediction", dest="continue_prediction", action="store_true",
                        help="skip cases whose outputs are already complete")
    parser.add_argument("-num_parts", type=int, default=1, help="split the cases over this many runs [1]")
    parser.add_argument("-part_id", type=int, default=0, help="which part this run processes (0-based) [0]")
    parser.add_argument("-np", dest="num_threads", type=int, default=None,
                        help="CPU threads for the networks [torch's default]")
    parser.add_argument("--saliency", action="store_true", help="also write <case>_gradcam.nii.gz (3D Grad-CAM)")
    parser.add_argument("--save_probabilities", "--save-probabilities", dest="save_probabilities", action="store_true",
                        help="also write <case>_probabilities.npz (segmentation softmax, float16)")
    mirroring = parser.add_mutually_exclusive_group()
    mirroring.add_argument("--disable_tta", dest="use_mirroring", action="store_const", const=False, default=None,
                           help="no test-time mirroring in segmentation (nnU-Net's flag; mirroring runs the network "
                                "once per mirrored copy of every patch) [default: the plans' choice, off in CPU plans, "
                                "on in GPU plans]")
    mirroring.add_argument("--enable_tta", dest="use_mirroring", action="store_const", const=True,
                           help="test-time mirroring even where the plans turn it off")
    parser.add_argument("--masks", default=None, metavar="MASKS",
                        help="vertebra masks instead of segmentation: one file (when -i is one scan) or a folder with "
                             "<case>.nii.gz, <case>_seg.nii.gz or a TotalSegmentator per-structure folder "
                             "<case>/vertebrae_L1.nii.gz ...; cases without a mask are segmented as usual")
    parser.add_argument("--mask_labels", "--mask-labels", dest="mask_labels", default=None, metavar="CONVENTION",
                        type=_mask_labels,
                        help="label convention of --masks: verse | totalseg (TotalSegmentator v2) | totalseg_v1 | "
                             "PATH_TO_dataset.json [detected: embedded label table, dataset.json next to the masks, "
                             "then the ids]")
    parser.add_argument("--seg_model", "--seg-model", dest="seg_model", default=None, metavar="FOLDER",
                        help="a trained nnU-Net v2 model folder (dataset.json, plans.json, fold_X/"
                             "checkpoint_final.pth; e.g. a TotalSegmentator vertebra model) as the segmentation "
                             "stage; its dataset.json names the labels")
    parser.add_argument("--no_grader", "--no-grader", dest="no_grader", action="store_true",
                        help="no learned grade: morphometry, morphometric Genant grade and the report only")
    parser.add_argument("--memory_budget_gb", "--memory-budget-gb", dest="memory_budget_gb", type=float, default=None,
                        help="memory a case may use; a case that would need more fails (errors.csv) [the plans' "
                             "device memory or the machine's, whichever is smaller, minus headroom]")
    return parser


@command(build_parser)
def main(arguments: argparse.Namespace) -> int:
    table = predict(arguments.input, arguments.output, dataset=arguments.dataset,
                    configuration=arguments.configuration, folds=arguments.folds, device=arguments.device,
                    continue_prediction=arguments.continue_prediction, num_parts=arguments.num_parts,
                    part_id=arguments.part_id, num_threads=arguments.num_threads, saliency=arguments.saliency,
                    save_probabilities=arguments.save_probabilities, checkpoint=arguments.checkpoint,
                    verbose=arguments.verbose, use_mirroring=arguments.use_mirroring, masks=arguments.masks,
                    mask_labels=arguments.mask_labels, seg_model=arguments.seg_model, no_grader=arguments.no_grader,
                    memory_budget_gb=arguments.memory_budget_gb)
    finished, skipped, errors = table.attrs["finished"], table.attrs["skipped"], table.attrs["errors"]
    print(f"vfscreen_predict: {len(finished)} case(s) predicted, {len(skipped)} skipped (complete), "
          f"{len(errors)} failed -> {arguments.output}")
    if errors:
        print(f"vfscreen_predict: failed cases are listed in {arguments.output}/errors.csv")
        return EXIT_CASES_FAILED
    return EXIT_OK


if __name__ == "__main__":
    main()
