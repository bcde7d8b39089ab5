"""Landmark evidence (ribs, sacrum) in the vertebra chain model: hand-made component tables and tiny label volumes."""
import numpy as np
import pytest
import SimpleITK as sitk

from vfscreen.inference.chain_model import LEVEL_CERTAIN_POSTERIOR, assign_labels
from vfscreen.inference.label_consistency import make_labels_consistent
from vfscreen.inference.landmarks import LandmarkEvidence, find_landmarks, landmark_log_factors
from vfscreen.labels import (CLASS_TO_VERSE, NAME_TO_VERSE, RIB_CLASS, SACRUM_CLASS, SPINE_REGION_GROUP_IDS,
                             VERSE_NAMES, VERSE_TO_CLASS, region_evidence)

REGION_OUTPUTS = {"t": (1.0, 0.7, 0.3), "l": (1.0, 0.3, 0.7), "c": (1.0, 0.3, 0.3)}  # P(vertebra, thoracic, lumbar)


def regions(kinds: str) -> np.ndarray:
    """Class evidence of a grouped network that leans thoracic ('t'), lumbar ('l') or neither ('c') per component."""
    return region_evidence(np.array([REGION_OUTPUTS[kind] for kind in kinds]))


def evidence(count, ribs=(), sacrum=None, one_side=()) -> LandmarkEvidence:
    sides = [({"left"} if row in one_side else {"left", "right"}) if row in ribs else set() for row in range(count)]
    return LandmarkEvidence(count, sides, ribs_in_view=bool(ribs), sacrum_in_view=sacrum is not None,
                            sacrum_component=sacrum)


def chain(kinds, landmarks):
    new_class, confidence, _ = assign_labels(regions(kinds), None, landmark_log_factors(landmarks))
    return [VERSE_NAMES[CLASS_TO_VERSE[int(c)]] if c else None for c in new_class], np.round(confidence, 3).tolist()


def test_lowest_rib_bearing_vertebra_is_t12():
    names, confidence = chain("tttttllll", evidence(9, ribs=range(5)))
    assert names == ["T8", "T9", "T10", "T11", "T12", "L1", "L2", "L3", "L4"]
    assert confidence == [0.72, 0.759, 0.8, 0.845, 0.892, 0.943, 0.899, 0.855, 0.812]
    # the same components without the ribs: same names, every one less sure (the anchor is what makes them sure)
    _, unanchored, _ = assign_labels(regions("tttttllll"))
    assert np.all(unanchored < np.array(confidence) - 0.1)


def test_vertebra_on_the_sacrum_is_l5():
    names, confidence = chain("lllll", evidence(5, sacrum=4))
    assert names == ["L1", "L2", "L3", "L4", "L5"]
    assert confidence == [0.888, 0.897, 0.907, 0.918, 0.926]


def test_thirteen_rib_bearing_vertebrae_below_c7_make_t13():
    names, confidence = chain("c" + "t" * 13 + "l", evidence(15, ribs=range(1, 14)))
    assert names == ["C7"] + [f"T{n}" for n in range(1, 14)] + ["L1"]
    assert confidence[0] == 0.912 and confidence[13] == 0.357 and confidence[14] == 0.932
    assert confidence[13] < LEVEL_CERTAIN_POSTERIOR  # the variant is decided, and flagged: a 13th rib is rare


def test_six_rib_free_vertebrae_above_the_sacrum_make_l6():
    names, confidence = chain("ttllllll", evidence(8, ribs=range(2), sacrum=7))
    assert names == ["T11", "T12", "L1", "L2", "L3", "L4", "L5", "L6"]
    assert confidence == [0.761, 0.803, 0.833, 0.782, 0.731, 0.681, 0.631, 0.582]


def test_eleven_rib_pairs_is_a_decision_with_low_confidence_where_it_is_ambiguous():
    names, confidence = chain("c" + "t" * 11 + "ll", evidence(14, ribs=range(1, 12)))
    assert names == ["C7"] + [f"T{n}" for n in range(1, 12)] + ["L1", "L2"]
    assert min(confidence) == 0.092 and confidence[-2] == 0.932


