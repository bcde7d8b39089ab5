"""The label-consistency chain model on hand-made component/probability tables and on a tiny label volume."""
import numpy as np
import SimpleITK as sitk

from vfscreen.inference.chain_model import ChainModel, assign_labels
from vfscreen.inference.label_consistency import make_labels_consistent
from vfscreen.labels import NUM_CLASSES, NUM_VERTEBRA_CLASSES, VERSE_TO_CLASS, NAME_TO_VERSE

K = NUM_VERTEBRA_CLASSES


def cls(name: str) -> int:
    return VERSE_TO_CLASS[NAME_TO_VERSE[name]]


def table(rows: list[dict[str, float]]) -> np.ndarray:
    """Probability rows over classes 1..K; unspecified mass spread evenly."""
    result = np.zeros((len(rows), K))
    for row_index, row in enumerate(rows):
        rest = (1.0 - sum(row.values())) / (K - len(row))
        result[row_index] = rest
        for name, probability in row.items():
            result[row_index, cls(name) - 1] = probability
    return result


def names(new_class) -> list:
    inverse = {class_id: name for name, class_id in ((n, cls(n)) for n in NAME_TO_VERSE)}
    return [inverse.get(int(c), None) for c in new_class]


def test_clean_sequence_is_kept_with_high_confidence():
    probabilities = table([{"T11": 0.9}, {"T12": 0.9}, {"L1": 0.9}, {"L2": 0.9}])
    new_class, confidence, marginals = assign_labels(probabilities)
    assert names(new_class) == ["T11", "T12", "L1", "L2"]
    assert np.all(confidence > 0.9)
    np.testing.assert_allclose(marginals.sum(axis=1), 1.0, atol=1e-9)


def test_swapped_labels_are_reordered():
    # the network says L2 above L1, but weakly; neighbours are certain
    probabilities = table([{"T12": 0.95}, {"L2": 0.55, "L1": 0.4}, {"L1": 0.55, "L2": 0.4}, {"L3": 0.95}])
    new_class, confidence, _ = assign_labels(probabilities)
    assert names(new_class) == ["T12", "L1", "L2", "L3"]
    # the chain's evidence from the neighbours makes the corrected labels more certain than the network was
    assert confidence[1] > 0.4 and confidence[2] > 0.4
    # without confident neighbours the same two components stay ambiguous
    alone, alone_confidence, _ = assign_labels(probabilities[1:3])
    assert alone_confidence.max() < confidence[1:3].min()


def test_duplicated_label_is_resolved_by_its_neighbours():
    # two components both most likely "L2", the lower one has some L3 evidence and L4 follows
    probabilities = table([{"L1": 0.9}, {"L2": 0.8}, {"L2": 0.6, "L3": 0.35}, {"L4": 0.9}])
    new_class, _, _ = assign_labels(probabilities)
    assert names(new_class) == ["L1", "L2", "L3", "L4"]
    assert len(set(new_class[new_class > 0])) == len(new_class[new_class > 0])


def test_missing_vertebra_leaves_a_gap_and_t13_is_optional():
    # L2 missing (e.g. not segmented): labels skip it instead of shifting the confident ones
    probabilities = table([{"T12": 0.9}, {"L1": 0.9}, {"L3": 0.9}, {"L4": 0.9}])
    new_class, _, _ = assign_labels(probabilities)
    assert names(new_class) == ["T12", "L1", "L3", "L4"]
    # T12 -> L1 without T13 is normal anatomy: it must cost nothing
    free = assign_labels(table([{"T12": 0.9}, {"L1": 0.9}]))[1]
    assert free.min() > 0.95


def test_component_matching_nothing_is_dropped():
    model = ChainModel(drop_probability=1e-2)
    # the middle component claims C3 between two lumbar vertebrae: impossible order -> dropped
    probabilities = table([{"L1": 0.95}, {"C3": 0.97}, {"L2": 0.95}])
    new_class, confidence, marginals = assign_labels(probabilities, model)
    assert names(new_class) == ["L1", None, "L2"]
    assert new_class[1] == 0 and confidence[1] > 0.5 and marginals[1, 0] == confidence[1]


def test_empty_table():
    new_class, confidence, marginals = assign_labels(np.zeros((0, K)))
    assert new_class.shape == (0,) and marginals.shape == (0, K + 1)


def _volume_with_blocks(labels_top_down, direction_flip=False):
    """Stacked 6x8x8-voxel blocks along the array's first axis with the given class ids; optional fragment."""
    array = np.zeros((8 * len(labels_top_down) + 4, 12, 12), np.uint8)
    for position, class_id in enumerate(labels_top_down):
        array[2 + 8 * position: 2 + 8 * position + 6, 2:10, 2:10] = class_id
    array[0, 0, 0] = cls("C1")  # a one-voxel fragment
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.5, 1.5, 2.0))
    # array axis 0 (k) points to world -z (feet) in this image: first block is the most cranial
    image.SetDirection((1, 0, 0, 0, -1, 0, 0, 0, -1) if not direction_flip else (1, 0, 0, 0, 1, 0, 0, 0, 1))
    return array, image


