"""Ribs read off the CT (vfscreen.inference.ct_ribs): on the real example CT (TotalSegmentator's tests, Apache-2.0,
tests/data/NOTICE) with TotalSegmentator's vertebra mask, on rendered phantom cases against their rib labels, and on
hand-made volumes with the bright structures that are not ribs (contrast aorta, iliac plate, a narrow field of view).
"""
import numpy as np
import pytest
import SimpleITK as sitk

from vfscreen.inference.ct_ribs import NETWORK_MASK_THIN_PART_MM, rib_like_part, rib_mask_from_ct
from vfscreen.inference.label_consistency import make_labels_consistent
from vfscreen.inference.landmarks import find_landmarks
from vfscreen.labels import CLASS_TO_VERSE, RIB_CLASS, SPINE_REGION_GROUP_IDS, VERSE_NAMES


def _components(label_array: np.ndarray, image: sitk.Image, class_ids):
    """Component map (rows head -> feet) and centroids (world LPS) of the given class ids."""
    from vfscreen.inference.geometry import array_indices_to_world
    present = [c for c in class_ids if (label_array == c).any()]
    centroids = {c: array_indices_to_world(image, np.argwhere(label_array == c).mean(axis=0, keepdims=True))[0]
                 for c in present}
    order = sorted(present, key=lambda c: -centroids[c][2])
    component_map = np.zeros(label_array.shape, np.int32)
    for row, class_id in enumerate(order, start=1):
        component_map[label_array == class_id] = row
    return component_map, np.array([centroids[c] for c in order]).reshape(-1, 3), order


def _whole_box(array):
    return tuple(slice(0, n) for n in array.shape)


def test_real_ct_ribs_mark_t12_and_the_iliac_bone_is_not_a_rib(example_ct, example_ct_vertebrae, tmp_path):
    from vfscreen.inference.landmarks import naming_of_given_labels
    from vfscreen.inference.masks import find_masks, read_case_mask
    image = sitk.ReadImage(str(example_ct))
    (tmp_path / "case.nii.gz").write_bytes(example_ct_vertebrae.read_bytes())
    spine = read_case_mask(find_masks(tmp_path, ["case"])["case"], image)
    naming = naming_of_given_labels(spine, image, ct=image)
    # T11 is cut by the top of the field of view (its rib is outside); L1-L5 carry none; S1 touches the ilium
    assert naming["rib_bearing"] == ["T12"]
    assert naming["on_sacrum"] == "L5" and naming["contradictions"] == [] and naming["anchored"]
    assert any("read off the CT" in note for note in naming["notes"])
    without_ct = naming_of_given_labels(spine, image)
    assert without_ct["rib_bearing"] == [] and not without_ct["ribs_in_view"]


@pytest.mark.parametrize("seed", [0, 1])
def test_phantom_ct_ribs_mark_the_vertebrae_that_carry_labelled_ribs(seed):
    from vfscreen.phantom.generator import case_specs, generate_case
    from vfscreen.phantom.acquisition import PRESETS
    specs = case_specs(seed, 6, 0, PRESETS["demo"])
    checked = 0
    for spec in specs:
        case = generate_case(spec)
        labels = sitk.GetArrayFromImage(case.label)
        component_map, centroids, _ = _components(labels, case.ct, range(1, RIB_CLASS))
        truth = find_landmarks(component_map, centroids, labels == RIB_CLASS, None, case.ct)
        ribs, why_not = rib_mask_from_ct(case.ct, _whole_box(labels), component_map, centroids)
        if ribs is None:
            assert "field of view" in why_not
            continue
        found = find_landmarks(component_map, centroids, ribs, None, case.ct)
        # the labelled rib of a cut vertebra at the field's edge may be too small to count: compare the whole ones
        whole = set(range(1, len(centroids) - 1))
        assert set(found.rib_bearing) & whole == set(truth.rib_bearing) & whole, spec.case_id
        checked += 1
    assert checked >= 4