def test_mid_thoracic_field_without_landmarks_is_uncertain():
    names, confidence = chain("tttttttt", evidence(8))
    assert names == [f"T{n}" for n in range(1, 9)]  # a decision (the chain's MAP) ...
    assert max(confidence) == 0.172  # ... that says it does not know the level


def test_ribs_on_one_side_count_like_pairs():
    assert chain("tttttllll", evidence(9, ribs=range(5), one_side=range(5))) == \
        chain("tttttllll", evidence(9, ribs=range(5)))


# --- landmark evidence from label volumes -------------------------------------------------------------------------

def _spine_volume(vertebrae: list[str], rib_rows=(), sacrum=False, fused=False):
    """Vertebra blocks (head -> feet along -z), ribs left/right of chosen blocks, an optional sacrum below."""
    depth = 8 * len(vertebrae) + 14
    array = np.zeros((depth, 16, 40), np.uint8)
    for row, name in enumerate(vertebrae):
        array[2 + 8 * row: 8 + 8 * row, 4:12, 14:26] = VERSE_TO_CLASS[NAME_TO_VERSE[name]]
    for row in rib_rows:
        array[4 + 8 * row: 6 + 8 * row, 8:10, 2:14] = RIB_CLASS  # touching the block's left/right faces
        array[4 + 8 * row: 6 + 8 * row, 8:10, 26:38] = RIB_CLASS
    if sacrum:
        top = 8 * len(vertebrae) + (0 if fused else 3)  # right below the last block, or after an 8 mm gap
        array[top: top + 8, 4:12, 14:26] = SACRUM_CLASS
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((2.0, 2.0, 2.0))
    image.SetDirection((1, 0, 0, 0, -1, 0, 0, 0, -1))  # array axis 0 -> feet
    return array, image


def _chain_names(array, image):
    verse_map, components, landmarks = make_labels_consistent(array, image, None, has_landmarks=True,
                                                              min_volume_mm3=10.0)
    return [VERSE_NAMES[CLASS_TO_VERSE[c.new_class_id]] if c.new_class_id else None for c in components], landmarks


def test_rib_components_mark_their_vertebrae_and_count_pairs():
    array, image = _spine_volume(["T11", "T12", "L1", "L2"], rib_rows=(0, 1))
    _, landmarks = _chain_names(array, image)
    assert landmarks.rib_bearing == [0, 1] and landmarks.rib_pairs == 2
    assert landmarks.rib_sides[0] == {"left", "right"}


def test_rib_touching_two_vertebrae_is_counted_on_both_with_a_note():
    array, image = _spine_volume(["T11", "T12", "L1"], rib_rows=(0,))
    array[4:12, 8:10, 2:14] = RIB_CLASS  # the left rib now also reaches down along the second block
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((2.0, 2.0, 2.0))
    image.SetDirection((1, 0, 0, 0, -1, 0, 0, 0, -1))
    _, landmarks = _chain_names(array, image)
    assert 1 in landmarks.rib_bearing and any("touch two vertebrae" in note for note in landmarks.notes)


def test_sacrum_marks_the_vertebra_above_it_even_when_fused():
    for fused in (False, True):
        array, image = _spine_volume(["L3", "L4", "L5"], sacrum=True, fused=fused)
        _, landmarks = _chain_names(array, image)
        assert landmarks.sacrum_in_view and landmarks.sacrum_component == 2
        assert any("touches it directly" in note for note in landmarks.notes) == fused


