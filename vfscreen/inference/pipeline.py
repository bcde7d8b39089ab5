"""``predict_case``: one CT image in memory -> the case's JSON, label maps, morphometry and saliency; writes nothing.

Segment + label (nnU-Net fold ensemble, or the user's masks) -> consistent labels (chain model with landmarks) ->
morphometry -> crops (THE crop function of vfscreen.preprocessing.crops) -> fold-ensemble grading -> optional
Grad-CAM. :func:`vfscreen.inference.predict.predict` runs it over the cases of an input and writes the outputs.
"""
from __future__ import annotations

import functools

import inspect
import warnings

import numpy as np
import SimpleITK as sitk

from vfscreen import __version__
from vfscreen.core.plans import includes_truncated
from vfscreen.errors import ConfigError
from vfscreen.inference import deformity, outputs, resources, spine_region
from vfscreen.inference.grading import grade_crops
from vfscreen.inference.chain_model import ChainModel
from vfscreen.inference.ct_ribs import NETWORK_MASK_THIN_PART_MM, rib_like_part, rib_mask_from_ct
from vfscreen.inference.label_consistency import make_labels_consistent
from vfscreen.inference.landmarks import naming_of_given_labels
from vfscreen.inference.morphometry import measure_vertebrae
from vfscreen.inference.plausibility import assess as assess_plausibility
from vfscreen.inference.resources import StageMeter
from vfscreen.inference.screening import describe_rule, screen
from vfscreen.inference.segmentation import Models
from vfscreen.inference.spine_labels import SpineLabels
from vfscreen.inference.spine_region import SpineSegmentation
from vfscreen.labels import CLASS_TO_VERSE, name_of
from vfscreen.preprocessing.crops import extract_vertebra_crops
from vfscreen.utils.image_io import check_ct_intensities, orientation_code


def _json_float(value):
    return None if value is None else round(float(value), 4)


def segment(segmenter, image: sitk.Image, check_region=None) -> SpineSegmentation:
    """The segmenter's result as a SpineSegmentation; a segmenter that returns full-grid (class map, probabilities)
    (tests, other segmenters) gets its region from its foreground."""
    try:
        accepts_check = "check_region" in inspect.signature(segmenter).parameters
    except (TypeError, ValueError):
        accepts_check = False
    result = segmenter(image, check_region=check_region) if accepts_check else segmenter(image)
    shape = sitk.GetArrayViewFromImage(image).shape
    if isinstance(result, SpineSegmentation):
        if tuple(result.shape) != shape or spine_region.box_shape(result.box) != result.class_map.shape:
            raise RuntimeError(f"segmenter returned a region of {result.class_map.shape} in {result.shape}, expected "
                               f"one inside the image's {shape}")
    else:
        class_map, probabilities = result
        if class_map.shape != shape:
            raise RuntimeError(f"segmenter returned shape {class_map.shape}, expected the image's {shape}")
        box = spine_region.foreground_region(class_map)
        result = SpineSegmentation(shape, box, class_map[box],
                                   None if probabilities is None else probabilities[(slice(None),) + box])
    if result.class_map.size == 0:  # nothing found: one background voxel stands for the region
        result.box = tuple(slice(0, 1) for _ in shape)
        result.class_map, result.probabilities = np.zeros((1, 1, 1), np.uint8), None
    return result


def name_vertebrae(image: sitk.Image, segmentation: SpineSegmentation, segmenter, ct_ribs: bool = True,
                   ribs_in_thin_mask_parts: bool = True, calibrated_regions: bool = True, gaps: bool = True,
                   sizes: bool = True):
    """Names of the segmentation's vertebrae (vfscreen.inference.label_consistency): (VerSe map of the region,
    components, landmark evidence). The switches turn off one piece of the naming each (``vfscreen_benchmark naming``
    measures what each adds): ``ct_ribs`` ribs read off the CT where the network shows none (with
    ``ribs_in_thin_mask_parts`` also inside the thin parts of the network's vertebra mask), ``calibrated_regions`` the
    segmenter's region confusion from its validation (else its region calls at face value), ``gaps`` the gaps between
    neighbouring components as evidence of a missed vertebra, ``sizes`` the components' volumes weighed by the
    segmenter's vertebra size model (vfscreen.core.vertebra_sizes; none for a model trained without one)."""
    return make_labels_consistent(
        segmentation.class_map, spine_region.region_image(image, segmentation.box), segmentation.probabilities,
        model=ChainModel(use_gaps=gaps),
        grouping=getattr(segmenter, "label_grouping", "vertebrae"),
        has_landmarks=getattr(segmenter, "has_landmarks", False),
        ct_ribs=functools.partial(rib_mask_from_ct, image, segmentation.box,
                                  thin_parts_searched_mm=NETWORK_MASK_THIN_PART_MM if ribs_in_thin_mask_parts else 0.0)
        if ct_ribs else None,
        region_confusion=getattr(segmenter, "region_confusion", None) if calibrated_regions else None,
        rib_shape=functools.partial(rib_like_part, image, segmentation.box) if ct_ribs else None,
        size_model=getattr(segmenter, "size_model", None) if sizes else None,
        field_of_view=(segmentation.box, sitk.GetArrayViewFromImage(image).shape))


