"""``vfscreen_generate_synthetic`` / ``dataset_conversion/Dataset501_SyntheticSpine.py``: write the synthetic
Genant spine-CT dataset into ``nnUNet_raw``."""
from __future__ import annotations

import argparse
from pathlib import Path

from vfscreen.core.cli import CommandParser, command
from vfscreen import paths
from vfscreen.errors import ConfigError
from vfscreen.phantom.acquisition import PRESETS
from vfscreen.phantom.generator import DEFAULT_PATIENT_MIX, generate_dataset


class _Parser(CommandParser):
    def error(self, message):  # one line, vfscreen's exit code 2, instead of argparse's usage dump
        raise ConfigError(f"{message} (see --help)")


def _patient_mix(text: str) -> tuple[float, ...]:
    try:
        weights = tuple(float(part) for part in text.split(":"))
    except ValueError:
        raise ConfigError(f"--patient_mix {text!r} is not four numbers like 1:3:3:3 (G0:G1:G2:G3)") from None
    if len(weights) != 4:
        raise ConfigError(f"--patient_mix {text!r} must have four weights G0:G1:G2:G3, e.g. 1:3:3:3")
    return weights


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        description="Generate the synthetic spine-CT phantom dataset with exact Genant grades "
                    "(nnUNet_raw/Dataset501_SyntheticSpine: imagesTr, labelsTr, imagesTs, labelsTs, dataset.json, "
                    "grades.csv). Deterministic for a given --seed.")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    parser.add_argument("--preset", default="demo",
                        help="demo: ~2 mm, small fields of view, 48+12 cases; "
                             "full: ~0.6-0.9 mm in-plane, clinical-like, 160+40 cases (default demo)")
    parser.add_argument("--num_cases", "--num-cases", type=int, default=None,
                        help="training cases (default: the preset's)")
    parser.add_argument("--num_test_cases", "--num-test-cases", type=int, default=None,
                        help="test cases (default: the preset's)")
    parser.add_argument("--patient_mix", "--patient-mix", default=":".join(f"{w:g}" for w in DEFAULT_PATIENT_MIX),
                        help="patients by worst grade G0:G1:G2:G3 (default 1:3:3:3 like the paper's dataset)")
    parser.add_argument("-d", "--dataset_id", "--dataset-id", type=int, default=501, help="dataset id (default 501)")
    parser.add_argument("-np", "--num_processes", "--num-processes", type=int, default=None,
                        help="worker processes (default: all cores)")
    parser.add_argument("-o", "--output_root", "--output-root", type=Path, default=None,
                        help="parent folder of the dataset (default: $nnUNet_raw)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    return parser


@command(build_parser)
def main(args: argparse.Namespace) -> int:
    if args.preset not in PRESETS:
        raise ConfigError(f"--preset {args.preset!r} is unknown (choose one of {', '.join(PRESETS)})")
    if args.output_root is None:
        args.output_root = paths.nnUNet_raw
    folder = generate_dataset(args.output_root, seed=args.seed, num_cases=args.num_cases,
                              num_test_cases=args.num_test_cases, preset=args.preset, overwrite=args.overwrite,
                              num_processes=args.num_processes, patient_mix=_patient_mix(args.patient_mix),
                              dataset_id=args.dataset_id)
    print(f"wrote {folder}")
    return 0