def test_volume_duplicate_is_relabelled_and_fragment_dropped():
    array, image = _volume_with_blocks([cls("L1"), cls("L2"), cls("L2"), cls("L4")])
    verse_map, components, _ = make_labels_consistent(array, image, min_volume_mm3=10.0)
    assert [c.class_id for c in components] == [cls("L1"), cls("L2"), cls("L2"), cls("L4")]
    # one-hot-ish evidence (0.9): the duplicate is relabelled L3 or dropped, never kept as a second L2
    values = [int(np.unique(verse_map[2 + 8 * p: 8 + 8 * p, 2:10, 2:10])[0]) for p in range(4)]
    kept = [v for v in values if v]
    assert len(kept) == len(set(kept)) and values[0] == NAME_TO_VERSE["L1"] and values[3] == NAME_TO_VERSE["L4"]
    assert verse_map[0, 0, 0] == 0  # fragment dropped


def test_volume_order_follows_world_not_array():
    # same array, but now array axis 0 points to the head: the last block is the most cranial
    array, image = _volume_with_blocks([cls("L3"), cls("L2"), cls("L1")], direction_flip=True)
    verse_map, components, _ = make_labels_consistent(array, image, min_volume_mm3=10.0)
    assert [c.new_class_id for c in components] == [cls("L1"), cls("L2"), cls("L3")]
    assert verse_map[4, 5, 5] == NAME_TO_VERSE["L3"]


def test_variant_prior_names_five_lumbar_vertebrae_l1_to_l5():
    # equal evidence for every lumbar class: L1-L5 (common anatomy), not L2-L6 (the L6 variant)
    lumbar = {name: 1.0 / 6 for name in ("L1", "L2", "L3", "L4", "L5", "L6")}
    new_class, _, _ = assign_labels(table([lumbar] * 5))
    assert names(new_class) == ["L1", "L2", "L3", "L4", "L5"]
    # strong evidence still wins over the prior
    assert names(assign_labels(table([{"T12": 0.9}, {"T13": 0.9}, {"L1": 0.9}]))[0]) == ["T12", "T13", "L1"]


def _group_probabilities(groups_top_down, shape):
    """(3, Z, Y, X) region sigmoids (vertebra, thoracic, lumbar) matching a group-id volume, with some noise."""
    from vfscreen.labels import SPINE_REGION_GROUP_IDS

    rng = np.random.default_rng(0)
    probabilities = np.zeros((3,) + shape, np.float32)
    for position, group in enumerate(groups_top_down):
        block = (slice(2 + 8 * position, 8 + 8 * position), slice(2, 10), slice(2, 10))
        probabilities[0][block] = 0.9
        probabilities[1][block] = 0.8 if group == SPINE_REGION_GROUP_IDS["thoracic"] else 0.1
        probabilities[2][block] = 0.8 if group == SPINE_REGION_GROUP_IDS["lumbar"] else 0.1
    return np.clip(probabilities + rng.normal(0, 0.05, probabilities.shape), 0, 1)


def test_region_grouped_network_is_named_by_the_thoracolumbar_transition():
    # a network trained on the coarse regions says only "thoracic" or "lumbar"; three thoracic components above four
    # lumbar ones are T10-T12 and L1-L4 (the transition pins every name)
    from vfscreen.labels import SPINE_REGION_GROUP_IDS

    thoracic, lumbar = SPINE_REGION_GROUP_IDS["thoracic"], SPINE_REGION_GROUP_IDS["lumbar"]
    groups = [thoracic] * 3 + [lumbar] * 4
    array, image = _volume_with_blocks(groups)
    array[0, 0, 0] = 0
    for probabilities in (_group_probabilities(groups, array.shape), None):
        verse_map, components, _ = make_labels_consistent(array, image, probabilities, grouping="spine_regions",
                                                       min_volume_mm3=10.0)
        found = [names([c.new_class_id])[0] for c in components]
        assert found == ["T10", "T11", "T12", "L1", "L2", "L3", "L4"]
        assert verse_map[4, 5, 5] == NAME_TO_VERSE["T10"] and verse_map[-6, 5, 5] == NAME_TO_VERSE["L4"]