def _block_spine(num_blocks: int, rib_rows=(), aorta=False, iliac=False, width_mm=200.0):
    """CT (HU) of vertebra blocks along -z in soft tissue, ribs running 80 mm sideways from chosen blocks, an
    optional bright vertical tube in front (contrast aorta) and a bright plate beside the last block (iliac wing)."""
    spacing = 2.0
    nx = int(width_mm / spacing)
    ct = np.full((12 * num_blocks + 10, 60, nx), 40.0, np.float32)
    labels = np.zeros(ct.shape, np.uint8)
    mid = nx // 2
    for row in range(num_blocks):
        z = slice(4 + 12 * row, 13 + 12 * row)
        ct[z, 20:36, mid - 10:mid + 10] = 400.0
        labels[z, 20:36, mid - 10:mid + 10] = row + 1
    for row in rib_rows:
        z = slice(7 + 12 * row, 10 + 12 * row)
        ct[z, 30:33, mid - 50:mid - 10] = 600.0
        ct[z, 30:33, mid + 10:mid + 50] = 600.0
    if aorta:
        ct[:, 12:20, mid + 2:mid + 10] = 350.0  # touching the blocks' front, 20 mm from the midline at most
    if iliac:
        z = slice(12 * num_blocks - 20, 12 * num_blocks + 8)
        ct[z, 14:44, mid + 10:mid + 45] = 500.0  # a plate beside the last block, reaching 90 mm out
    image = sitk.GetImageFromArray(ct)
    image.SetSpacing((spacing, spacing, spacing))
    image.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, -1))  # array axis 0 -> feet
    return image, labels


def test_bright_structures_that_are_not_ribs_are_ignored():
    image, labels = _block_spine(5, rib_rows=(0, 1), aorta=True, iliac=True)
    component_map, centroids, _ = _components(labels, image, range(1, 6))
    ribs, why_not = rib_mask_from_ct(image, _whole_box(labels), component_map, centroids)
    assert why_not is None
    assert find_landmarks(component_map, centroids, ribs, None, image).rib_bearing == [0, 1]


def test_ribs_inside_a_coarse_network_mask_are_found_in_its_thin_parts():
    """A +-50 mm field of view and a network's vertebra mask that covers the ribs of blocks 0 and 1 out to the image
    edge: with the mask left out whole no rib is left to find; with its thin parts searched, blocks 0 and 1 carry
    ribs and no bone of the (thick) blocks is taken for one."""
    image, labels = _block_spine(5, rib_rows=(0, 1), width_mm=100.0)
    coarse = labels.copy()
    for row in (0, 1):
        coarse[7 + 12 * row:10 + 12 * row, 30:33, :] = row + 1  # both ribs (6 mm thick), edge to edge
    component_map, centroids, _ = _components(coarse, image, range(1, 6))
    whole, _ = rib_mask_from_ct(image, _whole_box(labels), component_map, centroids)
    assert not whole.any()
    thin, why_not = rib_mask_from_ct(image, _whole_box(labels), component_map, centroids,
                                     thin_parts_searched_mm=NETWORK_MASK_THIN_PART_MM)
    assert why_not is None
    assert find_landmarks(component_map, centroids, thin, None, image).rib_bearing == [0, 1]
    assert not (thin & (labels > 0)).any()


def test_thin_mask_parts_never_join_vertebrae_into_one_rib():
    """A coarse network mask that also covers a thin bright rod running beside all five blocks (what a coarse mask
    makes of the arches and processes along the spine), met by the ribs of blocks 0 and 1: searched inside the
    mask, rod and ribs are one rib-like piece touching every block. Its searched part lies in five vertebrae, so
    only its bone outside the mask counts: blocks 0 and 1 carry ribs, the others none."""
    image, labels = _block_spine(5, rib_rows=(0, 1))
    ct = sitk.GetArrayFromImage(image)
    mid = ct.shape[2] // 2
    ct[4:12 * 5, 30:33, mid - 14:mid - 11] = 600.0  # the rod, 6 mm thick, 2 mm beside the blocks, through the ribs
    rod_image = sitk.GetImageFromArray(ct)
    rod_image.CopyInformation(image)
    coarse = labels.copy()
    for row in range(5):  # the rod's stretch beside each block belongs to that block's component
        coarse[12 * row:12 * row + 12, 30:33, mid - 14:mid - 11] = row + 1
    component_map, centroids, _ = _components(coarse, rod_image, range(1, 6))
    ribs, why_not = rib_mask_from_ct(rod_image, _whole_box(labels), component_map, centroids,
                                     thin_parts_searched_mm=NETWORK_MASK_THIN_PART_MM)
    assert why_not is None
    assert find_landmarks(component_map, centroids, ribs, None, rod_image).rib_bearing == [0, 1]


