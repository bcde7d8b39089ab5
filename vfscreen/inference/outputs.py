"""Prediction outputs (contract 5): file names, the per-case JSON schema, summary.csv, errors.csv, atomic writing.

OUTPUT/<case>_seg.nii.gz      vertebra labels (VerSe ids) in the input's exact geometry
OUTPUT/<case>.json            per-vertebra and per-patient results (schema below); written last = the case is complete
OUTPUT/<case>_report.png      sagittal reformat with every vertebra outlined and coloured by grade
OUTPUT/<case>_gradcam.nii.gz  (--saliency) Grad-CAM of the grader in the input geometry
OUTPUT/<case>_probabilities.npz (--save_probabilities) segmentation softmax (float16, (C, Z, Y, X)) + component table
OUTPUT/summary.csv            one row per vertebra of every finished case
OUTPUT/errors.csv             case_id, input, error - cases that failed (nothing else is written for them)
"""
from __future__ import annotations

import contextlib

import json
import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

import numpy as np
import pandas as pd

from vfscreen.utils.atomic import (atomic_path, atomic_write_csv, atomic_write_image, atomic_write_json,
                                   remove_stale_temporaries)

# 2: vertebra p_fracture_fused + suspected, patient suspected + p_fracture_fused; any_fracture = the screening decision
# 3: vertebra + patient implausible (vfscreen.inference.plausibility); case segmentation (source, convention) and
#    landmarks (sacrum, S1, ribs: not graded)
# 4: vertebra heights_95_mm, genant_ratio_interval, morph_borderline, deformity (within / vs_neighbours / rule /
#    type / grade_range), trabecular_hu, density_note; patient morphometry (density screen, resolution note);
#    heights at Genant's points (the walls)
# 5: vertebra + patient level_uncertain; naming (the rib / sacrum evidence the names are anchored on)
# 6: vertebra endplates_from_ct (share of the height end points found on the CT's own endplate edges)
JSON_SCHEMA_VERSION = 6
VERTEBRA_FIELDS = {  # field -> allowed Python types of its JSON value
    "label": (int,), "name": (str,), "grade": (int, type(None)), "probabilities": (list, type(None)),
    "p_fracture": (float, type(None)), "uncertainty": (float, type(None)), "fold_disagreement": (float, type(None)),
    "label_confidence": (float, type(None)), "heights_mm": (dict, type(None)), "genant_ratio": (float, type(None)),
    "morph_grade": (int, type(None)), "morphology": (str, type(None)), "centroid_mm": (list,), "truncated": (bool,),
    "note": (str,), "p_fracture_fused": (float, type(None)), "suspected": (bool, type(None)),
    "implausible": (str, type(None)), "heights_95_mm": (dict, type(None)),
    "genant_ratio_interval": (list, type(None)), "morph_borderline": (bool, type(None)),
    "deformity": (dict, type(None)), "trabecular_hu": (float, type(None)), "density_note": (str,),
    "level_uncertain": (bool,), "endplates_from_ct": (float, type(None)),
}
PATIENT_FIELDS = {"worst_grade": (int, type(None)), "any_fracture": (bool,), "suspected": (list,),
                  "num_vertebrae": (int,), "p_fracture": (float, type(None)),
                  "p_fracture_fused": (float, type(None)), "morph_worst_grade": (int, type(None)),
                  "implausible": (str, type(None)), "morphometry": (dict,), "level_uncertain": (bool,),
                  "message": (str,)}
SUMMARY_COLUMNS = ["case_id", "label", "name", "suspected", "grade", "p_fracture", "p_fracture_fused", "uncertainty",
                   "fold_disagreement", "label_confidence", "level_uncertain", "p_g0", "p_g1", "p_g2", "p_g3",
                   "anterior_mm",
                   "middle_mm", "posterior_mm", "heights_95_mm", "genant_ratio", "genant_ratio_low",
                   "genant_ratio_high", "morph_grade", "morph_borderline", "deformity_rule", "morphology",
                   "trabecular_hu", "truncated",
                   "centroid_x_mm", "centroid_y_mm", "centroid_z_mm", "implausible", "note"]
