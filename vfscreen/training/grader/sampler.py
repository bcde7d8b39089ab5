"""The per-class batch sampler of Wei et al. 2022.

Every batch holds ``samples_per_class`` crops of every grade, drawn without replacement from a fresh permutation
of each grade; a pass (the paper's "epoch") ends when the smallest grade is exhausted. The permutations of pass
``epoch`` are a pure function of ``(seed, epoch)``, so the sampler's whole state is the epoch number: resuming at
epoch e replays exactly the batches an uninterrupted run would have drawn.

Each yielded item is ``(dataset_index, item_seed)``: ``item_seed`` seeds that item's augmentation in whatever
worker process loads it, which makes augmented batches independent of the number of workers and of resumption.

Distributed training: with ``world_size`` ranks a global batch holds ``samples_per_class * world_size`` crops per
grade, and rank r receives its own ``samples_per_class`` of each grade (data sharded per rank, still balanced).
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np


class PerClassBatchSampler:
    def __init__(self, class_of_index: Sequence[int], samples_per_class: int, seed: int, num_classes: int = 4,
                 world_size: int = 1, rank: int = 0):
        if samples_per_class < 1:
            raise ValueError(f"samples_per_class must be >= 1, got {samples_per_class}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        class_of_index = np.asarray(class_of_index, dtype=np.int64)
        self.indices_of_class = [np.flatnonzero(class_of_index == c) for c in range(num_classes)]
        smallest = min(len(indices) for indices in self.indices_of_class)
        self.samples_per_class = int(samples_per_class)
        self.seed = int(seed)
        self.world_size = int(world_size)
        self.rank = int(rank)
        self.per_class_per_global_batch = self.samples_per_class * self.world_size
        if smallest < self.per_class_per_global_batch:
            counts = [len(indices) for indices in self.indices_of_class]
            raise ValueError(f"the smallest grade has {smallest} samples (per grade: {counts}), fewer than "
                             f"samples_per_class x ranks = {self.per_class_per_global_batch}")
        self.num_batches = smallest // self.per_class_per_global_batch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_batches

    def batches(self, epoch: int) -> list[list[tuple[int, int]]]:
        """This rank's batches of pass ``epoch``: lists of (dataset_index, item_seed), grade-major within a batch."""
        rng = np.random.default_rng([self.seed, epoch])
        permutations = [rng.permutation(indices) for indices in self.indices_of_class]
        n, global_n = self.samples_per_class, self.per_class_per_global_batch
        batches = []
        for batch_number in range(self.num_batches):
            batch = []
            for class_id, permutation in enumerate(permutations):
                start = batch_number * global_n + self.rank * n
                for position in range(start, start + n):
                    item_seed = int(np.random.SeedSequence(
                        [self.seed, epoch, batch_number, class_id, position]).generate_state(1)[0])
                    batch.append((int(permutation[position]), item_seed))
            batches.append(batch)
        return batches

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(self.batches(self.epoch))
