"""Per-class batch sampler: balanced batches, without replacement, pass ends with the smallest grade, deterministic."""
from collections import Counter

import numpy as np
import pytest

from vfscreen.training.grader.sampler import PerClassBatchSampler

GRADES = [0] * 23 + [1] * 7 + [2] * 9 + [3] * 12  # smallest grade: G1 with 7 samples


def test_batches_are_balanced_and_without_replacement():
    sampler = PerClassBatchSampler(GRADES, samples_per_class=3, seed=1)
    batches = sampler.batches(epoch=0)
    assert len(batches) == len(sampler) == 7 // 3
    seen = []
    for batch in batches:
        indices = [index for index, _ in batch]
        assert Counter(GRADES[i] for i in indices) == {0: 3, 1: 3, 2: 3, 3: 3}
        seen.extend(indices)
    assert len(seen) == len(set(seen)), "an index was drawn twice within a pass"


def test_deterministic_given_seed_and_epoch():
    first = PerClassBatchSampler(GRADES, 2, seed=5).batches(3)
    again = PerClassBatchSampler(GRADES, 2, seed=5).batches(3)
    other_epoch = PerClassBatchSampler(GRADES, 2, seed=5).batches(4)
    other_seed = PerClassBatchSampler(GRADES, 2, seed=6).batches(3)
    assert first == again
    assert first != other_epoch
    assert first != other_seed
    item_seeds = [seed for batch in first for _, seed in batch]
    assert len(set(item_seeds)) == len(item_seeds)


def test_iteration_follows_set_epoch():
    sampler = PerClassBatchSampler(GRADES, 2, seed=5)
    sampler.set_epoch(2)
    assert list(sampler) == sampler.batches(2)


def test_ranks_get_disjoint_balanced_shards():
    rank0 = PerClassBatchSampler(GRADES, 1, seed=2, world_size=2, rank=0).batches(0)
    rank1 = PerClassBatchSampler(GRADES, 1, seed=2, world_size=2, rank=1).batches(0)
    assert len(rank0) == len(rank1) == 7 // 2
    for batch0, batch1 in zip(rank0, rank1):
        for batch in (batch0, batch1):
            assert sorted(GRADES[i] for i, _ in batch) == [0, 1, 2, 3]
        assert not {i for i, _ in batch0} & {i for i, _ in batch1}


def test_every_grade_is_visited_over_passes():
    sampler = PerClassBatchSampler(GRADES, 3, seed=0)
    drawn = {i for epoch in range(30) for batch in sampler.batches(epoch) for i, _ in batch}
    assert drawn == set(range(len(GRADES)))


def test_too_few_samples_in_a_grade_is_refused():
    with pytest.raises(ValueError, match="smallest grade"):
        PerClassBatchSampler(GRADES, samples_per_class=8, seed=0)
    with pytest.raises(ValueError, match="smallest grade"):
        PerClassBatchSampler(np.array([0, 1, 2]), samples_per_class=1, seed=0)