ERROR_COLUMNS = ["case_id", "input", "error"]


def case_files(output_folder: Path, case_id: str, saliency: bool = False, probabilities: bool = False) -> dict:
    """Paths of every file a finished case has (the JSON is written last)."""
    output_folder = Path(output_folder)
    files = {"seg": output_folder / f"{case_id}_seg.nii.gz", "report": output_folder / f"{case_id}_report.png"}
    if saliency:
        files["gradcam"] = output_folder / f"{case_id}_gradcam.nii.gz"
    if probabilities:
        files["probabilities"] = output_folder / f"{case_id}_probabilities.npz"
    files["json"] = output_folder / f"{case_id}.json"
    return files


def validate_case_json(data: dict) -> None:
    """Raise ValueError naming the first field that breaks the schema."""
    for key in ("case_id", "vertebrae", "patient", "model", "segmentation", "naming", "schema_version"):
        if key not in data:
            raise ValueError(f"case JSON lacks '{key}'")
    for index, vertebra in enumerate(data["vertebrae"]):
        for key, types in VERTEBRA_FIELDS.items():
            if key not in vertebra or not isinstance(vertebra[key], types) or \
                    (isinstance(vertebra[key], bool) and bool not in types):
                raise ValueError(f"vertebrae[{index}].{key} = {vertebra.get(key)!r} is missing or of the wrong type")
        if vertebra["probabilities"] is not None and len(vertebra["probabilities"]) != 4:
            raise ValueError(f"vertebrae[{index}].probabilities must have 4 values")
        if vertebra["heights_mm"] is not None and set(vertebra["heights_mm"]) != {"anterior", "middle", "posterior"}:
            raise ValueError(f"vertebrae[{index}].heights_mm must have anterior, middle, posterior")
        if len(vertebra["centroid_mm"]) != 3:
            raise ValueError(f"vertebrae[{index}].centroid_mm must have 3 values")
    for key, types in PATIENT_FIELDS.items():
        if key not in data["patient"] or not isinstance(data["patient"][key], types):
            raise ValueError(f"patient.{key} = {data['patient'].get(key)!r} is missing or of the wrong type")
    if data["patient"]["num_vertebrae"] != len(data["vertebrae"]):
        raise ValueError("patient.num_vertebrae differs from the number of vertebrae")


def case_is_complete(output_folder: Path, case_id: str, saliency: bool = False, probabilities: bool = False) -> bool:
    """All files present and the JSON readable and valid (what ``--continue`` skips)."""
    files = case_files(output_folder, case_id, saliency, probabilities)
    if not all(path.is_file() for path in files.values()):
        return False
    try:
        validate_case_json(json.loads(files["json"].read_text()))
    except (ValueError, OSError):
        return False
    return True


def write_case_outputs(output_folder: Path, case_id: str, case_json: dict, seg_image, report_writer,
                       gradcam_image=None, probabilities: dict | None = None) -> None:
    """Write one case's files, each atomically, the JSON last; on any failure remove what this call wrote.

    report_writer: callable(path) that saves the PNG to ``path``. probabilities: arrays for ``np.savez_compressed``.
    """
    validate_case_json(case_json)
    files = case_files(output_folder, case_id, gradcam_image is not None, probabilities is not None)
    for path in files.values():  # left by a run killed while writing this case (only one run writes a case)
        remove_stale_temporaries(path)
    written = []
    try:
        atomic_write_image(files["seg"], seg_image)
        written.append(files["seg"])
        with atomic_path(files["report"]) as tmp:
            report_writer(tmp)
        written.append(files["report"])
        if gradcam_image is not None:
            atomic_write_image(files["gradcam"], gradcam_image)
            written.append(files["gradcam"])
        if probabilities is not None:
            with atomic_path(files["probabilities"]) as tmp:
                with open(tmp, "wb") as handle:
                    np.savez_compressed(handle, **probabilities)
            written.append(files["probabilities"])
        atomic_write_json(files["json"], case_json)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


