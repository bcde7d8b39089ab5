"""Preprocessing for the grader: THE vertebra crop function (:mod:`.crops`) and the grader-crop store
(:mod:`.grader_crops`, ``nnUNet_preprocessed/<Dataset>/vfscreen_crops_<configuration>/``)."""
from vfscreen.preprocessing.crops import (VertebraCrop, apply_window, extract_vertebra_crops,  # noqa: F401
                                          num_channels, paste_crop_to_image, paste_crops_to_image, patch_shape,
                                          place_in_patch, take_from_patch, validate_crop_plan, window_bounds)
from vfscreen.preprocessing.grader_crops import (crops_folder, load_crop, preprocess_grader_crops,  # noqa: F401
                                                 read_crops_index)
