"""Which models a prediction run loads: the segmentation stage (vfscreen's own nnU-Net, another nnU-Net model named
by ``--seg_model`` or recorded by ``vfscreen_train --pretrained_seg``, or none when every case has a mask) and the
grader (none with ``--no_grader``, or - with a warning in every case's JSON - when the dataset has no trained grader
and the cases can still be measured)."""
from __future__ import annotations

from vfscreen.dataset import resolve_dataset_name
from vfscreen.errors import ConfigError
from vfscreen.inference.seg_model import NamedModelSegmenter
from vfscreen.inference.segmentation import Models, find_grader_folder, load_models
from vfscreen.segmentation_source import recorded_pretrained_segmentation


def _dataset_name_or_none(dataset) -> str | None:
    try:
        return str(resolve_dataset_name(dataset))
    except ConfigError:  # the dataset does not exist here
        return None


def load_prediction_models(dataset, configuration: str = "3d", folds=None, device: str = "cpu",
                           checkpoint: str = "final", saliency: bool = False, use_mirroring: bool | None = None,
                           seg_model=None, no_grader: bool = False, need_segmenter: bool = True,
                           some_masks: bool = False) -> Models:
    """Models for ``vfscreen_predict`` (see the module docstring); ConfigError naming what is missing.
    ``some_masks``: some cases have masks - then a missing segmentation model fails only the cases without one
    (``info["segmentation_unavailable"]`` says why) instead of the run."""
    dataset_name = _dataset_name_or_none(dataset)
    recorded = recorded_pretrained_segmentation(dataset_name) if dataset_name and seg_model is None else None
    named = None
    if need_segmenter and (seg_model is not None or recorded is not None):
        folder, model_folds, how = (seg_model, None, "--seg_model") if seg_model is not None else \
            (recorded["model_folder"], recorded["folds"], f"recorded by vfscreen_train --pretrained_seg for "
                                                          f"{dataset_name}")
        named = NamedModelSegmenter(folder, model_folds, device, checkpoint, use_mirroring, how=how)
    own_segmentation = need_segmenter and named is None
    use_grader = not no_grader
    grader_note = "--no_grader" if no_grader else None
    unavailable = None
    if own_segmentation and dataset_name is None:
        unavailable = (f"dataset {dataset!r} not found: no trained model to segment the cases without a mask "
                       "(give --masks for every case, or --seg_model FOLDER)")
        if not some_masks:
            raise ConfigError(unavailable)
        own_segmentation = False
    if use_grader and (dataset_name is None or find_grader_folder(dataset_name, configuration) is None):
        use_grader = False
        grader_note = f"no trained grader for {dataset_name or dataset} configuration {configuration}"
    if saliency and not use_grader:
        raise ConfigError("--saliency needs a grader (Grad-CAM of the learned grade)")
    models = None
    if use_grader or own_segmentation:
        try:
            models = load_models(dataset, configuration, folds, device, checkpoint, saliency=saliency,
                                 use_mirroring=use_mirroring, grader=use_grader, segmentation=own_segmentation)
        except ConfigError as error:
            if not (own_segmentation and some_masks):
                raise
            unavailable = str(error)  # the cases without a mask fail with it; the others go on
            models = load_models(dataset, configuration, folds, device, checkpoint, saliency=saliency,
                                 use_mirroring=use_mirroring, grader=True, segmentation=False) if use_grader else None
    if models is None:
        models = Models(segmenter=None, grader=None, info={"dataset": dataset_name, "configuration": configuration,
                                                            "segmentation": None, "grader": None})
    models.named_segmenter = named
    if unavailable:
        models.info["segmentation_unavailable"] = unavailable
    if named is not None:
        models.info["segmentation"] = named.info
    if grader_note:
        models.info["grader"] = None
        models.info["no_learned_grade"] = grader_note
    return models
