"""Label conventions of vertebra masks made by other tools, and how vfscreen tells which one a mask uses.

A convention is a table label value -> structure name; :func:`vfscreen.labels.parse_structure_name` turns each name
into a VerSe vertebra id, a landmark (sacrum, S1, coccyx, ribs) or "another structure" (ignored). Known tables:

- ``verse``: VerSe ids (1-7 C1-C7, 8-19 T1-T12, 20-25 L1-L6, 26 sacrum, 27 coccyx, 28 T13);
- ``totalseg``: TotalSegmentator v2 ``total`` task (25 sacrum, 26 vertebrae_S1, 27 L5 ... 50 C1, 92-103 rib_left_1-12,
  104-115 rib_right_1-12; the other ids up to 117 are organs, vessels, muscles and other bones);
- ``totalseg_v1``: TotalSegmentator v1 (18 L5 ... 41 C1, 58-69 rib_left_1-12, 70-81 rib_right_1-12, 92 sacrum; other
  ids up to 104 are other structures);
- a label table embedded in the NIfTI file (TotalSegmentator writes an XML ``<Label Key="27">vertebrae_L5</Label>``
  table into a header extension of every multilabel output), read with nibabel;
- the ``labels`` of an nnU-Net ``dataset.json`` (a model's, or one next to the masks as ``nnUNetv2_predict`` leaves it).

Which one (:func:`choose_convention`): a forced one (``--mask_labels``) > the embedded table > a ``dataset.json``
next to the masks > the id tables, tried in the order totalseg, totalseg_v1, verse. An id table is a candidate when
it knows every value of the mask and names at least one vertebra; among candidates, the first whose vertebra names
run in the anatomical order along the patient's head-feet axis wins (VerSe counts head -> feet, TotalSegmentator
feet -> head, so L1-L5 written as VerSe 20-24 is not taken for TotalSegmentator v1's L3-T11). Several candidates
that pass: the first is used and a warning names the others.
"""
from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vfscreen.errors import ConfigError, InputError
from vfscreen.labels import VERSE_NAMES, parse_structure_name, spine_position

_TS_V2_VERTEBRAE = ["S1"] + [f"L{n}" for n in range(5, 0, -1)] + [f"T{n}" for n in range(12, 0, -1)] + \
    [f"C{n}" for n in range(7, 0, -1)]  # 26 .. 50
_TS_V1_VERTEBRAE = _TS_V2_VERTEBRAE[1:]  # 18 .. 41 (v1 has no S1)


def _ribs(first_id: int) -> dict[int, str]:
    return {first_id + offset + 12 * side_index: f"rib_{side}_{offset + 1}"
            for side_index, side in enumerate(("left", "right")) for offset in range(12)}


@dataclass(frozen=True)
class LabelConvention:
    """value -> name; values up to ``max_id`` without a name are known structures that are not spine (ignored)."""

    name: str
    names: dict  # int -> str
    max_id: int

    def unknown_values(self, values) -> list[int]:
        return [int(v) for v in values if int(v) != 0 and int(v) not in self.names and not 0 < int(v) <= self.max_id]


CONVENTIONS: dict[str, LabelConvention] = {
    "totalseg": LabelConvention("totalseg", {25: "sacrum", **{26 + i: f"vertebrae_{n}" for i, n in
                                                            enumerate(_TS_V2_VERTEBRAE)}, **_ribs(92)}, 117),
    "totalseg_v1": LabelConvention("totalseg_v1", {**{18 + i: f"vertebrae_{n}" for i, n in
                                                      enumerate(_TS_V1_VERTEBRAE)}, **_ribs(58), 92: "sacrum"}, 104),
    "verse": LabelConvention("verse", {**VERSE_NAMES, 26: "sacrum", 27: "coccyx"}, 28),
}
GUESS_ORDER = ("totalseg", "totalseg_v1", "verse")
_XML_LABEL = re.compile(rb"<Label\s+Key=\"(\d+)\"[^>]*>\s*(?:<!\[CDATA\[)?(.*?)(?:\]\]>)?\s*</Label>", re.DOTALL)


def embedded_label_table(path: Path) -> dict[int, str] | None:
    """The label table of a NIfTI header extension (TotalSegmentator's XML), or None when the file has none."""
    import nibabel

    try:
        extensions = nibabel.load(str(path)).header.extensions
    except Exception:  # noqa: BLE001 - not a NIfTI nibabel can read: no embedded table
        return None
    for extension in extensions:
        content = extension.get_content()
        content = content if isinstance(content, bytes) else str(content).encode()
        if b"<Label" not in content:
            continue
        try:
            root = ElementTree.fromstring(content.strip().rstrip(b"\x00").strip())
            table = {int(label.get("Key")): (label.text or "").strip() for label in root.iter("Label")}
        except (ElementTree.ParseError, TypeError, ValueError):
            table = {int(key): name.decode(errors="replace").strip() for key, name in _XML_LABEL.findall(content)}
        if table:
            return table
    return None