def test_ribs_without_vertebrae_and_no_landmark_at_all_are_notes_not_crashes():
    array, image = _spine_volume([], rib_rows=())
    array[2:6, 8:10, 2:14] = RIB_CLASS
    verse_map, components, landmarks = make_labels_consistent(array, image, None, has_landmarks=True)
    assert components == [] and not verse_map.any() and "no vertebra" in landmarks.notes[0]
    array, image = _spine_volume(["T5", "T6", "T7"])
    names, landmarks = _chain_names(array, image)
    assert names == ["T5", "T6", "T7"] and not landmarks.any_landmark
    assert any("no rib and no sacrum" in note for note in landmarks.notes)


def test_grouped_network_names_vertebrae_from_landmarks():
    # one vertebra group everywhere (no thoracic / lumbar information at all): only the landmarks can name them
    array, image = _spine_volume(["T11", "T12", "L1", "L2", "L3", "L4", "L5"], rib_rows=(0, 1), sacrum=True)
    groups = np.zeros_like(array)
    groups[(array > 0) & (array <= 26)] = SPINE_REGION_GROUP_IDS["vertebra"]
    groups[array == RIB_CLASS] = SPINE_REGION_GROUP_IDS["rib"]
    groups[array == SACRUM_CLASS] = SPINE_REGION_GROUP_IDS["sacrum"]
    probabilities = np.zeros((5,) + array.shape, np.float32)
    probabilities[0] = groups == SPINE_REGION_GROUP_IDS["vertebra"]
    probabilities[1:3] = 0.5
    from vfscreen.inference.chain_model import ChainModel
    confidences = {}
    for use_gaps in (False, True):
        verse_map, components, landmarks = make_labels_consistent(
            groups, image, probabilities, model=ChainModel(use_gaps=use_gaps), grouping="spine_regions",
            has_landmarks=True, min_volume_mm3=10.0)
        names = [VERSE_NAMES[CLASS_TO_VERSE[c.new_class_id]] for c in components]
        assert names == ["T11", "T12", "L1", "L2", "L3", "L4", "L5"]
        assert landmarks.rib_pairs == 2 and landmarks.sacrum_component == 6
        confidences[use_gaps] = np.array([c.label_confidence for c in components])
    assert confidences[False].round(3).tolist() == [0.837, 0.886, 0.979, 0.976, 0.975, 0.976, 0.97]
    # evenly spaced components: the gaps rule out a missed vertebra between them, so every name is surer
    assert np.all(confidences[True] > confidences[False])


@pytest.mark.parametrize("masks", [(None, None), ("empty", "empty")])
def test_find_landmarks_without_rib_or_sacrum(masks):
    array, image = _spine_volume(["L1", "L2"])
    component_map = (array > 0).astype(np.int32)
    component_map[array == VERSE_TO_CLASS[NAME_TO_VERSE["L2"]]] = 2
    empty = np.zeros(array.shape, bool)
    rib, sacrum = [None if m is None else empty for m in masks]
    landmarks = find_landmarks(component_map, np.zeros((2, 3)), rib, sacrum, image)
    assert not landmarks.any_landmark and landmarks.rib_pairs == 0
    assert np.all(landmark_log_factors(landmarks) == 0)
    assert (len(landmarks.notes) == 1) == (masks[0] is not None)  # a source that could show them says none were seen


def test_a_double_gap_between_components_is_where_the_missed_vertebra_was():
    """T11 T12 L1 _ L3 L4 L5 on the sacrum (L2 not segmented): anchored at both ends, one lumbar level must be
    skipped; the gap of two pitches says where, so L3-L5 keep their names and become sure. Without positions the
    chain cannot tell where the missed vertebra was."""
    z = -np.array([0.0, 1.0, 2.0, 4.0, 5.0, 6.0]) * 30.0  # mm, one pitch = 30 mm
    centroids = np.stack([np.zeros(6), np.zeros(6), z], axis=1)
    factors = landmark_log_factors(evidence(6, ribs=(0, 1), sacrum=5))
    new_class, confidence, _ = assign_labels(regions("ttllll"), None, factors, centroids)
    assert [VERSE_NAMES[CLASS_TO_VERSE[int(c)]] for c in new_class] == ["T11", "T12", "L1", "L3", "L4", "L5"]
    assert np.all(confidence > LEVEL_CERTAIN_POSTERIOR)
    _, without_positions, _ = assign_labels(regions("ttllll"), None, factors)
    # L1 / L3 / L4: the skip may be anywhere between L1 and L5
    assert np.all(without_positions[2:5] < confidence[2:5] - 0.1) and without_positions[2:5].min() < 0.5


