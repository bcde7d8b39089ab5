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

from vfscreen import dataset, genant, labels
from vfscreen.errors import ConfigError
from vfscreen.evaluation import totalseg_heights
from vfscreen.evaluation.metrics import auroc, four_grade_metrics
from vfscreen.evaluation.table import render_markdown
from vfscreen.inference.masks import MaskSource, read_case_mask
from vfscreen.inference.morphometry import HEIGHT_NAMES, measure_vertebrae


def _degraded(image: sitk.Image, spacing_mm: float, interpolator) -> sitk.Image:
    size = [max(1, int(round(n * s / spacing_mm))) for n, s in zip(image.GetSize(), image.GetSpacing())]
    return sitk.Resample(image, size, sitk.Transform(), interpolator, image.GetOrigin(), (spacing_mm,) * 3,
                         image.GetDirection(), -1000 if interpolator != sitk.sitkNearestNeighbor else 0,
                         image.GetPixelID())


def _masks_of_quality(ct: sitk.Image, class_image: sitk.Image, coarse_mm: float | None, coarse_ct: bool = True):
    """(CT, VerSe map on the CT's grid) of one mask quality."""
    if coarse_mm is not None:
        coarse_mask = _degraded(class_image, coarse_mm, sitk.sitkNearestNeighbor)
        if coarse_ct:
            class_image, ct = coarse_mask, _degraded(ct, coarse_mm, sitk.sitkLinear)
        else:  # back onto the CT's grid with nearest neighbour, as vfscreen_predict --masks does
            class_image = sitk.Resample(coarse_mask, class_image, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                                        class_image.GetPixelID())
    return ct, labels.class_to_verse(sitk.GetArrayFromImage(class_image))


def run_morphometry_benchmark(dataset_name: str, num_cases: int = 20, coarse_mm: float = 3.0,
                              totalsegmentator: bool = True) -> dict:
    """``totalsegmentator``: also run TotalSegmentator's height measurement on the same masks where it is
    installed (vfscreen.evaluation.totalseg_heights); the result says which version ran or why it did not."""
    folder = dataset.raw_dataset_folder(dataset_name)
    grades = dataset.read_grades(folder / "grades.csv")
    if "anterior_mm" not in grades.columns:
        raise ConfigError(f"{folder}/grades.csv has no heights (anterior_mm, ...): nothing to compare with")
    cases = dataset.list_cases(folder, "Tr")[:num_cases]
    whole = grades[(grades["case_id"].isin(cases)) & ~grades["truncated"].astype(bool)]
    qualities = {"ground truth": (None, True), f"ground truth at {coarse_mm:g} mm": (coarse_mm, True),
                 f"{coarse_mm:g} mm mask on the native CT": (coarse_mm, False)}
    version = totalseg_heights.totalsegmentator_version() if totalsegmentator else None
    rows = {name: [] for name in qualities}
    totalseg_rows = {name: [] for name in qualities}
    for case_id in cases:
        ct = sitk.ReadImage(str(dataset.image_path(folder, case_id)))
        class_image = sitk.ReadImage(str(dataset.label_path(folder, case_id)))
        truth = whole[whole["case_id"] == case_id]
        for name, (coarse, coarse_ct) in qualities.items():
            case_ct, verse_map = _masks_of_quality(ct, class_image, coarse, coarse_ct)
            measured = measure_vertebrae(verse_map, case_ct, ct=case_ct)
            theirs = totalseg_heights.totalsegmentator_heights(case_ct, verse_map) if version else {}
            for row in truth.itertuples():
                rows[name].append((row, measured.get(int(row.label))))
                totalseg_rows[name].append((row, theirs.get(int(row.label))))
    result = {"dataset": dataset_name, "num_cases": len(cases), "num_whole_vertebrae": len(whole),
              "qualities": {name: _summarise(pairs) for name, pairs in rows.items()}}
    if version:
        result["totalsegmentator"] = {"version": version,
                                      "qualities": {name: _summarise_heights(pairs)
                                                    for name, pairs in totalseg_rows.items()}}
    else:
        result["totalsegmentator"] = {"version": None, "why_not": "not run" if not totalsegmentator else
                                      f"TotalSegmentator is not installed ({totalseg_heights.INSTALL_HINT})"}
    return result