def test_a_networks_rib_mask_keeps_only_its_rib_like_pieces():
    """A network's rib mask that holds the two ribs of block 0 and short stubs beside blocks 1-4 (processes taken
    for ribs): only the ribs pass the shape test, so only block 0 carries ribs."""
    image, labels = _block_spine(5, rib_rows=(0,))
    mid = labels.shape[2] // 2
    network_ribs = np.zeros(labels.shape, bool)
    network_ribs[7:10, 30:33, mid - 50:mid - 10] = network_ribs[7:10, 30:33, mid + 10:mid + 50] = True
    for row in range(1, 5):
        z = slice(7 + 12 * row, 10 + 12 * row)
        network_ribs[z, 30:33, mid - 20:mid - 10] = network_ribs[z, 30:33, mid + 10:mid + 20] = True  # 20 mm out
    component_map, centroids, _ = _components(labels, image, range(1, 6))
    assert find_landmarks(component_map, centroids, network_ribs, None, image).rib_bearing == [0, 1, 2, 3, 4]
    kept = rib_like_part(image, _whole_box(labels), network_ribs, centroids)
    assert find_landmarks(component_map, centroids, kept, None, image).rib_bearing == [0]


def test_a_long_transverse_process_is_not_a_rib_but_a_rib_cut_by_the_field_of_view_is():
    """Wide field: bone running 46 mm out from block 3 (a long transverse process) ends inside the field - not a
    rib. Narrow field (+-45 mm): the ribs of blocks 0 and 1 leave the image 44 mm out - ribs."""
    image, labels = _block_spine(5, rib_rows=(0,))
    ct = sitk.GetArrayFromImage(image)
    mid = ct.shape[2] // 2
    ct[7 + 36:10 + 36, 30:33, mid + 10:mid + 23] = 600.0  # block 3, reaching (23 - 0.5) voxels x 2 mm ~ 46 mm
    wide = sitk.GetImageFromArray(ct)
    wide.CopyInformation(image)
    component_map, centroids, _ = _components(labels, wide, range(1, 6))
    ribs, _ = rib_mask_from_ct(wide, _whole_box(labels), component_map, centroids)
    assert find_landmarks(component_map, centroids, ribs, None, wide).rib_bearing == [0]
    narrow, narrow_labels = _block_spine(5, rib_rows=(0, 1), width_mm=90.0)
    component_map, centroids, _ = _components(narrow_labels, narrow, range(1, 6))
    ribs, why_not = rib_mask_from_ct(narrow, _whole_box(narrow_labels), component_map, centroids)
    assert why_not is None
    assert find_landmarks(component_map, centroids, ribs, None, narrow).rib_bearing == [0, 1]


def test_a_field_of_view_too_narrow_for_ribs_says_so():
    image, labels = _block_spine(4, rib_rows=(0,), width_mm=56.0)
    component_map, centroids, _ = _components(labels, image, range(1, 5))
    ribs, why_not = rib_mask_from_ct(image, _whole_box(labels), component_map, centroids)
    assert ribs is None and "field of view" in why_not


def test_grouped_network_without_landmark_outputs_is_named_from_the_ct_ribs():
    """A spine_regions network that finds the vertebrae but cannot tell thoracic from lumbar and shows no rib: the
    CT's ribs make the lowest rib-bearing block T12 and the blocks below it L1, L2."""
    image, labels = _block_spine(5, rib_rows=(0, 1, 2))
    class_map = np.where(labels > 0, SPINE_REGION_GROUP_IDS["thoracic"], 0).astype(np.uint8)
    # sigmoids of the regions vertebra, thoracic, lumbar, rib, sacrum: sure of "vertebra", undecided on the region
    probabilities = np.zeros((5,) + labels.shape, np.float32)
    probabilities[0][labels > 0] = 0.95
    probabilities[1:3][:, labels > 0] = 0.5

    def ct_ribs(component_map, centroids, sacrum_mask):
        return rib_mask_from_ct(image, _whole_box(labels), component_map, centroids, sacrum_mask)

    _, components, landmarks = make_labels_consistent(class_map, image, probabilities, grouping="spine_regions",
                                                      has_landmarks=True, ct_ribs=ct_ribs, min_volume_mm3=10.0)
    names = [VERSE_NAMES[CLASS_TO_VERSE[c.new_class_id]] for c in components]
    assert names == ["T10", "T11", "T12", "L1", "L2"]
    assert landmarks.rib_bearing == [0, 1, 2] and any("read off the CT" in note for note in landmarks.notes)
    _, without, _ = make_labels_consistent(class_map, image, probabilities, grouping="spine_regions",
                                           has_landmarks=True, min_volume_mm3=10.0)
    assert all(with_ribs.label_confidence > 2 * alone.label_confidence
               for with_ribs, alone in zip(components, without))
