"""3D Grad-CAM of the grader per vertebra, pasted back into the input image (``<case>_gradcam.nii.gz``).

The grader's classifier is linear on globally average-pooled encoder features, so Grad-CAM's channel weights (the
spatially averaged gradients of the class logit) are exactly the classifier's weights of that class divided by the
number of voxels: cam_c = ReLU(sum_k W[c, k] * A_k), A = the encoder's last feature maps (B, F, d, h, w). This holds
even when the logits are computed from detached features (SupCon mode), where autograd would return zero. The class
is the ensemble's predicted grade; maps are averaged over folds, upsampled to the patch, cut back to the crop,
normalised to [0, 1] per vertebra and resampled onto the input grid (maximum where vertebrae overlap).
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as functional

from vfscreen.preprocessing.crops import paste_crops_to_image, place_in_patch, take_from_patch


def class_activation_maps(network, patches) -> tuple[np.ndarray, np.ndarray]:
    """patches (B, C, D, H, W) tensor -> (maps for every class (B, 4, d, h, w), softmax (B, 4)) of one network."""
    captured = {}
    handle = network.encoder.register_forward_hook(lambda module, inputs, output: captured.update(maps=output))
    try:
        with torch.inference_mode():
            _, logits, _ = network(patches)
            feature_maps = captured["maps"]  # (B, F, d, h, w)
            weights = network.classification_head.weight  # (4, F)
            maps = torch.einsum("cf,bfdhw->bcdhw", weights, feature_maps)  # (B, 4, d, h, w)
    finally:
        handle.remove()
    return maps.float().cpu().numpy(), torch.softmax(logits.float(), dim=1).cpu().numpy()


def grad_cam_image(image: sitk.Image, crops: list, grader) -> sitk.Image:
    """Grad-CAM of every crop (VertebraCrop) for the ensemble's predicted grade, on ``image``'s grid (float32)."""
    items = []
    for crop in crops:
        patch = torch.from_numpy(place_in_patch(crop, grader.patch_size)[None].astype(np.float32)).to(grader.device)
        fold_maps, fold_probabilities = zip(*(class_activation_maps(network, patch) for network in grader.networks))
        grade = int(np.argmax(np.mean([p[0] for p in fold_probabilities], axis=0)))
        cam = np.maximum(np.mean([maps[0, grade] for maps in fold_maps], axis=0), 0.0)  # (d, h, w)
        upsampled = functional.interpolate(torch.from_numpy(cam)[None, None], size=tuple(grader.patch_size),
                                           mode="trilinear", align_corners=False)[0, 0].numpy()
        in_crop = take_from_patch(upsampled, crop.shape)
        peak = float(in_crop.max())
        items.append((in_crop / peak if peak > 0 else in_crop, crop))
    return paste_crops_to_image(items, image, reduce=np.maximum)
