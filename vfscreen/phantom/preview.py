"""Sagittal preview of a case: CT (bone window) with each vertebra's mask outline coloured by its Genant grade.

    python -m vfscreen.phantom.preview DATASET CASE_ID OUTPUT.png     (DATASET: folder, id like 501, or name)
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from vfscreen.core.cli import CommandParser
from vfscreen import dataset, labels
from vfscreen.errors import ConfigError, cli_entry
from vfscreen.utils.atomic import atomic_path
from vfscreen.utils.image_io import read_image

GRADE_COLOURS = ("#2ecc40", "#ffdc00", "#ff851b", "#ff2020")  # G0 green, G1 yellow, G2 orange, G3 red
BONE_WINDOW = (-450.0, 1050.0)  # width 1500, level 400


def save_sagittal_preview(ct_path: Path, label_path: Path, grades: dict[int, int], output_png: Path,
                          title: str = "") -> None:
    """Write a PNG of the mid-sagittal slice (through the median lateral position of the labelled voxels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ct = sitk.DICOMOrient(read_image(ct_path, "CT"), "LPS")
    label_image = sitk.DICOMOrient(read_image(label_path, "label"), "LPS")
    ct_array = sitk.GetArrayFromImage(ct)  # (z, y, x): superior, posterior, left
    verse = labels.class_to_verse(sitk.GetArrayFromImage(label_image))
    if not verse.any():
        raise ConfigError(f"{label_path}: no vertebra in the label mask, nothing to show")
    column = int(np.median(np.nonzero(verse)[2]))
    ct_slice, label_slice = ct_array[:, :, column], verse[:, :, column]
    spacing_x, spacing_y, spacing_z = ct.GetSpacing()
    figure, axis = plt.subplots(figsize=(5.5, 8), dpi=120)
    extent = (0, ct_slice.shape[1] * spacing_y, 0, ct_slice.shape[0] * spacing_z)  # mm; anterior left, superior up
    axis.imshow(ct_slice, cmap="gray", vmin=BONE_WINDOW[0], vmax=BONE_WINDOW[1], origin="lower", extent=extent)
    for verse_id in sorted(int(v) for v in np.unique(label_slice) if v):
        mask = (label_slice == verse_id).astype(float)
        grade = grades.get(verse_id)
        colour = GRADE_COLOURS[grade] if grade is not None else "#7fdbff"
        axis.contour(mask, levels=[0.5], colors=[colour], linewidths=1.2, origin="lower", extent=extent)
        rows, cols = np.nonzero(mask)
        text = f"{labels.name_of(verse_id)} G{grade}" if grade is not None else labels.name_of(verse_id)
        axis.text(cols.min() * spacing_y - 4, rows.mean() * spacing_z, text, color=colour, fontsize=7,
                  ha="right", va="center")
    from matplotlib.patches import Patch

    axis.legend(handles=[Patch(color=c, label=f"G{g}") for g, c in enumerate(GRADE_COLOURS)], loc="lower right",
                fontsize=7, title="Genant grade", title_fontsize=7, framealpha=0.6)
    axis.set_title(title or Path(ct_path).name, fontsize=8)
    axis.set_xlabel("anterior  <-  mm  ->  posterior", fontsize=8)
    axis.set_ylabel("inferior  <-  mm  ->  superior", fontsize=8)
    axis.tick_params(labelsize=7)
    figure.tight_layout()
    with atomic_path(output_png) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)


def preview_case(dataset_folder, case_id: str, output_png: Path) -> None:
    """``dataset_folder``: a raw dataset folder, or a dataset id / name in nnUNet_raw (e.g. 501)."""
    dataset_folder = Path(dataset_folder)
    if not dataset_folder.is_dir():
        dataset_folder = dataset.raw_dataset_folder(str(dataset_folder))
    split = "Tr" if dataset.image_path(dataset_folder, case_id, "Tr").exists() else "Ts"
    if not dataset.image_path(dataset_folder, case_id, split).exists():
        raise ConfigError(f"case {case_id!r} not found in {dataset_folder}/imagesTr or imagesTs")
    table = dataset.read_grades(dataset_folder / dataset.GRADES_FILE)
    rows = table[table["case_id"] == case_id]
    grades = dict(zip(rows["label"].astype(int), rows["grade"].astype(int)))
    save_sagittal_preview(dataset.image_path(dataset_folder, case_id, split),
                          dataset.label_path(dataset_folder, case_id, split), grades, output_png,
                          title=f"{dataset_folder.name} {case_id}: sagittal slice, mask outlines")


@cli_entry
def main(argv=None):
    parser = CommandParser(description="Sagittal preview PNG of one case of a vfscreen raw dataset")
    parser.add_argument("dataset_folder", help="raw dataset folder, or a dataset id / name in nnUNet_raw (e.g. 501)")
    parser.add_argument("case_id")
    parser.add_argument("output_png", type=Path)
    args = parser.parse_args(argv)
    preview_case(args.dataset_folder, args.case_id, args.output_png)
    print(f"wrote {args.output_png}")


if __name__ == "__main__":
    sys.exit(main())
