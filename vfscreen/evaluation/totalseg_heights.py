"""TotalSegmentator's own vertebral height measurement, run on the same CT and masks as vfscreen's, for comparison.

TotalSegmentator's spine report (``totalseg_spine_report``, package ``totalsegmentator.spine_report``) measures each
vertebral body on one sagittal slice of the vertebra mask at 15 / 50 / 85 % of the body's depth and calls a fracture
when min / max < 0.8. Its measuring code needs the masks, not TotalSegmentator's network weights, so it runs here on
any mask; it is an optional dependency of the benchmark only (``pip install totalsegmentator``), never of vfscreen.
Its positions map to vfscreen's height names as it names them itself (15 % posterior, 50 % middle, 85 % anterior);
a height it could not measure (0 in its output) is reported as None.
"""
from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from vfscreen.labels import name_of

INSTALL_HINT = ("pip install -e \".[totalsegmentator]\" (or pip install totalsegmentator) into the benchmark's "
                "environment; only its measuring code is used")


def totalsegmentator_version() -> str | None:
    """The installed TotalSegmentator's version, or None when it is not installed (or its report cannot load)."""
    try:
        from importlib.metadata import version

        from totalsegmentator.spine_report import measure_verte_height  # noqa: F401  (the measuring code)
        return version("totalsegmentator")
    except Exception:  # not installed, or a dependency of its report is missing
        return None


def totalsegmentator_heights(ct: sitk.Image, verse_map: np.ndarray) -> dict[int, dict[str, float | None]]:
    """{VerSe id: {"anterior"/"middle"/"posterior": mm or None}} measured by TotalSegmentator's spine report.

    ct: the CT (SimpleITK); verse_map: (Z, Y, X) VerSe ids on the CT's grid. The images go to TotalSegmentator as
    NIfTI files in a temporary folder, reoriented to its canonical (RAS) orientation as its report does.
    """
    import nibabel as nib
    from totalsegmentator.spine_report.measure_verte_height import POSITION_MAPPING, VertebraeProcessor

    present = [int(v) for v in np.unique(verse_map) if v > 0]
    if not present:
        return {}
    with tempfile.TemporaryDirectory(prefix="vfscreen_totalseg_") as folder:
        ct_file, mask_file = Path(folder) / "ct.nii.gz", Path(folder) / "mask.nii.gz"
        sitk.WriteImage(sitk.Cast(ct, sitk.sitkInt16), str(ct_file))
        mask = sitk.GetImageFromArray(verse_map.astype(np.uint8))
        mask.CopyInformation(ct)
        sitk.WriteImage(mask, str(mask_file))
        ct_img = nib.as_closest_canonical(nib.load(str(ct_file)))
        mask_img = nib.as_closest_canonical(nib.load(str(mask_file)))
        label_map = {verse_id: f"vertebrae_{name_of(verse_id)}" for verse_id in present}
        with contextlib.redirect_stdout(io.StringIO()):  # it prints every vertebra it sees
            processor = VertebraeProcessor(ct_img, mask_img, label_map, mask_img, {}, horizontal_mask_type="raw")
            info = processor.process_vertebrae() or {}
    by_name = {f"vertebrae_{name_of(v)}": v for v in present}
    result = {}
    for name, vertebra in info.items():
        if name not in by_name or "height_measurements" not in vertebra:
            continue
        heights = {POSITION_MAPPING[position]: (float(m["height_mm"]) if m["height_mm"] > 0 else None)
                   for position, m in vertebra["height_measurements"].items() if position in POSITION_MAPPING}
        result[by_name[name]] = heights
    return result