def _summarise_heights(pairs) -> dict:
    """Height, ratio and grade errors of another tool's three heights per vertebra (None: not measured)."""
    measured = [(row, heights) for row, heights in pairs
                if heights is not None and all(heights.get(name) for name in HEIGHT_NAMES)]
    if not measured:
        return {"measured": 0, "of": len(pairs)}
    truth = np.array([[getattr(row, f"{name}_mm") for name in HEIGHT_NAMES] for row, _ in measured])
    found = np.array([[heights[name] for name in HEIGHT_NAMES] for _, heights in measured])
    errors = np.abs(found - truth)
    true_grade = np.array([int(row.grade) for row, _ in measured])
    ratio = found.min(axis=1) / found.max(axis=1)
    return {"measured": len(measured), "of": len(pairs), "height_mae_mm": float(errors.mean()),
            "height_p95_mm": float(np.percentile(errors, 95)),
            "ratio_mae": float(np.abs(ratio - truth.min(axis=1) / truth.max(axis=1)).mean()),
            "macro_f1": four_grade_metrics(true_grade, np.array([genant.grade_from_heights(*h) for h in found])
                                           )["macro_f1"].get("value"),
            "auroc": auroc(true_grade > 0, 1.0 - ratio).get("value")}


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
    columns.insert(1, "tool")
    lines = []
    theirs = result.get("totalsegmentator", {})
    for name, values in result["qualities"].items():
        lines.append([name, "vfscreen", f"{values['measured']}/{values['of']}", f"{values['height_mae_mm']:.2f}",
                      f"{values['height_p95_mm']:.2f}", f"{values['inside_95_interval']:.2f}",
                      f"{values['ratio_mae']:.3f}", _fmt(values["macro_f1"]), _fmt(values["auroc"]),
                      f"{values['borderline']:.2f}", str(values["decided_by_neighbours"])])
        other = theirs.get("qualities", {}).get(name)
        if other is not None:
            lines.append([name, f"TotalSegmentator {theirs['version']}", f"{other['measured']}/{other['of']}"]
                         + ([f"{other['height_mae_mm']:.2f}", f"{other['height_p95_mm']:.2f}", "-",
                             f"{other['ratio_mae']:.3f}", _fmt(other["macro_f1"]), _fmt(other["auroc"])]
                            if other["measured"] else ["-"] * 6) + ["-", "-"])
    title = (f"Morphometry vs the exact heights: {result['dataset']}, {result['num_cases']} cases, "
             f"{result['num_whole_vertebrae']} whole vertebrae")
    if theirs.get("why_not"):
        title += f"; TotalSegmentator side by side: {theirs['why_not']}"
    if markdown:
        return title + "\n\n" + render_markdown(columns, lines)
    widths = [max(len(str(x)) for x in column) for column in zip(columns, *lines)]
    return "\n".join([title] + ["  ".join(str(x).ljust(w) for x, w in zip(line, widths))
                                for line in [columns] + lines])


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def run_example_comparison(ct_path: str | Path, mask_path: str | Path) -> dict:
    """Both tools' heights on one real CT with a vertebra mask (e.g. TotalSegmentator's), vertebra by vertebra.
    There is no ground truth: the table shows agreement and what each tool calls deformed, not accuracy."""
    ct = sitk.ReadImage(str(ct_path))
    spine = read_case_mask(MaskSource(Path(mask_path), "file"), ct)
    ours = measure_vertebrae(spine.verse_map, ct, ct=ct)
    version = totalseg_heights.totalsegmentator_version()
    theirs = totalseg_heights.totalsegmentator_heights(ct, spine.verse_map) if version else {}
    rows = []
    for verse_id in sorted(ours, key=labels.spine_position):
        result, other = ours[verse_id], theirs.get(verse_id)
        row = {"name": labels.name_of(verse_id), "vfscreen": None, "totalsegmentator": None, "note": result.note}
        if result.heights_mm is not None:
            row["vfscreen"] = {"heights_mm": result.heights_mm, "sd_mm": result.height_sd_mm,
                               "ratio": result.genant_ratio, "ratio_interval": result.ratio_interval,
                               "grade": result.morph_grade, "borderline": result.borderline,
                               "rule": (result.deformity or {}).get("rule")}
        if other is not None and all(other.get(name) for name in HEIGHT_NAMES):
            ratio = min(other.values()) / max(other.values())
            row["totalsegmentator"] = {"heights_mm": other, "ratio": ratio, "fracture": ratio < 0.8}
        rows.append(row)
    return {"ct": str(ct_path), "mask": str(mask_path), "totalsegmentator_version": version,
            "why_not": None if version else f"TotalSegmentator is not installed ({totalseg_heights.INSTALL_HINT})",
            "vertebrae": rows}


def format_example(result: dict, markdown: bool = False) -> str:
    columns = ["vertebra", "vfscreen A / M / P (mm, ± 95 %)", "vfscreen ratio [95 %]", "vfscreen grade",
               f"TotalSegmentator {result['totalsegmentator_version'] or '-'} A / M / P (mm)",
               "TotalSegmentator ratio", "TotalSegmentator fracture (< 0.8)"]
    lines = []
    for row in result["vertebrae"]:
        ours, theirs = row["vfscreen"], row["totalsegmentator"]
        line = [row["name"]]
        if ours is None:
            line += [row["note"] or "not measured", "-", "-"]
        else:
            line.append(" / ".join(f"{ours['heights_mm'][n]:.1f} ± {1.96 * ours['sd_mm'][n]:.1f}" for n in HEIGHT_NAMES))
            low, high = ours["ratio_interval"] or (np.nan, np.nan)
            line.append(f"{ours['ratio']:.2f} [{low:.2f}, {high:.2f}]")
            line.append(f"G{ours['grade']}" + (" borderline" if ours["borderline"] else "")
                        + (f" ({ours['rule']})" if ours["rule"] else ""))
        if theirs is None:
            line += ["not measured", "-", "-"]
        else:
            line += [" / ".join(f"{theirs['heights_mm'][n]:.1f}" for n in HEIGHT_NAMES), f"{theirs['ratio']:.2f}",
                     "yes" if theirs["fracture"] else "no"]
        lines.append(line)
    ours_deformed = sum(1 for row in result["vertebrae"] if row["vfscreen"] and row["vfscreen"]["grade"]
                        and not row["vfscreen"]["borderline"])
    theirs_deformed = sum(1 for row in result["vertebrae"] if row["totalsegmentator"]
                          and row["totalsegmentator"]["fracture"])
    title = (f"Heights on {Path(result['ct']).name} with the mask {Path(result['mask']).name} (no ground truth): "
             f"vfscreen calls {ours_deformed} vertebra(e) deformed with confidence (grade >= 1, not borderline), "
             + (f"TotalSegmentator {theirs_deformed}" if result["totalsegmentator_version"] else result["why_not"]))
    if markdown:
        return title + "\n\n" + render_markdown(columns, lines)
    widths = [max(len(str(x)) for x in column) for column in zip(columns, *lines)]
    return "\n".join([title] + ["  ".join(str(x).ljust(w) for x, w in zip(line, widths))
                                for line in [columns] + lines])
