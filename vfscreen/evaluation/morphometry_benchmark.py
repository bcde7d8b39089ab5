"""``vfscreen_benchmark morphometry -d 501``: vfscreen's morphometry against the phantom's exact heights.

For the first ``num_cases`` training cases of a raw dataset with a ``grades.csv`` holding heights (the phantom), the
ground-truth masks are measured three ways: on their own grid, degraded to a coarse isotropic grid (nearest-neighbour
labels, linear CT; e.g. 3 mm like TotalSegmentator's fast model), and the coarse mask alone brought back onto the CT's
own grid with nearest neighbour (as ``vfscreen_predict --masks`` does with a TotalSegmentator 3 mm mask of a finer
CT), the CT untouched. Per mask quality: how many whole vertebrae were
measured, height error (MAE, 95th percentile, mm), how often the true height lies inside the stated 95 % interval,
ratio error, the morphometric grade's macro-F1 and AUROC (score 1 - ratio) against the true grade, and the share of
borderline grades. Vertebrae cut by the field of view are left out, as prediction leaves them out.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from vfscreen import dataset, labels
from vfscreen.errors import ConfigError
from vfscreen.evaluation.metrics import auroc, four_grade_metrics
from vfscreen.inference.morphometry import HEIGHT_NAMES, measure_vertebrae


def _degraded(image: sitk.Image, spacing_mm: float, interpolator) -> sitk.Image:
    size = [max(1, int(round(n * s / spacing_mm))) for n, s in zip(image.GetSize(), image.GetSpacing())]
    return sitk.Resample(image, size, sitk.Transform(), interpolator, image.GetOrigin(), (spacing_mm,) * 3,
                         image.GetDirection(), -1000 if interpolator != sitk.sitkNearestNeighbor else 0,
                         image.GetPixelID())


def _measure_case(ct: sitk.Image, class_image: sitk.Image, coarse_mm: float | None, coarse_ct: bool = True):
    if coarse_mm is not None:
        coarse_mask = _degraded(class_image, coarse_mm, sitk.sitkNearestNeighbor)
        if coarse_ct:
            class_image, ct = coarse_mask, _degraded(ct, coarse_mm, sitk.sitkLinear)
        else:  # back onto the CT's grid with nearest neighbour, as vfscreen_predict --masks does
            class_image = sitk.Resample(coarse_mask, class_image, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                                        class_image.GetPixelID())
    verse_map = labels.class_to_verse(sitk.GetArrayFromImage(class_image))
    return measure_vertebrae(verse_map, class_image, ct=ct)


def run_morphometry_benchmark(dataset_name: str, num_cases: int = 20, coarse_mm: float = 3.0) -> dict:
    folder = dataset.raw_dataset_folder(dataset_name)
    grades = dataset.read_grades(folder / "grades.csv")
    if "anterior_mm" not in grades.columns:
        raise ConfigError(f"{folder}/grades.csv has no heights (anterior_mm, ...): nothing to compare with")
    cases = dataset.list_cases(folder, "Tr")[:num_cases]
    whole = grades[(grades["case_id"].isin(cases)) & ~grades["truncated"].astype(bool)]
    qualities = {"ground truth": (None, True), f"ground truth at {coarse_mm:g} mm": (coarse_mm, True),
                 f"{coarse_mm:g} mm mask on the native CT": (coarse_mm, False)}
    rows = {name: [] for name in qualities}
    for case_id in cases:
        ct = sitk.ReadImage(str(dataset.image_path(folder, case_id)))
        class_image = sitk.ReadImage(str(dataset.label_path(folder, case_id)))
        truth = whole[whole["case_id"] == case_id]
        for name, (coarse, coarse_ct) in qualities.items():
            measured = _measure_case(ct, class_image, coarse, coarse_ct)
            for row in truth.itertuples():
                result = measured.get(int(row.label))
                rows[name].append((row, result))
    return {"dataset": dataset_name, "num_cases": len(cases), "num_whole_vertebrae": len(whole),
            "qualities": {name: _summarise(pairs) for name, pairs in rows.items()}}


def _summarise(pairs) -> dict:
    measured = [(row, result) for row, result in pairs if result is not None and result.heights_mm is not None]
    truth = np.array([[getattr(row, f"{name}_mm") for name in HEIGHT_NAMES] for row, _ in measured])
    found = np.array([[result.heights_mm[name] for name in HEIGHT_NAMES] for _, result in measured])
    margin = np.array([[1.96 * result.height_sd_mm[name] for name in HEIGHT_NAMES] for _, result in measured])
    true_grade = np.array([int(row.grade) for row, _ in measured])
    morph_grade = np.array([int(result.morph_grade) for _, result in measured])
    errors = np.abs(found - truth)
    true_ratio = truth.min(axis=1) / truth.max(axis=1)
    ratio = np.array([result.genant_ratio for _, result in measured])
    return {
        "measured": len(measured), "of": len(pairs),
        "height_mae_mm": float(errors.mean()), "height_p95_mm": float(np.percentile(errors, 95)),
        "height_mae_by_name_mm": {name: float(errors[:, index].mean()) for index, name in enumerate(HEIGHT_NAMES)},
        "height_bias_by_name_mm": {name: float((found - truth)[:, index].mean())
                                   for index, name in enumerate(HEIGHT_NAMES)},
        "edges_from_ct": float(np.mean([result.extra.get("edges_from_ct", 0.0) for _, result in measured])),
        "inside_95_interval": float((errors <= margin).mean()),
        "ratio_mae": float(np.abs(ratio - true_ratio).mean()),
        "macro_f1": four_grade_metrics(true_grade, morph_grade)["macro_f1"].get("value"),
        "auroc": auroc(true_grade > 0, 1.0 - ratio).get("value"),
        "borderline": float(np.mean([bool(result.borderline) for _, result in measured])),
        "decided_by_neighbours": int(sum(result.deformity["rule"] == "vs_neighbours" for _, result in measured)),
    }


def format_morphometry(result: dict, markdown: bool = False) -> str:
    columns = ["masks", "measured", "height MAE (mm)", "height P95 (mm)", "inside 95 % interval", "ratio MAE",
               "macro-F1", "AUROC", "borderline", "by neighbour rule"]
    lines = []
    for name, values in result["qualities"].items():
        lines.append([name, f"{values['measured']}/{values['of']}", f"{values['height_mae_mm']:.2f}",
                      f"{values['height_p95_mm']:.2f}", f"{values['inside_95_interval']:.2f}",
                      f"{values['ratio_mae']:.3f}", _fmt(values["macro_f1"]), _fmt(values["auroc"]),
                      f"{values['borderline']:.2f}", str(values["decided_by_neighbours"])])
    title = (f"Morphometry vs the exact heights: {result['dataset']}, {result['num_cases']} cases, "
             f"{result['num_whole_vertebrae']} whole vertebrae")
    if markdown:
        table = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        table += ["| " + " | ".join(line) + " |" for line in lines]
        return title + "\n\n" + "\n".join(table)
    widths = [max(len(str(x)) for x in column) for column in zip(columns, *lines)]
    return "\n".join([title] + ["  ".join(str(x).ljust(w) for x, w in zip(line, widths))
                                for line in [columns] + lines])


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}"
