"""Segmentation sees one anatomical layout: nnU-Net's reorienting reader (training) and SimpleITK's DICOMOrient
(prediction, vfscreen.inference.segmentation) must produce identical arrays and spacings for any stored orientation."""
import numpy as np
import pytest
import SimpleITK as sitk
from nnunetv2.imageio.reader_writer_registry import recursive_find_reader_writer_by_name

from vfscreen.dataset import NNUNET_READER_WRITER, SEGMENTATION_ORIENTATION


@pytest.mark.parametrize("stored", ["LPS", "RAS", "PIR", "ASL", "IRP", "RAI", "SLA"])
def test_nnunet_reader_matches_dicom_orient(tmp_path, stored):
    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray(rng.integers(-1000, 1000, (7, 9, 11)).astype(np.int16))
    image.SetSpacing((0.7, 1.3, 2.9))
    image.SetOrigin((10.0, -20.0, 30.0))
    path = tmp_path / f"case_{stored}.nii.gz"
    sitk.WriteImage(sitk.DICOMOrient(image, stored), str(path))

    reader = recursive_find_reader_writer_by_name(NNUNET_READER_WRITER)()
    nnunet_data, properties = reader.read_images([str(path)])
    reoriented = sitk.DICOMOrient(sitk.ReadImage(str(path)), SEGMENTATION_ORIENTATION)
    assert np.array_equal(nnunet_data[0], sitk.GetArrayFromImage(reoriented))
    assert np.allclose(properties["spacing"], reoriented.GetSpacing()[::-1])
    # every stored orientation lands on the same array
    assert np.array_equal(nnunet_data[0], sitk.GetArrayFromImage(sitk.DICOMOrient(image, SEGMENTATION_ORIENTATION)))
