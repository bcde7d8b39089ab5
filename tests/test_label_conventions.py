"""Label conventions of other tools' masks: which one a mask uses, and names -> VerSe ids / landmarks."""
import json

import pytest

from vfscreen.errors import ConfigError, InputError
from vfscreen.inference.label_conventions import choose_convention, embedded_label_table
from vfscreen.labels import parse_structure_name


def heights(values, head_first=True):
    """value -> world z: the listed values run head -> feet (or feet -> head), 35 mm apart."""
    ordered = values if head_first else values[::-1]
    return {value: 500.0 - 35.0 * rank for rank, value in enumerate(ordered)}


def test_verse_l1_to_l5_is_not_read_as_totalsegmentator_v1():
    # VerSe 20-24 = L1-L5 head -> feet; TotalSegmentator v1 would call them L3, L2, L1, T12, T11 (feet -> head)
    convention, warnings = choose_convention([20, 21, 22, 23, 24], heights([20, 21, 22, 23, 24]), "m")
    assert convention.name == "verse" and warnings == []


def test_totalsegmentator_v1_ids_in_their_order():
    convention, _ = choose_convention([18, 19, 20, 21, 22], heights([22, 21, 20, 19, 18]), "m")
    assert convention.name == "totalseg_v1"  # 18 L5 ... 22 L1, feet -> head


def test_totalsegmentator_v2_first_and_the_alternative_named():
    values = list(range(26, 34))
    convention, warnings = choose_convention(values, heights(values[::-1]), "m")
    assert convention.name == "totalseg" and "also fit totalseg_v1" in warnings[0]


def test_forced_and_dataset_json(tmp_path):
    convention, _ = choose_convention([20, 21], heights([21, 20]), "m", forced="totalseg_v1")
    assert convention.name == "totalseg_v1"
    dataset_json = tmp_path / "dataset.json"
    dataset_json.write_text(json.dumps({"labels": {"background": 0, "vertebrae_L1": 1, "vertebrae_L2": 2,
                                                   "liver": 3}}))
    convention, _ = choose_convention([1, 2, 3], heights([1, 2, 3]), "m", dataset_json=dataset_json)
    assert convention.names == {1: "vertebrae_L1", 2: "vertebrae_L2", 3: "liver"}
    with pytest.raises(InputError, match=r"label values \[9\] are not in the dataset.json"):
        choose_convention([1, 9], heights([1, 9]), "m", forced=str(dataset_json))
    regions = tmp_path / "regions.json"
    regions.write_text(json.dumps({"labels": {"background": 0, "spine": [1, 2]}}))
    with pytest.raises(ConfigError, match="region"):
        choose_convention([1], {}, "m", forced=str(regions))


def test_labels_outside_every_convention():
    with pytest.raises(InputError, match="fit no known convention"):
        choose_convention([130, 140], heights([130, 140]), "m")
    with pytest.raises(InputError, match="no vertebra"):
        choose_convention([26], {}, "m", forced="verse")  # the VerSe sacrum alone


def test_embedded_table_of_the_real_mask(example_ct_vertebrae, example_ct):
    table = embedded_label_table(example_ct_vertebrae)
    assert table[27] == "vertebrae_L5" and table[50] == "vertebrae_C1" and len(table) == 25
    assert embedded_label_table(example_ct) is None


@pytest.mark.parametrize("name, expected", [
    ("L1", ("vertebra", 20)), ("vertebrae_L1", ("vertebra", 20)), ("T13", ("vertebra", 28)),
    ("vertebrae_L6", ("vertebra", 25)), ("vertebrae_C1", ("vertebra", 1)), ("vertebrae_S1", ("landmark", "S1")),
    ("sacrum", ("landmark", "sacrum")), ("rib_left_12", ("landmark", "rib_left_12")),
    ("rib_right_13", ("landmark", "rib_right_13")), ("liver", None), ("L7", None), ("background", None)])
def test_structure_names(name, expected):
    assert parse_structure_name(name) == expected


def test_given_labels_are_checked_never_renamed(example_ct, example_ct_vertebrae):
    import numpy as np
    import SimpleITK as sitk

    from vfscreen.inference.masks import MaskSource, read_case_mask
    from vfscreen.inference.spine_labels import check_given_labels
    from vfscreen.labels import NAME_TO_VERSE

    ct = sitk.ReadImage(str(example_ct))
    verse_map = read_case_mask(MaskSource(example_ct_vertebrae, "file"), ct).verse_map
    assert check_given_labels(verse_map, ct) == []
    l2, l3, l4 = (NAME_TO_VERSE[n] for n in ("L2", "L3", "L4"))
    swapped = verse_map.copy()
    swapped[verse_map == l2], swapped[verse_map == l3] = l3, l2
    warnings = check_given_labels(swapped, ct)
    assert any("out of anatomical order" in w and "L2/L3" in w for w in warnings)
    assert np.array_equal(np.unique(swapped), np.unique(verse_map))  # nothing renamed
    gap = np.where(verse_map == l3, 0, verse_map)
    assert any("skip L3" in w for w in check_given_labels(gap, ct))
    doubled = np.where(verse_map == l4, l2, verse_map)  # L4's voxels also called L2: two pieces of one label
    assert any("L2 is in 2 separate pieces" in w for w in check_given_labels(doubled, ct))
