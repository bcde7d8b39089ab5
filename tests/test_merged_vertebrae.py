"""Two vertebrae in one component, one vertebra in two (vfscreen.inference.merged_vertebrae) and small rib pieces
(landmarks)."""
import numpy as np
import SimpleITK as sitk

from vfscreen.inference.merged_vertebrae import join_pieces, split_merged


def _grid(shape=(80, 12, 12)):
    image = sitk.Image(shape[::-1], sitk.sitkUInt8)
    image.SetSpacing((1.0, 1.0, 1.0))
    return image


def _block(z_low, z_high):
    z, y, x = np.mgrid[z_low:z_high, 3:9, 3:9]
    return np.stack([z.ravel(), y.ravel(), x.ravel()], axis=1)


def test_a_component_twice_its_neighbours_size_spanning_two_pitches_is_cut_in_two():
    # vertebrae 8 voxels high every 10 voxels (z up = array index up, identity direction); blocks 3 and 4 merged
    blocks = [_block(2 + 10 * i, 10 + 10 * i) for i in range(7)]
    merged = np.concatenate([blocks[3], blocks[4], _block(40, 42)])  # the unresolved disc too
    voxel_lists, halves = split_merged(blocks[:3] + [merged] + blocks[5:], _grid())
    assert len(voxel_lists) == 7 and halves == [False, False, True, True, False, False, False]
    # head -> feet is decreasing z (blocks 6, 5, then the halves of 4 + 3); the halves sit where the two vertebrae are
    centres = [v[:, 0].mean() for v in voxel_lists]
    assert centres == sorted(centres, reverse=True)
    assert abs(centres[2] - 45.5) < 1.5 and abs(centres[3] - 35.5) < 1.5


def test_neither_a_large_vertebra_in_its_place_nor_a_cut_one_is_split():
    blocks = [_block(2 + 10 * i, 10 + 10 * i) for i in range(7)]
    wide = np.concatenate([_block(32, 40), _block(32, 40) + [0, 0, 6]])  # twice as wide, same height and place
    voxel_lists, halves = split_merged(blocks[:3] + [wide] + blocks[4:], _grid((80, 12, 18)))
    assert not any(halves) and len(voxel_lists) == 7
    # merged vertebrae at the image's first slices are cut by the field of view: left as they are
    merged_at_edge = np.concatenate([_block(0, 8), _block(10, 18)])
    voxel_lists, halves = split_merged([merged_at_edge] + [_block(22 + 10 * i, 30 + 10 * i) for i in range(4)],
                                       _grid())
    assert not any(halves)


def _box(z_low, z_high, x_low, x_high):
    z, y, x = np.mgrid[z_low:z_high, 3:9, x_low:x_high]
    return np.stack([z.ravel(), y.ravel(), x.ravel()], axis=1)


def test_touching_pieces_at_one_level_are_joined_and_a_separate_piece_is_not():
    """Seven vertebrae 8 voxels high every 10; the network split the fourth into a left and a right half (they
    touch, centroids at the same height); beside the second lies a separate piece at its level (a rib called
    vertebra). The halves become one component of two pieces; the separate piece stays apart."""
    reference = _grid((80, 12, 40))
    blocks = [_box(2 + 10 * i, 10 + 10 * i, 12, 24) for i in range(7)]
    left, right = _box(32, 40, 12, 18), _box(32, 40, 18, 24)
    lateral = _box(53, 57, 30, 38)  # 6 voxels beside the vertebra at z 52-60: not touching
    voxel_lists, counts = join_pieces(blocks[:3] + [left, right, lateral] + blocks[4:], reference)
    assert counts == [1, 1, 1, 1, 2, 1, 1, 1]  # head -> feet: z 62-70, 52-60, the lateral piece, ..., the halves
    assert sorted(map(len, voxel_lists)) == sorted([len(lateral)] + [len(block) for block in blocks])
    joined = voxel_lists[counts.index(2)]
    assert {tuple(v) for v in joined} == {tuple(v) for v in blocks[3]}
    # neighbouring vertebrae (a pitch apart) are never joined, and too few components give no pitch
    assert join_pieces(blocks, reference)[1] == [1] * 7
    assert join_pieces([left, right, blocks[0]], reference)[1] == [1, 1, 1]


def _four_vertebrae_three_ribs():
    """(grid, component map, centroids, rib mask): four vertebrae 20 voxels apart (z 70, 50, 30, 10), a rib of
    9 x 6 x 19 = 1,026 mm3 beside each of the first three."""
    reference = _grid((80, 12, 60))
    component_map = np.zeros((80, 12, 60), np.int32)
    centroids = []
    for row in range(4):
        z = 70 - 20 * row
        component_map[z - 5:z + 5, 3:9, 25:35] = row + 1
        centroids.append([30.0, 6.0, float(z)])
    rib_mask = np.zeros(component_map.shape, bool)
    for row in range(3):
        z = 70 - 20 * row
        rib_mask[z - 4:z + 5, 3:9, 36:55] = True
    return reference, component_map, centroids, rib_mask


