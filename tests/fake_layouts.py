"""Tiny fake copies of the published layouts of VerSe 2019/2020 and the Faint-Features dataset, for converter tests.

Volumes are ~24^3 voxels: vertebrae are boxes stacked along the first array axis, CT = -1000 HU air with noise and
300 HU bone. Expected centroids are computed independently of the converter: SimpleITK's label statistics give the
world centroid, and SimpleITK's DICOMOrient gives the reoriented grid in which VerSe stores voxel centroids.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def make_case(verse_ids=(19, 20, 21), size=(24, 24, 24), spacing=(1.0, 1.0, 1.0), orientation="RAS",
              origin=(-12.5, 30.0, 101.25), seed=0, ct_dtype=np.int16):
    """(ct, mask) SimpleITK images sharing one grid. ``size``/``spacing`` in SimpleITK (x, y, z) order."""
    rng = np.random.default_rng(seed)
    shape = tuple(reversed(size))  # numpy (z, y, x)
    mask = np.zeros(shape, dtype=np.uint8)
    for k, verse_id in enumerate(verse_ids):
        start = 1 + k * 4
        mask[start:start + 3, 6 + k % 3:16, 5:14 + k % 4] = verse_id
    ct = (-1000 + rng.integers(-40, 40, size=shape)).astype(ct_dtype)
    ct[mask > 0] = (300 + rng.integers(-30, 30, size=int((mask > 0).sum()))).astype(ct_dtype)
    images = []
    for array in (ct, mask):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(spacing)
        image.SetOrigin(origin)
        image.SetDirection(sitk.DICOMOrientImageFilter_GetDirectionCosinesFromOrientation(orientation))
        images.append(image)
    return images[0], images[1]


def world_centroids(mask: sitk.Image) -> dict[int, list[float]]:
    statistics = sitk.LabelShapeStatisticsImageFilter()
    statistics.Execute(mask)
    return {int(v): list(statistics.GetCentroid(v)) for v in statistics.GetLabels()}


def verse_centroid_json(mask: sitk.Image, axis_codes: str = "PIR") -> list[dict]:
    """VerSe's *_ctd.json content: voxel centroids on the grid reoriented to ``axis_codes``."""
    reoriented = sitk.DICOMOrient(mask, axis_codes)
    entries = [{"direction": list(axis_codes)}]
    for verse_id, point in world_centroids(mask).items():
        x, y, z = reoriented.TransformPhysicalPointToContinuousIndex(point)
        entries.append({"label": verse_id, "X": x, "Y": y, "Z": z})
    return entries


def write_verse_scan(split_root: Path, stem: str, ct: sitk.Image, mask: sitk.Image | None,
                     axis_codes: str = "PIR") -> dict[int, list[float]]:
    """Write one scan in VerSe's layout; returns the expected world centroids (from the mask as written)."""
    subject = stem.split("_")[0]
    raw_folder, derivatives = split_root / "rawdata" / subject, split_root / "derivatives" / subject
    raw_folder.mkdir(parents=True, exist_ok=True)
    derivatives.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(ct, str(raw_folder / f"{stem}_ct.nii.gz"))
    if mask is None:
        return {}
    mask_file = derivatives / f"{stem}_seg-vert_msk.nii.gz"
    sitk.WriteImage(mask, str(mask_file))
    written_mask = sitk.ReadImage(str(mask_file))
    (derivatives / f"{stem}_seg-subreg_ctd.json").write_text(json.dumps(verse_centroid_json(written_mask, axis_codes)))
    return world_centroids(written_mask)


def build_verse19(root: Path) -> dict:
    """VerSe 2019 layout without split folders: sub-verse004 (RAS), sub-verse401_split-verse253 (LPS, float CT)."""
    expected = {}
    ct, mask = make_case((18, 19, 20, 21), seed=1)
    expected["verse004"] = write_verse_scan(root, "sub-verse004", ct, mask)
    ct, mask = make_case((20, 21, 22, 23, 24), orientation="LPS", spacing=(0.9, 0.9, 1.5), seed=2,
                         ct_dtype=np.float32)
    expected["verse401_split-verse253"] = write_verse_scan(root, "sub-verse401_split-verse253", ct, mask, "LAS")
    return expected


