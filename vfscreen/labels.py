"""Vertebra identities: VerSe ids, names, and nnU-Net's consecutive class ids. The one mapping used everywhere.

VerSe convention: 1-7 = C1-C7, 8-19 = T1-T12, 20-25 = L1-L6, 28 = T13, 26 = sacrum, 27 = coccyx. nnU-Net needs
consecutive class ids, so every vfscreen dataset uses the same fixed table: class ids 1..26 are the vertebrae in
anatomical (cranio-caudal) order, T13 between T12 and L1. A model trained on one dataset therefore speaks the same
label language as every other, and "consecutive along the spine" is simply "consecutive class ids".

Two *landmark* classes follow the vertebrae: 27 = rib (any rib, either side) and 28 = sacrum. They are not graded;
they anchor the naming (the lowest rib-bearing vertebra is T12, or T13 with 13 rib pairs; the vertebra above the
sacrum is L5, or L6; see vfscreen.inference.landmarks). Label maps hold them where the source has them (the phantom,
TotalSegmentator's rib_* / sacrum, VerSe's 26); vertebra-only consumers read label maps through
:func:`class_to_verse`, which maps landmarks to background. VerSe has no rib id: :data:`RIB_SOURCE_ID` is vfscreen's
id for a rib in a VerSe-id array (the phantom's renderer and converters).
"""
from __future__ import annotations

import re

import numpy as np

# VerSe ids in cranio-caudal order.
SPINE_ORDER: tuple[int, ...] = tuple(range(1, 20)) + (28,) + tuple(range(20, 26))

VERSE_NAMES: dict[int, str] = {
    **{i: f"C{i}" for i in range(1, 8)},
    **{i: f"T{i - 7}" for i in range(8, 20)},
    **{i: f"L{i - 19}" for i in range(20, 26)},
    28: "T13",
}
NAME_TO_VERSE: dict[str, int] = {name: verse_id for verse_id, name in VERSE_NAMES.items()}

VERSE_TO_CLASS: dict[int, int] = {verse_id: class_id for class_id, verse_id in enumerate(SPINE_ORDER, start=1)}
CLASS_TO_VERSE: dict[int, int] = {class_id: verse_id for verse_id, class_id in VERSE_TO_CLASS.items()}
NUM_VERTEBRA_CLASSES = len(SPINE_ORDER)  # vertebra class ids 1..26
LANDMARK_CLASSES: dict[str, int] = {"rib": NUM_VERTEBRA_CLASSES + 1, "sacrum": NUM_VERTEBRA_CLASSES + 2}
RIB_CLASS, SACRUM_CLASS = LANDMARK_CLASSES["rib"], LANDMARK_CLASSES["sacrum"]
NUM_CLASSES = NUM_VERTEBRA_CLASSES + len(LANDMARK_CLASSES) + 1  # every class of a label map, with background
SACRUM_VERSE_ID = 26  # VerSe's own id
RIB_SOURCE_ID = 40  # vfscreen's id of a rib in a VerSe-id array (VerSe has none)
LANDMARK_SOURCE_TO_CLASS = {SACRUM_VERSE_ID: SACRUM_CLASS, RIB_SOURCE_ID: RIB_CLASS}

MAX_VERSE_ID = 28  # the mask channel of the grader is binary mask * verse_id / MAX_VERSE_ID (authors' code)

# Look-up tables for whole arrays (index = input value).
_VERSE_TO_CLASS_LUT = np.zeros(max(MAX_VERSE_ID, RIB_SOURCE_ID) + 1, dtype=np.uint8)
_CLASS_TO_VERSE_LUT = np.zeros(NUM_CLASSES, dtype=np.uint8)  # landmarks -> 0 (not vertebrae)
for _verse_id, _class_id in VERSE_TO_CLASS.items():
    _VERSE_TO_CLASS_LUT[_verse_id] = _class_id
    _CLASS_TO_VERSE_LUT[_class_id] = _verse_id
for _source_id, _class_id in LANDMARK_SOURCE_TO_CLASS.items():
    _VERSE_TO_CLASS_LUT[_source_id] = _class_id


def is_vertebra(verse_id: int) -> bool:
    return int(verse_id) in VERSE_NAMES


def name_of(verse_id: int) -> str:
    """'L1' for 20. Raises ValueError for ids that are not vertebrae."""
    try:
        return VERSE_NAMES[int(verse_id)]
    except KeyError:
        raise ValueError(f"{verse_id} is not a VerSe vertebra id (1-25 or 28)") from None