def test_a_sliver_of_rib_beside_a_cut_vertebra_is_not_a_rib():
    """Ribs of ~1,000 mm3 on three vertebrae, and a 150 mm3 sliver touching the fourth (cut by the field of view):
    the sliver is a fragment (under MIN_RIB_FRACTION of the median rib), not a rib of the fourth vertebra."""
    from vfscreen.inference.landmarks import MIN_RIB_FRACTION, MIN_RIB_MM3, find_landmarks

    reference, component_map, centroids, rib_mask = _four_vertebrae_three_ribs()
    rib_mask[10:12, 4:8, 36:55] = True  # 2 x 4 x 19 = 152 mm3 beside the fourth vertebra (z 5-15)
    assert 152 >= MIN_RIB_MM3 and 152 < MIN_RIB_FRACTION * 1026
    evidence = find_landmarks(component_map, np.array(centroids), rib_mask, None, reference)
    assert evidence.rib_bearing == [0, 1, 2]
    assert any("rib piece(s) under" in note for note in evidence.notes)


def test_a_last_component_holding_two_vertebrae_is_cut_at_their_disc():
    """Seven vertebrae 8 voxels high every 10; the last one and the one above it are merged across a thin disc
    bridge (a 2 x 2 voxel column). split_merged cannot see it (no neighbour below to measure against);
    split_at_discs cuts it at the disc, and leaves a single vertebra with a thin process running down alone."""
    from vfscreen.inference.merged_vertebrae import split_at_discs

    blocks = [_block(22 + 10 * i, 30 + 10 * i) for i in range(6)]
    bridge = np.stack([a.ravel() for a in np.mgrid[10:12, 5:7, 5:7]], axis=1)
    merged = np.concatenate([_block(2, 10), bridge, _block(12, 20)])
    voxel_lists, sources = split_at_discs([merged] + blocks, _grid())
    assert len(voxel_lists) == 8 and sources == [6, 5, 4, 3, 2, 1, 0, 0]
    lower, upper = voxel_lists[-1], voxel_lists[-2]
    assert upper[:, 0].min() >= 10 and lower[:, 0].max() <= 11  # cut inside the bridge
    assert {tuple(v) for v in _block(12, 20)} <= {tuple(v) for v in upper}
    assert not any(split_merged([merged] + blocks, _grid())[1])  # the last component: nothing to measure against
    # a vertebra with a process: one peak and a thin tail, no second body - not cut
    process = np.stack([a.ravel() for a in np.mgrid[14:20, 8:10, 5:7]], axis=1)
    with_process = np.concatenate([_block(20, 28), process])
    chain = [with_process] + [_block(32 + 10 * i, 40 + 10 * i) for i in range(4)]
    assert split_at_discs(chain, _grid())[1] == [4, 3, 2, 1, 0]


def test_a_small_part_past_a_disc_is_cut_off_only_at_the_field_of_views_end():
    """A component with a second, small body below a disc: a partial vertebra where it reaches the image's first
    slice (cut by the field of view), a piece too small to be a vertebra where it does not."""
    from vfscreen.inference.merged_vertebrae import split_at_discs

    blocks = [_block(22 + 10 * i, 30 + 10 * i) for i in range(5)]
    at_end = np.concatenate([_block(0, 3), _block(3, 4)[:4], _block(5, 13)])  # 3 slices below the disc, at z = 0
    assert split_at_discs([at_end] + blocks, _grid())[1] == [5, 4, 3, 2, 1, 0, 0]
    inside = at_end + [6, 0, 0]  # the same shape, its lowest slice at z = 6: not cut by the view
    assert split_at_discs([inside] + blocks, _grid())[1] == [5, 4, 3, 2, 1, 0]


def test_a_small_rib_piece_on_a_cut_vertebra_is_not_its_rib():
    """Ribs of ~1,000 mm3 on three vertebrae and a 380 mm3 piece on the fourth (above MIN_RIB_FRACTION of the median
    rib, under MIN_CUT_RIB_FRACTION): a rib of the fourth while it is whole; once it is cut by the field of view
    (a lumbar transverse process running out of a narrow field reads as rib-like) no rib, and a note says so."""
    from vfscreen.inference.landmarks import MIN_CUT_RIB_FRACTION, MIN_RIB_FRACTION, find_landmarks

    reference, component_map, centroids, rib_mask = _four_vertebrae_three_ribs()
    rib_mask[8:13, 4:8, 36:55] = True  # 5 x 4 x 19 = 380 mm3 beside the fourth vertebra (z 5-15)
    assert MIN_RIB_FRACTION * 1026 < 380 < MIN_CUT_RIB_FRACTION * 1026
    assert find_landmarks(component_map, np.array(centroids), rib_mask, None, reference).rib_bearing == [0, 1, 2, 3]
    evidence = find_landmarks(component_map, np.array(centroids), rib_mask, None, reference, cut_rows=[3])
    assert evidence.rib_bearing == [0, 1, 2]
    assert any("on a vertebra cut by the field of view" in note for note in evidence.notes)
    # a rib of full size on a cut vertebra still counts
    assert find_landmarks(component_map, np.array(centroids), rib_mask, None, reference, cut_rows=[0]).rib_bearing \
        == [0, 1, 2, 3]