def _touching_blocks(core_probability_below):
    """Two 10x20x20-voxel vertebra blocks (1 mm, 4 ml each) touching across a 2-voxel 'disc' of lower P(vertebra),
    grouped network outputs (3, Z, Y, X). Returns (group-id map, image, probabilities)."""
    from vfscreen.labels import SPINE_REGION_GROUP_IDS

    shape = (26, 24, 24)
    class_map = np.zeros(shape, np.uint8)
    class_map[2:24, 2:22, 2:22] = SPINE_REGION_GROUP_IDS["lumbar"]
    probabilities = np.zeros((3,) + shape, np.float32)
    probabilities[0][2:24, 2:22, 2:22] = 0.97
    probabilities[0][12:14, 2:22, 2:22] = 0.55  # the disc: still foreground, the network is unsure
    probabilities[0][14:24, 2:22, 2:22] = core_probability_below
    probabilities[2][class_map > 0] = 0.9
    image = sitk.GetImageFromArray(class_map)
    image.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, -1))  # array axis 0 runs head -> feet
    return class_map, image, probabilities


def test_vertebrae_touching_across_a_disc_are_split_at_the_disc():
    class_map, image, probabilities = _touching_blocks(0.97)
    verse_map, components, _ = make_labels_consistent(class_map, image, probabilities, grouping="spine_regions")
    assert len(components) == 2 and [c.volume_mm3 for c in components] == [4400.0, 4400.0]  # the disc is shared
    upper, lower = np.unique(verse_map[2:12, 2:22, 2:22]), np.unique(verse_map[14:24, 2:22, 2:22])
    assert len(upper) == 1 and len(lower) == 1 and upper[0] != lower[0] and 0 not in (upper[0], lower[0])
    # without probabilities (or with splitting off) the merged component stays one vertebra
    assert len(make_labels_consistent(class_map, image, None, grouping="spine_regions")[1]) == 1
    assert len(make_labels_consistent(class_map, image, probabilities, grouping="spine_regions",
                                      min_core_mm3=None)[1]) == 1
    # a network with one class per vertebra: components are not split (its classes separate neighbours)
    one_class = np.where(class_map > 0, VERSE_TO_CLASS[NAME_TO_VERSE["L2"]], 0).astype(np.uint8)
    softmax = np.zeros((NUM_CLASSES,) + class_map.shape, np.float32)
    softmax[0] = 1.0 - probabilities[0]
    softmax[VERSE_TO_CLASS[NAME_TO_VERSE["L2"]]] = probabilities[0]
    assert len(make_labels_consistent(one_class, image, softmax)[1]) == 1


def test_a_small_core_is_not_a_vertebra_of_its_own():
    # the lower block's core is only 1 ml above 0.6 (P 0.58 elsewhere): below MIN_CORE_MM3 it is not split off
    class_map, image, probabilities = _touching_blocks(0.58)
    probabilities[0][20:24, 6:18, 6:18] = 0.97  # 4 x 12 x 12 = 576 mm3 core
    assert len(make_labels_consistent(class_map, image, probabilities, grouping="spine_regions")[1]) == 1


def test_split_parts_cover_the_component_exactly():
    from vfscreen.inference.label_consistency import split_touching

    rng = np.random.default_rng(1)
    mask = np.zeros((30, 12, 12), bool)
    mask[1:29, 2:10, 2:10] = True
    probability = np.where(mask, 0.9, 0.0) + rng.uniform(0, 0.05, mask.shape)
    probability[10] = probability[20] = 0.65  # three cores separated by two discs
    parts = split_touching(mask, probability, (1.0, 1.0, 1.0), min_seed_voxels=100)
    assert len(parts) == 3
    covered = np.zeros(mask.shape, int)
    for box, piece in parts:
        assert piece.shape == tuple(s.stop - s.start for s in box) and piece.all(axis=(1, 2)).any()
        covered[box] += piece
    assert np.array_equal(covered, mask.astype(int))  # disjoint and covering
    heights = [box[0].stop - box[0].start for box, _ in parts]
    assert sum(heights) == 28 and max(heights) <= 11  # each part in its own box, not the component's 28 slices


def test_hundreds_of_noise_fragments_are_capped_with_a_warning():
    """A noise scan's hundreds of fragments: only the largest few are examined (no per-fragment work beyond that)."""
    import pytest

    from vfscreen.inference.label_consistency import find_components

    class_map = np.zeros((20, 60, 60), np.uint8)
    class_map[::2, ::3, ::3] = VERSE_TO_CLASS[NAME_TO_VERSE["L1"]]  # 6,000 isolated voxels
    class_map[2:12, 10:30, 10:30] = VERSE_TO_CLASS[NAME_TO_VERSE["L1"]]  # one real vertebra
    image = sitk.GetImageFromArray(class_map)
    with pytest.warns(UserWarning, match="connected components, the 5 largest kept"):
        _, components = find_components(class_map, image, max_components=5, min_volume_mm3=50)
    assert len(components) == 1 and components[0].volume_mm3 >= 10 * 20 * 20