def parse_vertebra(value) -> int:
    """VerSe id from an id (20, '20') or a name ('L1', 'l1', ' T13 '). Raises ValueError otherwise."""
    text = str(value).strip()
    if re.fullmatch(r"\d+", text):
        verse_id = int(text)
        if verse_id in VERSE_NAMES:
            return verse_id
    elif text.upper() in NAME_TO_VERSE:
        return NAME_TO_VERSE[text.upper()]
    raise ValueError(f"{value!r} is not a vertebra (expected a VerSe id 1-25/28 or a name like 'L1', 'T12', 'C7')")


def spine_position(verse_id: int) -> int:
    """0-based cranio-caudal rank: C1 -> 0, T12 -> 18, T13 -> 19, L1 -> 20."""
    return VERSE_TO_CLASS[int(verse_id)] - 1


def verse_to_class(verse_array: np.ndarray, landmarks: bool = False) -> np.ndarray:
    """Map a VerSe-id label array to nnU-Net class ids. Raises ValueError on values that are not vertebrae (with
    ``landmarks``: nor the sacrum 26 / rib RIB_SOURCE_ID, which become SACRUM_CLASS / RIB_CLASS)."""
    values = np.unique(verse_array)
    allowed = set(VERSE_TO_CLASS) | (set(LANDMARK_SOURCE_TO_CLASS) if landmarks else set())
    unknown = [int(v) for v in values if v != 0 and int(v) not in allowed]
    if unknown:
        raise ValueError(f"label values {unknown} are not VerSe vertebra ids (1-25, 28)"
                         + (f" nor landmarks ({SACRUM_VERSE_ID} sacrum, {RIB_SOURCE_ID} rib)" if landmarks else ""))
    return _VERSE_TO_CLASS_LUT[verse_array.astype(np.int64)]


def landmark_mask(class_array: np.ndarray, name: str) -> np.ndarray:
    """Boolean mask of one landmark class ('rib' or 'sacrum') in an nnU-Net class-id array."""
    return np.asarray(class_array) == LANDMARK_CLASSES[name]


def class_to_verse(class_array: np.ndarray) -> np.ndarray:
    """Map nnU-Net class ids back to VerSe vertebra ids; landmark classes (rib, sacrum) become 0.
    Raises ValueError on values outside 0..NUM_CLASSES-1."""
    if class_array.size and (class_array.min() < 0 or class_array.max() >= NUM_CLASSES):
        raise ValueError(f"class ids must lie in 0..{NUM_CLASSES - 1}")
    return _CLASS_TO_VERSE_LUT[class_array.astype(np.int64)]


def nnunet_labels_dict() -> dict[str, int]:
    """The ``labels`` entry of an nnU-Net ``dataset.json``: background, every vertebra, the landmarks; consecutive."""
    return {"background": 0, **{VERSE_NAMES[verse_id]: VERSE_TO_CLASS[verse_id] for verse_id in SPINE_ORDER},
            **LANDMARK_CLASSES}


def verse_ids_dict() -> dict[str, int]:
    """Class id (as a JSON key) -> VerSe id, stored in ``dataset.json`` under ``vfscreen.verse_ids``."""
    return {str(class_id): verse_id for class_id, verse_id in CLASS_TO_VERSE.items()}


# Coarse label groups: what a segmentation network can learn when its budget is too small for 26 vertebra classes
# (the CPU demo). The network then predicts overlapping nnU-Net *regions* (sigmoid outputs) instead of one class per
# vertebra: every vertebra, the thoracic ones (rib-bearing, T1-T13), the lumbar ones (L1-L6), and the two landmarks,
# ribs and sacrum. Each vertebra is named afterwards by the label chain model (vfscreen.inference.label_consistency)
# from the order of the components along the spine, the thoraco-lumbar transition and the landmarks (which vertebra
# carries a rib, which one sits on the sacrum). Group ids are the values the network's label map holds.
LABEL_GROUPINGS = ("vertebrae", "spine_regions")  # "vertebrae" = one class per vertebra (default)
SPINE_REGIONS: dict[str, tuple[int, ...]] = {
    "vertebra": tuple(VERSE_TO_CLASS[v] for v in SPINE_ORDER),
    "thoracic": tuple(VERSE_TO_CLASS[v] for v in SPINE_ORDER if VERSE_NAMES[v].startswith("T")),
    "lumbar": tuple(VERSE_TO_CLASS[v] for v in SPINE_ORDER if VERSE_NAMES[v].startswith("L")),
    "rib": (RIB_CLASS,),
    "sacrum": (SACRUM_CLASS,),
}
# later regions overwrite earlier ones
SPINE_REGION_GROUP_IDS = {"vertebra": 1, "thoracic": 2, "lumbar": 3, "rib": 4, "sacrum": 5}
VERTEBRA_GROUP_IDS = (1, 2, 3)  # group ids that are vertebra voxels


