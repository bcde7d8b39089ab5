"""Supervised contrastive loss (Khosla et al., NeurIPS 2020; eq. 1 of Wei et al. 2022), SupContrast-style.

Every view of every sample is an anchor ("all" contrast mode). For anchor i, the positives P(i) are all other views
whose sample has the same label (always including the other view(s) of i itself, so a class with a single sample in
the batch still has positives); the denominator runs over every view except i:

    L = mean_i  -1/|P(i)| * sum_{p in P(i)} log( exp(z_i.z_p / tau) / sum_{k != i} exp(z_i.z_k / tau) )

The paper writes a sum over anchors; we average (as SupContrast does), which only rescales the loss by the batch
size. Anchors without any positive (only possible with a single view of a grade's only crop) are left out of the
mean and counted in ``last_skipped_anchors`` (the trainer logs them).

``normalised`` rescales each anchor's loss to (L_i - log |P(i)|) / (log(N - 1) - log |P(i)|): 1 = chance (every
other view equally similar), 0 = the floor (positives share all the probability mass), so runs with different
numbers of views or positives per anchor can be compared.

``memory`` (optional, plan ``loss.queue_size``): detached projections of earlier batches (:class:`ProjectionQueue`,
a memory bank as in MoCo, He et al. 2020, without its momentum encoder) join the contrast set as keys, never as
anchors: each anchor gets their same-grade entries as extra positives and the rest as extra negatives, so a batch of
3 crops per grade still contrasts against many. Their features are a few steps stale (no momentum encoder).
``normalised`` always uses the batch alone, so runs with and without a queue stay comparable.
"""
from __future__ import annotations

import torch
from torch import nn


class SupConLoss(nn.Module):
    def __init__(self, temperature: float = 0.07):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"SupCon temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.last_skipped_anchors = 0

    def forward(self, projections: torch.Tensor, labels: torch.Tensor, memory: torch.Tensor | None = None,
                memory_labels: torch.Tensor | None = None) -> torch.Tensor:
        """projections: (B, V, P) L2-normalised embeddings, V views of each of B samples; labels: (B,) int;
        memory: (M, P) detached L2-normalised keys with memory_labels (M,), or None.

        Returns a scalar tensor.
        """
        anchor_losses, num_positives = self.per_anchor(projections, labels, memory, memory_labels)
        has_positive = num_positives > 0
        self.last_skipped_anchors = int((~has_positive).sum())
        if not bool(has_positive.any()):
            return projections.sum() * 0.0  # no anchor has a positive: nothing to learn, keep the graph
        return anchor_losses[has_positive].mean()

    def normalised(self, projections: torch.Tensor, labels: torch.Tensor) -> float | None:
        """Mean over anchors with a positive of (L_i - log|P(i)|) / (log(N-1) - log|P(i)|); None without any."""
        anchor_losses, num_positives = self.per_anchor(projections, labels)
        num_anchors = anchor_losses.shape[0]
        usable = (num_positives > 0) & (num_positives < num_anchors - 1)
        if not bool(usable.any()):
            return None
        floor = torch.log(num_positives[usable].double())
        chance = torch.log(torch.tensor(float(num_anchors - 1), dtype=torch.float64))
        return float(((anchor_losses[usable].double() - floor) / (chance - floor)).mean())

    def per_anchor(self, projections: torch.Tensor, labels: torch.Tensor, memory: torch.Tensor | None = None,
                   memory_labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss of each anchor (N,), its number of positives (N,)); N = V * B anchors in view-major order; the loss
        of an anchor without positive is 0. ``memory`` (M, P) / ``memory_labels`` (M,): extra keys (see above)."""
        if projections.ndim != 3:
            raise ValueError(f"projections must be (batch, views, dim), got shape {tuple(projections.shape)}")
        batch_size = projections.shape[0]
        if labels.shape != (batch_size,):
            raise ValueError(f"labels must be ({batch_size},), got shape {tuple(labels.shape)}")
        device = projections.device
        anchors, anchor_labels = view_major(projections.float(), labels)  # (N, P), (N,)
        num_anchors = anchors.shape[0]
        keys, key_labels = anchors, anchor_labels  # (N + M, P), (N + M,): the anchors, then the memory
        if memory is not None and memory.shape[0] > 0:
            if memory_labels is None or memory_labels.shape != (memory.shape[0],):
                raise ValueError("memory needs memory_labels of shape (M,)")
            keys = torch.cat([anchors, memory.to(anchors)], dim=0)
            key_labels = torch.cat([anchor_labels, memory_labels.to(anchor_labels)], dim=0)

        similarity = anchors @ keys.T / self.temperature  # (N, N + M)
        # subtract each row's maximum for numerical stability (cancels in the log-ratio)
        similarity = similarity - similarity.max(dim=1, keepdim=True).values.detach()

        not_self = ~torch.eye(num_anchors, keys.shape[0], dtype=torch.bool, device=device)  # (N, N + M)
        positive = (anchor_labels[:, None] == key_labels[None, :]) & not_self  # (N, N + M)

        # log of the denominator sum_{k != i} exp(s_ik) over batch and memory keys: (N, 1)
        log_denominator = torch.logsumexp(similarity.masked_fill(~not_self, float("-inf")), dim=1, keepdim=True)
        log_probability = similarity - log_denominator  # (N, N + M)

        num_positives = positive.sum(dim=1)  # (N,)
        sum_log_probability_positive = (log_probability * positive).sum(dim=1)  # (N,)
        return -sum_log_probability_positive / num_positives.clamp_min(1), num_positives


def view_major(projections: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """projections (B, V, P), labels (B,) -> (V * B, P), (V * B,): all samples of view 0, then of view 1, ..."""
    return torch.cat(torch.unbind(projections, dim=1), dim=0), labels.repeat(projections.shape[1])


class ProjectionQueue:
    """First-in first-out memory of the last ``size`` detached projections and their grades (see the module
    docstring). Per process (under DDP each rank keeps its own); not checkpointed: a resumed run refills it."""

    def __init__(self, size: int):
        if size < 0:
            raise ValueError(f"queue size must be >= 0, got {size}")
        self.size = int(size)
        self.keys: torch.Tensor | None = None  # (M, P), M <= size, oldest first
        self.labels: torch.Tensor | None = None  # (M,)

    def contents(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return self.keys, self.labels

    def push(self, projections: torch.Tensor, labels: torch.Tensor) -> None:
        """projections: (B, V, P), labels: (B,): every view enters, view-major like the anchors; the oldest leave."""
        if self.size == 0:
            return
        views, view_labels = view_major(projections.detach().float(), labels.detach())  # (V * B, P), (V * B,)
        if self.keys is not None:
            views, view_labels = torch.cat([self.keys, views]), torch.cat([self.labels, view_labels])
        self.keys, self.labels = views[-self.size:], view_labels[-self.size:]
