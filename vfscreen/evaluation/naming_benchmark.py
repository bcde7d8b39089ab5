"""``vfscreen_benchmark naming -d 501``: what each piece of vfscreen's naming adds to identification.

The dataset's trained segmentation model segments every test case once (as ``vfscreen_predict`` does); the same
segmentation is then named with the pieces of :func:`vfscreen.inference.pipeline.name_vertebrae` switched on one
after the other - the network's own region calls at face value; + ribs read off the CT
(:mod:`vfscreen.inference.ct_ribs`); + ribs searched inside the thin parts of the network's mask too; + the region
calls weighed by the model's validation confusion (:mod:`vfscreen.core.region_confusion`); + gaps between
neighbours as evidence of a missed vertebra; + the components' volumes under the model's vertebra size model
(:mod:`vfscreen.core.vertebra_sizes`; the last row is what ``vfscreen_predict`` does). Each row is scored
against the reference masks as ``vfscreen_evaluate`` scores names (:func:`vfscreen.evaluation.matching.
segmentation_metrics`: same label and centroids within 20 mm, over every reference vertebra; the share of unflagged
names that are right).
"""
from __future__ import annotations

import pandas as pd
import SimpleITK as sitk

from vfscreen import dataset
from vfscreen.errors import ConfigError
from vfscreen.evaluation.inputs import load_reference, read_reference_mask
from vfscreen.evaluation.matching import match_case, segmentation_metrics
from vfscreen.evaluation.table import render, render_markdown
from vfscreen.inference import spine_region
from vfscreen.inference.pipeline import name_vertebrae, segment
from vfscreen.inference.segmentation import load_models
from vfscreen.labels import CLASS_TO_VERSE
from vfscreen.utils.image_io import read_image
from vfscreen.utils.progress import progress_bar

# the pieces of name_vertebrae in the order the rows add them: (row name, its switch)
PIECES = (("+ ribs from the CT", "ct_ribs"), ("+ ribs inside thin mask parts", "ribs_in_thin_mask_parts"),
          ("+ calibrated regions", "calibrated_regions"), ("+ gaps", "gaps"),
          ("+ vertebra sizes (vfscreen_predict)", "sizes"))
# (row name, name_vertebrae switches): the first row with every piece off, each further row switching one more on
VARIANTS = tuple((name, {switch: index < row for index, (_, switch) in enumerate(PIECES)})
                 for row, name in enumerate(["network regions at face value"] + [name for name, _ in PIECES]))


def run_naming_benchmark(dataset_name: str, split: str = "Ts", num_cases: int | None = None, folds=None,
                         device: str = "cpu", segmenter=None, progress: bool = True) -> dict:
    """Identification of every variant on the raw dataset's ``split`` cases (first ``num_cases``).
    ``segmenter``: a callable as :class:`vfscreen.inference.segmentation.NnunetSegmenter` (default: the dataset's
    trained model, ``folds`` of it)."""
    folder = dataset.raw_dataset_folder(dataset_name)
    reference = load_reference(folder, split)
    cases = sorted(case for case in reference.masks if dataset.image_path(folder, case, split).is_file())
    cases = cases[:num_cases] if num_cases else cases
    if not cases:
        raise ConfigError(f"{folder}: no case with both images{split} and labels{split}")
    if segmenter is None:
        segmenter = load_models(dataset_name, folds=folds, device=device, grader=False).segmenter
    tables = {name: {"vertebrae": [], "extra": [], "naming": []} for name, _ in VARIANTS}
    for case_id in progress_bar(cases, desc="naming cases", disable=not progress):
        image = read_image(dataset.image_path(folder, case_id, split), "CT")
        reference_image = read_reference_mask(reference.masks[case_id], reference.class_ids)
        segmentation = segment(segmenter, image)
        shape = sitk.GetArrayViewFromImage(image).shape
        for name, switches in VARIANTS:
            verse_region, components, _ = name_vertebrae(image, segmentation, segmenter, **switches)
            prediction = sitk.GetImageFromArray(spine_region.paste(verse_region, segmentation.box, shape))
            prediction.CopyInformation(image)
            match = match_case(case_id, reference_image, prediction)
            tables[name]["vertebrae"] += match.vertebra_rows()
            tables[name]["extra"] += match.extra_rows()
            tables[name]["naming"] += [
                {"case_id": case_id, "label": CLASS_TO_VERSE[c.new_class_id], "level_uncertain": c.level_uncertain,
                 "named_right": CLASS_TO_VERSE[c.new_class_id] in match.identified}
                for c in components if c.new_class_id > 0]
    rows = []
    for name, switches in VARIANTS:
        metrics = segmentation_metrics(pd.DataFrame(tables[name]["vertebrae"],
                                                    columns=["case_id", "label", "identified", "dice"]),
                                       pd.DataFrame(tables[name]["extra"], columns=["case_id"]),
                                       pd.DataFrame(tables[name]["naming"],
                                                    columns=["case_id", "label", "level_uncertain", "named_right"]))
        rows.append({"variant": name, "switches": switches, **metrics})
    return {"dataset": dataset_name, "split": split, "cases": cases, "rows": rows}


def format_naming(result: dict, markdown: bool = False) -> str:
    header = ["naming", "identification rate", "identified", "unflagged names right", "flagged level_uncertain",
              "extra"]
    lines = []
    for row in result["rows"]:
        unflagged = row["num_predicted_unflagged"]
        right = row["identification_rate_unflagged"].get("value")
        lines.append([row["variant"], f"{row['identification_rate']['value']:.2f}",
                      f"{row['num_identified']}/{row['num_reference_vertebrae']}",
                      f"{round(right * unflagged)}/{unflagged}" if right is not None else f"n/a of {unflagged}",
                      str(row["num_predicted_level_uncertain"]), str(row["num_extra"])])
    title = (f"Naming on {result['dataset']} images{result['split']}: {len(result['cases'])} cases, one segmentation "
             f"each, named {len(result['rows'])} ways (same label and centroid within 20 mm)")
    if markdown:
        return "\n".join([title, "", render_markdown(header, lines)])
    return "\n".join([title, render(header, lines)])

