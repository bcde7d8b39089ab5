"""vfscreen_benchmark naming on a tiny generated phantom with stand-in segmenters (no trained model needed)."""
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from vfscreen import dataset, labels
from vfscreen.evaluation.naming_benchmark import VARIANTS, format_naming, run_naming_benchmark
from vfscreen.phantom import generator

DATASET_ID = 597


def _phantom() -> Path:
    root = Path(os.environ["nnUNet_raw"])
    folder = root / f"Dataset{DATASET_ID}_SyntheticSpine"
    if not folder.is_dir():
        generator.generate_dataset(root, seed=5, num_cases=1, num_test_cases=1, preset="demo", num_processes=1,
                                   dataset_id=DATASET_ID, progress=False)
    return folder


def _reference_segmenter(folder: Path):
    """A 'network' that returns the reference's vertebra classes (landmarks left out) for the case it is given."""
    (case_id,) = dataset.list_cases(folder, "Ts")
    class_map = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labelsTs" / f"{case_id}.nii.gz")))
    class_map = np.where(class_map <= labels.NUM_VERTEBRA_CLASSES, class_map, 0).astype(np.uint8)
    return lambda image: (class_map, None), int(len(np.unique(class_map)) - 1)


def test_reference_segmentation_is_named_right_by_every_variant():
    folder = _phantom()
    segmenter, num_vertebrae = _reference_segmenter(folder)
    result = run_naming_benchmark(folder.name, segmenter=segmenter, progress=False)
    assert [row["variant"] for row in result["rows"]] == [name for name, _ in VARIANTS]
    for row in result["rows"]:
        assert row["num_reference_vertebrae"] == num_vertebrae
        assert row["identification_rate"]["value"] >= 0.8, row["variant"]
    table = format_naming(result, markdown=True)
    assert table.count("\n| ") == len(VARIANTS) + 1  # header + one row per variant


def test_a_segmentation_that_finds_nothing_identifies_nothing():
    folder = _phantom()
    result = run_naming_benchmark(folder.name, segmenter=lambda image: (
        np.zeros(sitk.GetArrayViewFromImage(image).shape, np.uint8), None), progress=False)
    for row in result["rows"]:
        assert row["num_identified"] == 0 and row["num_reference_vertebrae"] > 0
        assert row["num_predicted_unflagged"] == 0
    assert "n/a of 0" in format_naming(result)