def predict_case(image: sitk.Image, case_id: str, models: Models, saliency: bool = False,
                 given: SpineLabels | None = None, memory_budget: int | None = None) -> dict:
    """Run the pipeline on one image. ``given``: the case's vertebrae from a mask (``--masks``), which replaces
    segmentation. Returns {"json", "seg_image", "verse_map", "morphometry", "gradcam", "probabilities" (of the spine
    region), "region" (its box), "components", "landmarks", "plausibility", "timings_s", "peak_rss_gb"}; writes
    nothing. Components and labels are computed inside the spine's region only (vfscreen.inference.spine_region);
    ``memory_budget`` (bytes) refuses a region that would not fit."""
    meter = StageMeter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_ct_intensities(sitk.GetArrayViewFromImage(image), source=case_id)
    case_warnings = [str(warning.message) for warning in caught]
    for message in case_warnings:
        warnings.warn(message, stacklevel=2)

    def check_region(num_voxels: int, num_channels: int) -> None:
        resources.check_estimate("the spine region", resources.region_estimate_bytes(num_voxels, num_channels),
                                 memory_budget, resources.resident_bytes() or 0, f"{num_voxels} voxels")

    shape = sitk.GetArrayViewFromImage(image).shape
    with meter.stage("segmentation"):
        spine = given if given is not None else models.named_segmenter(image) if models.named_segmenter else None
        if spine is None:
            if models.segmenter is None:
                raise ConfigError("no mask for this case in --masks and no segmentation model ("
                                  + models.info.get("segmentation_unavailable", "none loaded") + ")")
            segmentation = segment(models.segmenter, image, check_region)
            case_warnings += segmentation.notes
    probabilities, components, confidence = None, [], {}
    with meter.stage("label_consistency"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if spine is None:
            box, probabilities = segmentation.box, segmentation.probabilities
            verse_region, components, naming = name_vertebrae(image, segmentation, models.segmenter)
            del segmentation
            verse_map = spine_region.paste(verse_region, box, shape)
            kept = {CLASS_TO_VERSE[c.new_class_id]: c for c in components if c.new_class_id > 0}
            confidence = {label: component.label_confidence for label, component in kept.items()}
            segmentation_info, landmarks = {"source": "vfscreen", "convention": "verse"}, None
            component_names = [name_of(CLASS_TO_VERSE[c.new_class_id]) if c.new_class_id else "" for c in components]
            naming_json = {**naming.summary(component_names), "anchored": naming.any_landmark}
        else:
            verse_map, segmentation_info, landmarks = spine.verse_map, spine.segmentation, spine.landmarks
            box = spine_region.foreground_region(verse_map)
            kept, naming_json = {}, naming_of_given_labels(spine, image, ct=image)
            case_warnings += [f"the mask's names contradict its landmarks: {text}"
                              for text in naming_json["contradictions"]]
            case_warnings += spine.warnings
            for message in spine.warnings:
                warnings.warn(f"{case_id}: {message}", stacklevel=2)
        seg_image = sitk.GetImageFromArray(verse_map)
        seg_image.CopyInformation(image)
        plausibility = assess_plausibility(verse_map, image, len(components) if spine is None else None)
    case_warnings += [str(warning.message) for warning in caught]

    with meter.stage("morphometry"):
        morphometry = measure_vertebrae(verse_map, image, ct=image)

    with meter.stage("grading"):
        plausible = {label for label in morphometry if plausibility.reason(label) is None}
        crops = extract_vertebra_crops(image, seg_image, models.grader.crop_plan) \
            if plausible and models.grader is not None else []
        use_truncated = models.grader is not None and includes_truncated(models.grader.crop_plan)
        gradable = [crop for crop in crops if (use_truncated or not crop.truncated) and crop.label in plausible]
        predictions = dict(zip([crop.label for crop in gradable], grade_crops(gradable, models.grader))) \
            if gradable else {}
    gradcam = None
    if saliency:
        if models.saliency is None:
            raise ConfigError("--saliency needs a grader that supports Grad-CAM")
        with meter.stage("saliency"):
            gradcam = models.saliency(image, gradable, models.grader)

    crop_truncated = {crop.label: crop.truncated for crop in crops}
    vertebrae = []
    for label, measured in morphometry.items():
        prediction = predictions.get(label)
        implausible = plausibility.reason(label)
        heights = None if implausible else measured.heights_mm
        truncated = bool(measured.truncated or crop_truncated.get(label, False))
        notes = [measured.note] if measured.note and not implausible else []
        if implausible:
            notes.append(f"not graded: anatomically implausible ({implausible})")
        elif models.grader is None:
            notes.append("no learned grade (no grader); morphometry only")
        elif prediction is None:
            notes.append("not graded: cut by the field of view (the grader was trained on whole vertebrae)")
        vertebrae.append({
            "label": int(label), "name": name_of(label),
            "grade": prediction.grade if prediction else None,
            "probabilities": prediction.probabilities if prediction else None,
            "p_fracture": prediction.p_fracture if prediction else None,
            "uncertainty": prediction.uncertainty if prediction else None,
            "fold_disagreement": prediction.fold_disagreement if prediction else None,
            "label_confidence": _json_float(confidence.get(label)),
            # names from a given mask are the mask's own (never renamed): level_uncertain only for vfscreen's chain
            "level_uncertain": bool(kept[label].level_uncertain) if label in kept else spine is None,
            "heights_mm": heights, "genant_ratio": None if implausible else _json_float(measured.genant_ratio),
            "morph_grade": None if implausible else measured.morph_grade, "implausible": implausible,
            "morphology": measured.deformity["type"] if heights and measured.deformity else None,
            **deformity.vertebra_fields(None if implausible else measured),
            "centroid_mm": [round(float(v), 2) for v in measured.centroid_mm],
            "truncated": truncated, "note": "; ".join(notes)})
    screen(vertebrae, models.fusion)
    graded = [v for v in vertebrae if v["grade"] is not None]
    suspected = sorted((v for v in graded if v["suspected"]), key=lambda v: -_screening_score(v))
    morph_graded = [v["morph_grade"] for v in vertebrae if v["morph_grade"] is not None]
    worst = max((v["grade"] for v in graded), default=None)
    if not vertebrae:
        message = "no vertebra found in this scan"
    elif plausibility.case_reason:
        message = f"segmentation anatomically implausible ({plausibility.case_reason}): nothing graded"
    elif models.grader is None:
        message = ("no learned grade was made (no grader); morphometric worst grade: "
                   + (f"G{max(morph_graded)}" if morph_graded else "none measured"))
    elif worst is None:
        message = "vertebrae found but none could be graded (all cut by the field of view)"
    elif suspected:
        message = "fracture suspected: " + ", ".join(f"{v['name']} (G{v['grade']})" for v in suspected)
    else:
        message = "no fracture detected"
    uncertain = [v["name"] for v in vertebrae if v["level_uncertain"]]
    if uncertain:
        message += (f"; level uncertain for {len(uncertain)} of {len(vertebrae)} vertebrae "
                    f"({', '.join(uncertain)}): names may be off by whole levels"
                    + ("" if naming_json["anchored"] else " (no rib or sacrum in view)"))
    case_json = {
        "schema_version": outputs.JSON_SCHEMA_VERSION, "case_id": case_id,
        "input": {"size": list(image.GetSize()), "spacing_mm": [round(s, 4) for s in image.GetSpacing()],
                  "orientation": orientation_code(image)},
        "vertebrae": vertebrae,
        "patient": {"worst_grade": worst, "any_fracture": bool(suspected),
                    "suspected": [v["name"] for v in suspected], "num_vertebrae": len(vertebrae),
                    "p_fracture": max((v["p_fracture"] for v in graded), default=None),
                    "p_fracture_fused": max((v["p_fracture_fused"] for v in graded
                                             if v["p_fracture_fused"] is not None), default=None),
                    "morph_worst_grade": max(morph_graded, default=None),
                    "morphometry": deformity.case_fields(morphometry),
                    "implausible": plausibility.case_reason, "level_uncertain": bool(uncertain),
                    "message": message},
        "segmentation": segmentation_info,
        "landmarks": landmarks.summary(image) if landmarks is not None else [],
        "naming": naming_json,
        "model": {**models.info, "screening": describe_rule(models.fusion)}, "warnings": case_warnings,
        "vfscreen_version": __version__}
    return {"json": case_json, "seg_image": seg_image, "verse_map": verse_map, "morphometry": morphometry,
            "gradcam": gradcam, "probabilities": probabilities, "region": box, "components": components,
            "landmarks": landmarks, "plausibility": plausibility, "timings_s": meter.seconds,
            "peak_rss_gb": meter.peak_gb}


def _screening_score(vertebra: dict) -> float:
    return vertebra["p_fracture_fused"] if vertebra["p_fracture_fused"] is not None else vertebra["p_fracture"]