def summary_rows(case_json: dict) -> list[dict]:
    """Flatten a case JSON into summary.csv rows (one per vertebra)."""
    rows = []
    for vertebra in case_json["vertebrae"]:
        probabilities = vertebra["probabilities"] or [None] * 4
        heights = vertebra["heights_mm"] or {}
        rows.append({
            "case_id": case_json["case_id"], "label": vertebra["label"], "name": vertebra["name"],
            "suspected": vertebra["suspected"], "grade": vertebra["grade"], "p_fracture": vertebra["p_fracture"],
            "p_fracture_fused": vertebra["p_fracture_fused"], "uncertainty": vertebra["uncertainty"],
            "fold_disagreement": vertebra["fold_disagreement"], "label_confidence": vertebra["label_confidence"],
            "level_uncertain": vertebra["level_uncertain"],
            **{f"p_g{grade}": probabilities[grade] for grade in range(4)},
            "anterior_mm": heights.get("anterior"), "middle_mm": heights.get("middle"),
            "posterior_mm": heights.get("posterior"),
            "heights_95_mm": max(vertebra["heights_95_mm"].values()) if vertebra["heights_95_mm"] else None,
            "genant_ratio": vertebra["genant_ratio"],
            "genant_ratio_low": (vertebra["genant_ratio_interval"] or [None, None])[0],
            "genant_ratio_high": (vertebra["genant_ratio_interval"] or [None, None])[1],
            "morph_grade": vertebra["morph_grade"], "morph_borderline": vertebra["morph_borderline"],
            "deformity_rule": (vertebra["deformity"] or {}).get("rule"), "morphology": vertebra["morphology"],
            "trabecular_hu": vertebra["trabecular_hu"],
            "truncated": vertebra["truncated"],
            **{f"centroid_{axis}_mm": value for axis, value in zip("xyz", vertebra["centroid_mm"])},
            "implausible": vertebra["implausible"], "note": vertebra["note"]})
    return rows


@contextlib.contextmanager
def folder_lock(output_folder: Path):
    """Exclusive lock (flock) of the output folder itself while summary.csv and errors.csv are rewritten, so that
    -num_parts runs writing into one folder at the same time do not lose each other's rows; nothing is written for
    it. Without POSIX file locks (Windows) parts must not finish at the same moment."""
    if fcntl is None:
        yield
        return
    descriptor = os.open(output_folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def write_summary(output_folder: Path, case_ids: list[str]) -> pd.DataFrame:
    """summary.csv from the JSONs of the finished cases among ``case_ids`` (in that order). Returns the table."""
    rows = []
    for case_id in case_ids:
        json_path = Path(output_folder) / f"{case_id}.json"
        if json_path.is_file():
            rows.extend(summary_rows(json.loads(json_path.read_text())))
    table = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    for column in ("grade", "morph_grade"):
        table[column] = table[column].astype("Int64")
    atomic_write_csv(Path(output_folder) / "summary.csv", table)
    return table


def update_errors(output_folder: Path, processed_case_ids: list[str], failures: list[dict],
                  input_case_ids: list[str] | None = None) -> Path | None:
    """errors.csv = earlier failures of input cases not processed now (e.g. another part's) + this run's failures;
    removed when empty."""
    path = Path(output_folder) / "errors.csv"
    previous = pd.read_csv(path, dtype=str, keep_default_na=False) if path.is_file() else \
        pd.DataFrame(columns=ERROR_COLUMNS)
    if len(previous):
        previous = previous[~previous["case_id"].isin(processed_case_ids)]
        if input_case_ids is not None:
            previous = previous[previous["case_id"].isin(input_case_ids)]
    table = pd.concat([previous, pd.DataFrame(failures, columns=ERROR_COLUMNS)], ignore_index=True)
    if table.empty:
        path.unlink(missing_ok=True)
        return None
    atomic_write_csv(path, table)
    return path