def test_a_rib_on_a_cut_vertebra_says_less_than_on_a_whole_one():
    """A vertebra cut by the field of view is segmented in part; its own bone left outside the mask (a lumbar
    transverse process running out of a narrow field) reads as rib-like. A network sure that the cut last component is
    lumbar then names it L1 (T7-T12 anchored above it); weighed like a rib on a whole vertebra, the rib makes it
    thoracic and shifts every name above it."""
    from vfscreen.inference.landmarks import LandmarkLikelihoods
    outputs = np.array([REGION_OUTPUTS["t"]] * 7 + [(1.0, 0.1, 0.9)])
    landmarks = LandmarkEvidence(8, [set()] + [{"left", "right"}] * 7, ribs_in_view=True, cut_by_view=[0, 7])
    factors = landmark_log_factors(landmarks)
    lumbar = VERSE_TO_CLASS[NAME_TO_VERSE["L1"]] - 1
    assert factors[7, lumbar] == pytest.approx(np.log(LandmarkLikelihoods().rib_on_cut_non_thoracic))
    assert factors[6, lumbar] == pytest.approx(np.log(LandmarkLikelihoods().rib_on_non_thoracic))

    def names(likelihoods):
        new_class, _, _ = assign_labels(region_evidence(outputs), None, landmark_log_factors(landmarks, likelihoods))
        return [VERSE_NAMES[CLASS_TO_VERSE[int(c)]] for c in new_class]
    assert names(LandmarkLikelihoods()) == ["T6", "T7", "T8", "T9", "T10", "T11", "T12", "L1"]
    as_whole = LandmarkLikelihoods(rib_on_cut_non_thoracic=LandmarkLikelihoods().rib_on_non_thoracic)
    assert names(as_whole)[-1].startswith("T")  # the rib wins over the network: every name above shifts


def test_a_missing_rib_on_a_sliver_of_a_cut_vertebra_says_nothing():
    """Thoracic components under a field of view cut at the top: the top component holds a quarter of a vertebra
    (its rib may be out of view), so its missing rib does not make it cervical (the chain's count does not shift to
    C7 for it); a cut component holding half of one still says less than a whole one, as before."""
    from vfscreen.inference.landmarks import LandmarkLikelihoods, PARTIAL_VIEW_FRACTION, mostly_out_of_view
    volumes = [3.5, 14.0, 16.0, 15.0, 17.0, 18.0, 9.0]  # ml, head -> feet; the first and last cut by the view
    assert 3.5 < PARTIAL_VIEW_FRACTION * 14.0 and 9.0 > PARTIAL_VIEW_FRACTION * 18.0
    assert mostly_out_of_view(volumes, [0, 6]) == [0]
    assert mostly_out_of_view(volumes, list(range(7))) == []  # nothing whole to compare with
    landmarks = LandmarkEvidence(7, [set()] + [{"left", "right"}] * 6, ribs_in_view=True, cut_by_view=[0, 6],
                                 mostly_out_of_view=[0])
    factors = landmark_log_factors(landmarks)
    t1, c7 = VERSE_TO_CLASS[NAME_TO_VERSE["T1"]] - 1, VERSE_TO_CLASS[NAME_TO_VERSE["C7"]] - 1
    assert factors[0, t1] == 0.0 and factors[0, c7] == 0.0
    landmarks.mostly_out_of_view = []
    assert landmark_log_factors(landmarks)[0, t1] == pytest.approx(np.log(LandmarkLikelihoods().no_rib_on_cut_thoracic))