def dataset_json_table(path: Path) -> dict[int, str]:
    """value -> name from an nnU-Net dataset.json's ``labels`` (ConfigError when unusable)."""
    try:
        labels = json.loads(Path(path).read_text())["labels"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"{path}: not an nnU-Net dataset.json with 'labels' ({type(error).__name__}: "
                          f"{str(error)[:200]})") from None
    table = {}
    for name, value in labels.items():
        if isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: label {name!r} is a region {value} (region-based models are not supported "
                              "as vertebra sources; their outputs overlap)")
        if int(value) != 0:
            table[int(value)] = str(name)
    return table


def table_convention(name: str, table: dict[int, str]) -> LabelConvention:
    return LabelConvention(name, dict(table), 0)


def named_vertebrae(convention: LabelConvention, values) -> dict[int, int]:
    """label value -> VerSe id for the values that the convention names as vertebrae."""
    result = {}
    for value in values:
        parsed = parse_structure_name(convention.names.get(int(value), ""))
        if parsed and parsed[0] == "vertebra":
            result[int(value)] = parsed[1]
    return result


def _order_agrees(vertebrae: dict[int, int], superior_mm: dict[int, float]) -> bool:
    """True when the vertebrae named by a convention lie in anatomical order along the head-feet axis (or when fewer
    than two of them have a position)."""
    placed = [value for value in vertebrae if value in superior_mm]
    if len(placed) < 2:
        return True
    rank = np.array([spine_position(vertebrae[value]) for value in placed], dtype=float)
    height = np.array([superior_mm[value] for value in placed])
    # cranial vertebrae (small rank) must lie higher: a clearly negative rank-height correlation
    return float(np.corrcoef(rank, height)[0, 1]) < -0.5 if np.ptp(rank) and np.ptp(height) else True


def choose_convention(values, superior_mm: dict[int, float], source: str, forced: str | None = None,
                      embedded: dict[int, str] | None = None, dataset_json: Path | None = None
                      ) -> tuple[LabelConvention, list[str]]:
    """(the convention of a mask, warnings). ``values``: its non-zero label values; ``superior_mm``: value -> world
    head-feet coordinate of the label's centroid (LPS z); ``forced``: 'verse' | 'totalseg' | 'totalseg_v1' | a path to
    a dataset.json. InputError when no convention fits (names the labels and the way out)."""
    values = sorted(int(v) for v in values if int(v) != 0)
    if forced:
        convention = CONVENTIONS.get(forced) or table_convention(f"dataset.json:{forced}", dataset_json_table(forced))
        candidates = [convention]
    elif embedded:
        candidates = [table_convention("embedded_label_table", embedded)]
    elif dataset_json is not None:
        candidates = [table_convention(f"dataset.json:{dataset_json}", dataset_json_table(dataset_json))]
    else:
        candidates = [CONVENTIONS[name] for name in GUESS_ORDER]
    fitting = [c for c in candidates if not c.unknown_values(values) and named_vertebrae(c, values)]
    if not fitting:
        convention = candidates[0]
        unknown = convention.unknown_values(values)
        if len(candidates) == 1 and unknown:
            raise InputError(f"{source}: label values {unknown[:12]} are not in the {convention.name} label table")
        if len(candidates) == 1:
            raise InputError(f"{source}: no vertebra label (values {values[:12]} name no vertebra in the "
                             f"{convention.name} label table)")
        raise InputError(f"{source}: label values {values[:12]} fit no known convention (VerSe 1-28, "
                         "TotalSegmentator v2 1-117 with vertebrae 26-50, v1 1-104 with vertebrae 18-41) or name no "
                         "vertebra; pass --mask_labels verse|totalseg|totalseg_v1|PATH_TO_dataset.json")
    ordered = [c for c in fitting if _order_agrees(named_vertebrae(c, values), superior_mm)]
    warnings = []
    if not ordered:
        ordered = fitting
        warnings.append(f"{source}: under the {fitting[0].name} convention the vertebra labels are not in anatomical "
                        "order along the head-feet axis; check the labels (or force one with --mask_labels)")
    if len(ordered) > 1:
        warnings.append(f"{source}: label values {values[:12]} also fit {', '.join(c.name for c in ordered[1:])}; "
                        f"read as {ordered[0].name} (force another with --mask_labels)")
    return ordered[0], warnings
