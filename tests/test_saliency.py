"""Grad-CAM of the grader against an independent computation: autograd's gradients of the class logit with respect to
the encoder's last feature maps (the textbook Grad-CAM, Selvaraju et al.), on a tiny randomly initialised grader."""
import pytest
import torch

from vfscreen.core.grader_network import build_grader
from vfscreen.inference.saliency import class_activation_maps

NETWORK = {"block": "BasicBlockD", "features_per_stage": [4, 8], "n_blocks_per_stage": [1, 1], "strides": [1, 2],
           "kernel_sizes": [3, 3], "projection_dim": 8, "num_classes": 4}


def autograd_grad_cam(network, patch: torch.Tensor, grade: int) -> torch.Tensor:
    """ReLU(sum_k alpha_k A_k), alpha_k = spatial mean of d logit_grade / d A_k, with A = encoder(patch) and the logit
    computed from A through the network's own pooling and classification head (gradients flow even for a SupCon
    grader, whose forward detaches the classifier input)."""
    feature_maps = network.encoder(patch)  # (1, F, d, h, w)
    feature_maps.retain_grad()
    logits = network.classification_head(feature_maps.mean(dim=(2, 3, 4)))  # (1, 4)
    logits[0, grade].backward()
    alpha = feature_maps.grad.mean(dim=(2, 3, 4), keepdim=True)  # (1, F, 1, 1, 1)
    return torch.relu((alpha * feature_maps).sum(dim=1))[0].detach()  # (d, h, w)


@pytest.mark.parametrize("loss", ["supcon", "ce"])
def test_class_activation_maps_equal_autograd_grad_cam(loss):
    torch.manual_seed(0)
    network = build_grader(NETWORK, loss).eval()
    patch = torch.randn(1, 3, 16, 16, 16)
    maps, probabilities = class_activation_maps(network, patch)  # (1, 4, d, h, w), (1, 4)
    voxels = maps.shape[2] * maps.shape[3] * maps.shape[4]
    for grade in range(4):
        expected = autograd_grad_cam(network, patch.clone(), grade)
        assert expected.abs().max() > 0  # the comparison is not between two zero maps
        # the maps are Grad-CAM times the number of feature-map voxels (the pooling's 1/N); normalised per vertebra
        assert torch.allclose(torch.relu(torch.from_numpy(maps[0, grade])) / voxels, expected, rtol=1e-4, atol=1e-6)
    assert probabilities.shape == (1, 4) and abs(float(probabilities.sum()) - 1) < 1e-5
