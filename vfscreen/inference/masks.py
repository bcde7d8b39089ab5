"""Vertebra masks a user already has (``vfscreen_predict --masks``): TotalSegmentator, VerSe, nnU-Net or other output.

``--masks`` is one file (when ``-i`` is one scan) or a folder where each case's mask is found by its case id:
``<case>.nii.gz``, ``<case>_seg.nii.gz`` (``.nii`` too), or a TotalSegmentator per-structure folder
``<case>/vertebrae_L1.nii.gz ...`` (for a single scan the folder itself may be that per-structure folder). Cases
without a mask are segmented as usual.

Reading a mask (:func:`read_case_mask`): the label convention is chosen by vfscreen.inference.label_conventions; a
mask on another grid than the CT (TotalSegmentator's 1.5 / 3 mm output, a crop) is resampled onto the CT grid with
nearest neighbour (SimpleITK) and a warning; labels are mapped to VerSe ids and landmarks
(vfscreen.inference.spine_labels) and never renamed - :func:`check_given_labels` only warns. A mask that is 2D / 4D,
holds only background, has unknown labels or no vertebra, does not overlap the CT, or whose vertebrae are not bone
in the CT (mask of another patient) fails its case with one message (InputError); nothing is written for it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from vfscreen.errors import ConfigError, InputError
from vfscreen.inference.geometry import array_indices_to_world
from vfscreen.inference.label_conventions import choose_convention, embedded_label_table, table_convention
from vfscreen.inference.plausibility import BONE_MIN_P90_HU, looks_like_ct_hu
from vfscreen.inference.spine_labels import SpineLabels, check_given_labels, spine_labels_from_label_map
from vfscreen.labels import parse_structure_name
from vfscreen.utils.image_io import read_image, same_geometry

NIFTI_SUFFIXES = (".nii.gz", ".nii")
MASK_FILE_PATTERNS = ("{case}.nii.gz", "{case}.nii", "{case}_seg.nii.gz", "{case}_seg.nii")


@dataclass(frozen=True)
class MaskSource:
    path: Path
    kind: str  # "file" | "structures" (a folder with one NIfTI file per structure)
    dataset_json: Path | None = None  # a dataset.json next to the masks (its label names)


def _stem(path: Path) -> str:
    return next(path.name[: -len(s)] for s in NIFTI_SUFFIXES + ("",) if path.name.endswith(s))


def _nifti_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(NIFTI_SUFFIXES)
                  and not p.name.startswith("."))


def _is_structure_folder(folder: Path) -> bool:
    return any(parse_structure_name(_stem(path)) for path in _nifti_files(folder))


def find_masks(masks: str | Path, case_ids: list[str]) -> dict[str, MaskSource]:
    """case id -> its mask, for the cases ``masks`` has one for. ConfigError when ``masks`` fits none."""
    masks = Path(masks)
    if not masks.exists():
        raise ConfigError(f"--masks {masks} does not exist")
    if masks.is_file():
        if len(case_ids) != 1:
            raise ConfigError(f"--masks {masks} is one file but -i holds {len(case_ids)} scans; give a folder with "
                              "<case>.nii.gz / <case>_seg.nii.gz / <case>/ per case")
        dataset_json = masks.parent / "dataset.json"
        return {case_ids[0]: MaskSource(masks, "file", dataset_json if dataset_json.is_file() else None)}
    dataset_json = masks / "dataset.json" if (masks / "dataset.json").is_file() else None
    found = {}
    for case_id in case_ids:
        files = [masks / pattern.format(case=case_id) for pattern in MASK_FILE_PATTERNS]
        existing = [path for path in files if path.is_file()]
        if existing:
            found[case_id] = MaskSource(existing[0], "file", dataset_json)
        elif (masks / case_id).is_dir():
            found[case_id] = MaskSource(masks / case_id, "structures")
    if not found and len(case_ids) == 1 and _is_structure_folder(masks):
        found[case_ids[0]] = MaskSource(masks, "structures")
    if not found:
        raise ConfigError(f"--masks {masks}: no mask for any case (looked for "
                          f"{', '.join(p.format(case='<case>') for p in MASK_FILE_PATTERNS)} and "
                          f"<case>/vertebrae_*.nii.gz for {', '.join(case_ids[:5])}{' ...' if len(case_ids) > 5 else ''})")
    return found


def _read_label_image(path: Path) -> sitk.Image:
    """A 3D integer label image (InputError for 2D, 4D with several volumes, non-integer values)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        pass  # read_image below names the problem
    else:
        size = reader.GetSize()
        if len(size) == 2 or (len(size) == 3 and min(size) < 2):
            raise InputError(f"{path}: mask is 2D; vfscreen needs a 3D mask on the CT's volume")
        if len(size) == 4 and size[3] > 1:
            raise InputError(f"{path}: mask is 4D with {size[3]} volumes; vfscreen needs one 3D label volume")
        if len(size) > 4:
            raise InputError(f"{path}: mask is {len(size)}D; vfscreen needs one 3D label volume")
    image = read_image(path, what="mask")
    if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        array = sitk.GetArrayViewFromImage(image)
        if not np.array_equal(array, np.round(array)):
            raise InputError(f"{path}: mask holds non-integer values (a probability map?); vfscreen needs labels")
        image = sitk.Cast(image, sitk.sitkInt32)
    return image


