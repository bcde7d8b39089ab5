"""SupCon loss against a plain double loop over eq. 1 (Khosla et al. 2020), values and gradients."""
import math

import pytest
import torch
import torch.nn.functional as F

from vfscreen.training.grader.supcon import ProjectionQueue, SupConLoss


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


def reference_supcon_with_memory(projections: torch.Tensor, labels: list[int], memory: torch.Tensor,
                                 memory_labels: list[int], temperature: float) -> torch.Tensor:
    """Eq. 1 with the memory as extra keys: the contrast set of anchor i is every other view plus every memory entry;
    P(i) = its same-label members; anchors are the batch's views only."""
    batch_size, num_views, _ = projections.shape
    anchors = [(projections[b, v], labels[b]) for v in range(num_views) for b in range(batch_size)]
    keys = anchors + [(memory[m], memory_labels[m]) for m in range(memory.shape[0])]
    total, counted = 0.0, 0
    for i, (z_i, label_i) in enumerate(anchors):
        others = [k for k in range(len(keys)) if k != i]
        denominator = sum(torch.exp(torch.dot(z_i, keys[k][0]) / temperature) for k in others)
        positives = [k for k in others if keys[k][1] == label_i]
        if not positives:
            continue
        anchor_sum = sum(torch.log(torch.exp(torch.dot(z_i, keys[p][0]) / temperature) / denominator)
                         for p in positives)
        total = total - anchor_sum / len(positives)
        counted += 1
    return total / counted


def test_supcon_with_memory_matches_double_loop_values_and_gradients():
    generator = torch.Generator().manual_seed(3)
    labels, memory_labels = [0, 1, 1, 2], [2, 3, 0, 0, 1]  # grade 3 only in the memory: a negative, never an anchor
    raw = torch.randn(len(labels), 2, 8, generator=generator, dtype=torch.float64)
    memory = F.normalize(torch.randn(len(memory_labels), 8, generator=generator, dtype=torch.float64), dim=1)
    raw_reference = raw.clone().requires_grad_(True)
    raw_tested = raw.clone().requires_grad_(True)
    memory_tested = memory.clone()

    expected = reference_supcon_with_memory(F.normalize(raw_reference, dim=2), labels, memory, memory_labels, 0.2)
    loss = SupConLoss(0.2)
    actual = loss(F.normalize(raw_tested, dim=2), torch.tensor(labels), memory_tested, torch.tensor(memory_labels))
    torch.testing.assert_close(actual.double(), expected, rtol=1e-5, atol=1e-6)
    assert loss.last_skipped_anchors == 0  # grade 0's single sample has its other view and two memory positives
    expected.backward()
    actual.backward()
    torch.testing.assert_close(raw_tested.grad, raw_reference.grad, rtol=1e-4, atol=1e-6)

    # an empty memory is the plain loss; the memory changes it otherwise
    plain = SupConLoss(0.2)(F.normalize(raw, dim=2), torch.tensor(labels))
    empty = SupConLoss(0.2)(F.normalize(raw, dim=2), torch.tensor(labels), memory[:0], torch.tensor([], dtype=torch.long))
    torch.testing.assert_close(empty, plain)
    assert abs(plain.item() - actual.detach().item()) > 1e-3
    with pytest.raises(ValueError, match="memory_labels"):
        loss(F.normalize(raw, dim=2), torch.tensor(labels), memory, None)


def test_projection_queue_keeps_the_newest_views_in_view_major_order():
    queue = ProjectionQueue(5)
    assert queue.contents() == (None, None)
    first = torch.arange(12, dtype=torch.float32).reshape(2, 2, 3)  # (B=2, V=2, P=3)
    queue.push(first, torch.tensor([0, 1]))
    keys, labels = queue.contents()
    # view-major like the anchors: (b0, v0), (b1, v0), (b0, v1), (b1, v1)
    torch.testing.assert_close(keys, torch.stack([first[0, 0], first[1, 0], first[0, 1], first[1, 1]]))
    assert labels.tolist() == [0, 1, 0, 1]
    second = -torch.ones(1, 2, 3, requires_grad=True)
    queue.push(second, torch.tensor([3]))
    keys, labels = queue.contents()
    assert keys.shape == (5, 3) and labels.tolist() == [1, 0, 1, 3, 3]  # the oldest view left
    torch.testing.assert_close(keys[0], first[1, 0])
    assert not keys.requires_grad
    ProjectionQueue(0).push(first, torch.tensor([0, 1]))  # size 0: nothing kept
    assert ProjectionQueue(0).contents() == (None, None)
    with pytest.raises(ValueError):
        ProjectionQueue(-1)