def build_verse20(root: Path) -> dict:
    """VerSe 2020 layout with split folders: a PIR anisotropic scan with T13 + L6 + sacrum, and a test scan."""
    expected = {}
    ct, mask = make_case((19, 28, 20, 21, 25, 26), size=(20, 24, 22), spacing=(0.7, 3.0, 1.3), orientation="PIR",
                         origin=(40.0, -20.0, 300.0), seed=3)
    expected["gl003_dir-ax"] = write_verse_scan(root / "01_training", "sub-gl003_dir-ax", ct, mask, "PIR")
    ct, mask = make_case((8, 9, 10), orientation="RAI", spacing=(1.1, 1.1, 2.0), seed=4)
    expected["verse506_dir-iso"] = write_verse_scan(root / "01_training", "sub-verse506_dir-iso", ct, mask, "IPL")
    ct, mask = make_case((16, 17, 18), orientation="LPS", seed=5)
    expected["verse820"] = write_verse_scan(root / "03_test", "sub-verse820", ct, mask, "PIR")
    return expected


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header] + rows) + "\n")
    return path


# ---------------------------------------------------------------------------------------------- Faint-Features

def build_faint_features_original(folder: Path) -> dict:
    """The unzipped original_dataset.zip: img/<ct>.nii.gz, seg/<ct>.nii.gz, annotation.yaml. Returns the grades."""
    cases = {
        "1.2.840.113619.2.55.1": dict(verse_ids=(18, 19, 20, 21), orientation="LPS", spacing=(0.7, 0.7, 1.25), seed=6),
        "patient_0002": dict(verse_ids=(19, 28, 20, 25), orientation="PIR", spacing=(0.6, 2.5, 0.9),
                             size=(22, 20, 24), seed=7),
    }
    grades = {"1.2.840.113619.2.55.1": {18: 0, 19: 1, 20: 3, 21: 0}, "patient_0002": {19: 0, 28: 2, 20: 0}}
    (folder / "img").mkdir(parents=True, exist_ok=True)
    (folder / "seg").mkdir(parents=True, exist_ok=True)
    for name, parameters in cases.items():
        ct, mask = make_case(**parameters)
        sitk.WriteImage(ct, str(folder / "img" / f"{name}.nii.gz"))
        sitk.WriteImage(mask, str(folder / "seg" / f"{name}.nii.gz"))
    lines = []
    for name, case_grades in grades.items():
        lines.append(f"{name}.nii.gz:")
        lines.extend(f"  '{label}': '{grade}'" for label, grade in case_grades.items())
    (folder / "annotation.yaml").write_text("\n".join(lines) + "\n")
    return grades


def zip_folder(folder: Path, zip_path: Path, prefix: str = "original_dataset/") -> Path:
    with zipfile.ZipFile(zip_path, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, prefix + path.relative_to(folder).as_posix())
    return zip_path


def build_faint_features_patches(folder: Path, tag: str = "WA0aVG88") -> dict:
    """The processed layout: img/ + seg/ patches {image}_{label}_{grade}.nii.gz (vertebra box, binary mask) and
    train/test file lists. Returns {patch name: (image, label, grade, kind)}."""
    images = {"1.2.840.113619.2.55.1": dict(verse_ids=(19, 20), seed=8, orientation="LPS"),
              "patient_0002": dict(verse_ids=(20, 21), seed=9, orientation="RAS", spacing=(0.8, 0.8, 2.0)),
              "patient_0003": dict(verse_ids=(28, 20), seed=10, orientation="LPS")}
    grades = {19: 0, 20: 1, 21: 3, 28: 2}
    kinds = {"1.2.840.113619.2.55.1": "train", "patient_0002": "train", "patient_0003": "test"}
    (folder / "img").mkdir(parents=True, exist_ok=True)
    (folder / "seg").mkdir(parents=True, exist_ok=True)
    patches = {}
    for image, parameters in images.items():
        ct, mask = make_case(**parameters)
        mask_array = sitk.GetArrayFromImage(mask)
        for verse_id in parameters["verse_ids"]:
            z, y, x = np.nonzero(mask_array == verse_id)
            index, size = [int(x.min()), int(y.min()), int(z.min())], [int(np.ptp(x)) + 1, int(np.ptp(y)) + 1,
                                                                       int(np.ptp(z)) + 1]
            patch = sitk.RegionOfInterest(ct, size, index)
            patch_mask = sitk.RegionOfInterest(mask, size, index) == verse_id  # binary, as the authors' patches
            name = f"{image}_{verse_id}_{grades[verse_id]}.nii.gz"
            sitk.WriteImage(patch, str(folder / "img" / name))
            sitk.WriteImage(sitk.Cast(patch_mask, sitk.sitkUInt8), str(folder / "seg" / name))
            patches[name] = (image, verse_id, grades[verse_id], kinds[image])
    for kind in ("train", "test"):
        names = [name for name, info in patches.items() if info[3] == kind]
        (folder / f"{kind}_file_list.{tag}.yaml").write_text("".join(f"- {name}\n" for name in names))
    return patches