def _on_ct_grid(mask: sitk.Image, image: sitk.Image, source: str, warnings: list[str]) -> sitk.Image:
    """The mask on the CT grid: itself, or resampled with nearest neighbour (with a warning)."""
    if same_geometry(mask, image):
        mask = sitk.Image(mask)
        mask.CopyInformation(image)
        return mask
    labelled_before = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))
    resampled = sitk.Resample(mask, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, mask.GetPixelID())
    labelled_after = int(np.count_nonzero(sitk.GetArrayViewFromImage(resampled)))
    if labelled_before and not labelled_after:
        raise InputError(f"{source}: the mask does not overlap the CT (none of its labelled voxels lies in the CT's "
                         "field of view): mask and CT of different scans?")
    warnings.append(f"mask on another grid (size {list(mask.GetSize())}, spacing "
                    f"{[round(s, 3) for s in mask.GetSpacing()]} mm) than the CT (size {list(image.GetSize())}, "
                    f"spacing {[round(s, 3) for s in image.GetSpacing()]} mm): resampled to the CT grid with nearest "
                    "neighbour")
    return resampled


def _structure_label_map(folder: Path, image: sitk.Image, warnings: list[str]) -> tuple[np.ndarray, dict]:
    """One label map on the CT grid from a per-structure folder (vertebrae + landmarks only; other files unread)."""
    files = [(path, parse_structure_name(_stem(path))) for path in _nifti_files(folder)]
    spine_files = [(path, parsed) for path, parsed in files if parsed is not None]
    if not any(parsed[0] == "vertebra" for _, parsed in spine_files):
        raise InputError(f"{folder}: no vertebra file (vertebrae_*.nii.gz) in this per-structure mask folder")
    label_map = np.zeros(sitk.GetArrayViewFromImage(image).shape, dtype=np.uint8)
    table, resampled_any, overlaps = {}, False, 0
    for value, (path, _) in enumerate(spine_files, start=1):
        structure = _read_label_image(path)
        if not np.any(sitk.GetArrayViewFromImage(structure)):
            continue  # TotalSegmentator writes a file for every structure, empty when not in view
        notes = []
        array = sitk.GetArrayFromImage(_on_ct_grid(structure, image, str(path), notes)) > 0
        resampled_any |= bool(notes)
        overlaps += int(np.count_nonzero(array & (label_map > 0)))
        label_map[array] = value
        table[value] = _stem(path)
    if not any(parse_structure_name(name)[0] == "vertebra" for name in table.values()):
        raise InputError(f"{folder}: every vertebra file (vertebrae_*.nii.gz) is empty")
    if resampled_any:
        warnings.append("per-structure masks on another grid than the CT: resampled to the CT grid with nearest "
                        "neighbour")
    if overlaps:
        warnings.append(f"{overlaps} voxels belong to two structure files; the later file (by name) kept them")
    return label_map, table


def _superior_mm(label_map: np.ndarray, image: sitk.Image) -> dict[int, float]:
    """label value -> world head-feet (LPS z) coordinate of its centroid."""
    result = {}
    for value, box in enumerate(ndimage.find_objects(label_map.astype(np.int32)), start=1):
        if box is not None:
            indices = np.argwhere(label_map[box] == value) + np.array([b.start for b in box])
            result[value] = float(array_indices_to_world(image, indices.mean(axis=0, keepdims=True))[0, 2])
    return result


def read_case_mask(source: MaskSource, image: sitk.Image, forced_labels: str | None = None) -> SpineLabels:
    """The case's vertebrae and landmarks on the CT grid from its mask (see the module docstring)."""
    warnings: list[str] = []
    name = str(source.path)
    info = {"source": "masks", "mask": name}
    if source.kind == "structures":
        label_map, table = _structure_label_map(source.path, image, warnings)
        convention, notes = table_convention("totalseg_structure_files", table), []
        if forced_labels:
            notes.append("--mask_labels does not apply to a per-structure folder (the file names are the labels)")
    else:
        mask = _read_label_image(source.path)
        label_map = sitk.GetArrayFromImage(_on_ct_grid(mask, image, name, warnings))
        if label_map.size and label_map.min() < 0:
            raise InputError(f"{name}: mask holds negative label values")
        if not np.any(label_map):
            raise InputError(f"{name}: mask holds only background (no label)")
        label_map = label_map.astype(np.uint8 if label_map.max() <= 255 else np.int32, copy=False)
        convention, notes = choose_convention(
            np.unique(label_map), _superior_mm(label_map, image), name, forced=forced_labels,
            embedded=embedded_label_table(source.path), dataset_json=source.dataset_json)
    warnings += notes
    info["resampled"] = any("resampled" in warning for warning in warnings)
    spine = spine_labels_from_label_map(label_map, convention, name, info)
    del label_map
    ct = sitk.GetArrayViewFromImage(image)
    if looks_like_ct_hu(ct):
        vertebra_voxels = ct[spine.verse_map > 0]
        if float(np.percentile(vertebra_voxels, 90)) < BONE_MIN_P90_HU:
            raise InputError(f"{name}: the mask's vertebrae are not bone in this CT (90th percentile "
                             f"{np.percentile(vertebra_voxels, 90):.0f} HU < {BONE_MIN_P90_HU:.0f}): mask and CT of "
                             "different patients or scans?")
    spine.warnings = warnings + check_given_labels(spine.verse_map, image)
    return spine