def grouped_labels_dict(grouping: str) -> tuple[dict, list[int] | None]:
    """(``labels`` of an nnU-Net dataset.json, ``regions_class_order`` or None) for a label grouping."""
    if grouping == "vertebrae":
        return nnunet_labels_dict(), None
    if grouping == "spine_regions":
        regions = {name: list(class_ids) for name, class_ids in SPINE_REGIONS.items()}
        return {"background": 0, **regions}, [SPINE_REGION_GROUP_IDS[name] for name in regions]
    raise ValueError(f"unknown label grouping {grouping!r} (choose from {', '.join(LABEL_GROUPINGS)})")


def region_evidence(region_probabilities: np.ndarray) -> np.ndarray:
    """Per-vertebra-class evidence from the mean sigmoid outputs of the ``spine_regions`` grouping.

    region_probabilities: (N, 3) mean P(vertebra), P(thoracic), P(lumbar) of N components (further columns, the
    landmark regions, are ignored). Returns (N, NUM_VERTEBRA_CLASSES) probabilities of classes 1..26 (rows sum to 1),
    treating the thoracic and lumbar outputs as independent evidence.
    """
    region_probabilities = np.clip(np.asarray(region_probabilities, dtype=float)[:, :3], 1e-6, 1 - 1e-6)
    class_ids = np.arange(1, NUM_VERTEBRA_CLASSES + 1)
    thoracic = np.isin(class_ids, SPINE_REGIONS["thoracic"])
    lumbar = np.isin(class_ids, SPINE_REGIONS["lumbar"])
    p_thoracic, p_lumbar = region_probabilities[:, 1:2], region_probabilities[:, 2:3]
    evidence = (np.where(thoracic, p_thoracic, 1 - p_thoracic) * np.where(lumbar, p_lumbar, 1 - p_lumbar))
    return evidence / evidence.sum(axis=1, keepdims=True)


# Structures that are not graded but serve as anatomical context (naming landmarks): canonical names.
MAX_RIB_NUMBER = 13  # a 13th rib pair goes with T13 (TotalSegmentator names rib_left_1 .. rib_right_12)
LANDMARK_NAMES: tuple[str, ...] = ("sacrum", "S1", "coccyx") + tuple(
    f"rib_{side}_{number}" for side in ("left", "right") for number in range(1, MAX_RIB_NUMBER + 1))
_VERTEBRA_NAME = re.compile(r"(?:vertebrae?[_ -]?)?([CTL])(\d{1,2})", re.IGNORECASE)
_RIB_NAME = re.compile(r"rib[_ -]?(left|right)[_ -]?(\d{1,2})", re.IGNORECASE)


def parse_structure_name(name: str) -> tuple[str, int | str] | None:
    """What a label name of another tool means: ``("vertebra", VerSe id)``, ``("landmark", canonical name)`` or None
    (another structure, e.g. an organ).

    Understood: 'L1', 'vertebrae_L1' (TotalSegmentator), 'vertebra_T13', 'L6', 'C1'; 'vertebrae_S1' / 'S1', 'sacrum',
    'coccyx'; 'rib_left_1' ... 'rib_right_12'. Case and '_' / '-' / ' ' separators do not matter.
    """
    text = str(name).strip()
    match = _VERTEBRA_NAME.fullmatch(text)
    if match:
        candidate = f"{match.group(1).upper()}{int(match.group(2))}"
        return ("vertebra", NAME_TO_VERSE[candidate]) if candidate in NAME_TO_VERSE else None
    lowered = re.sub(r"[\s-]+", "_", text.lower())
    if lowered in ("vertebrae_s1", "vertebra_s1", "s1"):
        return "landmark", "S1"
    if lowered in ("sacrum", "os_sacrum"):
        return "landmark", "sacrum"
    if lowered in ("coccyx", "cocygis", "os_coccygis"):
        return "landmark", "coccyx"
    match = _RIB_NAME.fullmatch(lowered)
    if match and 1 <= int(match.group(2)) <= MAX_RIB_NUMBER:
        return "landmark", f"rib_{match.group(1)}_{int(match.group(2))}"
    return None
