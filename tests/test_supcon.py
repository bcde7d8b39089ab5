"""SupCon loss against a plain double loop over eq. 1 (Khosla et al. 2020), values and gradients."""
import math

import pytest
import torch
import torch.nn.functional as F

from vfscreen.training.grader.supcon import SupConLoss


def reference_supcon(projections: torch.Tensor, labels: list[int], temperature: float) -> torch.Tensor:
    """projections (B, V, P); every view is an anchor; P(i) = other views with the same label; mean over anchors."""
    batch_size, num_views, _ = projections.shape
    anchors = [(b, v) for v in range(num_views) for b in range(batch_size)]
    total, counted = 0.0, 0
    for i, (bi, vi) in enumerate(anchors):
        z_i = projections[bi, vi]
        denominator = 0.0
        for k, (bk, vk) in enumerate(anchors):
            if k != i:
                denominator = denominator + torch.exp(torch.dot(z_i, projections[bk, vk]) / temperature)
        positives = [k for k, (bk, _) in enumerate(anchors) if k != i and labels[bk] == labels[bi]]
        if not positives:
            continue
        anchor_sum = 0.0
        for p in positives:
            bp, vp = anchors[p]
            anchor_sum = anchor_sum + torch.log(torch.exp(torch.dot(z_i, projections[bp, vp]) / temperature)
                                                / denominator)
        total = total - anchor_sum / len(positives)
        counted += 1
    return total / counted


@pytest.mark.parametrize("labels, temperature", [
    ([0, 0, 1, 1, 2, 2, 3, 3], 0.07),
    ([0, 1, 1, 2, 2, 2, 3], 0.5),  # classes 0 and 3 have a single sample: only its other view is positive
    ([0, 1, 2, 3], 1.0),  # every class single
])
def test_supcon_matches_double_loop(labels, temperature):
    generator = torch.Generator().manual_seed(len(labels))
    raw = torch.randn(len(labels), 2, 16, generator=generator, dtype=torch.float64)
    raw_reference = raw.clone().requires_grad_(True)
    raw_tested = raw.clone().requires_grad_(True)

    expected = reference_supcon(F.normalize(raw_reference, dim=2), labels, temperature)
    actual = SupConLoss(temperature)(F.normalize(raw_tested, dim=2), torch.tensor(labels))
    assert math.isfinite(actual.item())
    torch.testing.assert_close(actual.double(), expected, rtol=1e-5, atol=1e-6)

    expected.backward()
    actual.backward()
    assert raw_tested.grad.abs().sum() > 0
    torch.testing.assert_close(raw_tested.grad, raw_reference.grad, rtol=1e-4, atol=1e-6)


def test_supcon_pulls_same_class_together():
    """Loss is lower when same-class embeddings coincide and classes are apart than for the swapped arrangement."""
    basis = torch.eye(4, dtype=torch.float32)
    labels = torch.tensor([0, 0, 1, 1])
    clustered = torch.stack([basis[0], basis[0], basis[1], basis[1]])[:, None].repeat(1, 2, 1)
    mixed = torch.stack([basis[0], basis[1], basis[0], basis[1]])[:, None].repeat(1, 2, 1)
    loss = SupConLoss(0.1)
    assert loss(clustered, labels) < loss(mixed, labels)


def test_supcon_rejects_bad_shapes():
    with pytest.raises(ValueError):
        SupConLoss(0.07)(torch.randn(4, 16), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError):
        SupConLoss(0.0)
