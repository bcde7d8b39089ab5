"""The nnU-Net segmenter of vfscreen_predict on a hand-made tiny nnU-Net model folder (random weights).

Checks what vfscreen adds around nnUNetPredictor: checkpoints in nnU-Net's own format (numpy scalars in the training
log, a torch.device in init_args) load with weights_only=True, the fold ensemble is set up by manual initialisation,
and class map + probabilities come back on the input's grid, also through a reorientation."""
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_fakes import write_tiny_nnunet_model
from vfscreen.labels import NUM_CLASSES


@pytest.fixture
def model_folder(tmp_path):
    return write_tiny_nnunet_model(tmp_path)


@pytest.mark.parametrize("orientation", [None, "LPS"])
def test_segmenter_returns_maps_on_the_input_grid(model_folder, orientation):
    from vfscreen.core.model_folders import available_folds
    from vfscreen.inference.segmentation import NnunetSegmenter

    torch.set_num_threads(1)
    assert available_folds(model_folder, "checkpoint_final.pth") == [0, 1]
    segmenter = NnunetSegmenter(model_folder, [0, 1], "cpu", orientation=orientation, use_mirroring=False)
    array = np.random.default_rng(0).normal(0, 300, (14, 20, 18)).astype(np.int16)  # (z, y, x)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((2.5, 2.0, 3.5))
    image.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))  # RAS
    segmentation = segmenter(image)
    class_map, probabilities = segmentation.class_map, segmentation.probabilities
    assert segmentation.shape == array.shape and segmentation.full_class_map().shape == array.shape
    assert class_map.dtype == np.uint8 and probabilities.dtype == np.float16
    assert probabilities.shape == (NUM_CLASSES,) + class_map.shape
    np.testing.assert_allclose(probabilities.astype(np.float32).sum(axis=0), 1.0, atol=2e-2)
    assert np.array_equal(class_map, probabilities.argmax(axis=0)) or \
        np.mean(class_map == probabilities.argmax(axis=0)) > 0.99  # float16 ties


def test_unsafe_or_missing_checkpoint_is_refused(model_folder, tmp_path):
    import pickle

    from vfscreen.errors import ConfigError
    from vfscreen.core.nnunet_models import load_nnunet_checkpoint

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"network_weights": Evil()}))
    with pytest.raises(ConfigError, match="cannot be loaded safely"):
        load_nnunet_checkpoint(evil)
    with pytest.raises(ConfigError, match="not found"):
        load_nnunet_checkpoint(tmp_path / "absent.pth")


@pytest.mark.parametrize("orientation", ["LPS", "PIR", "RAS"])
def test_reorientation_round_trip_is_voxel_exact(model_folder, orientation):
    """The network sees the image in ``orientation``; its maps come back on the input's own voxel grid."""
    from vfscreen.inference.segmentation import NnunetSegmenter

    segmenter = NnunetSegmenter(model_folder, [0], "cpu", orientation=orientation, use_mirroring=False)

    def threshold_network(data):  # stands in for nnU-Net's network: class 1 where the input voxel was > 0
        foreground = data[0] > (0.0 - 300.0) / 250.0  # the plan's CT normalisation of 0 HU
        logits = torch.full((NUM_CLASSES,) + foreground.shape, -100.0)
        logits[0], logits[1] = torch.where(foreground, -100.0, 100.0), torch.where(foreground, 100.0, -100.0)
        return logits

    segmenter.predictor.predict_logits_from_preprocessed_data = threshold_network
    array = np.random.default_rng(1).choice([-100.0, 100.0], (7, 9, 11)).astype(np.float32)
    array[:, :4] = -100.0  # background around part of the image: the region is smaller than the image
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((3.0, 3.0, 3.0))  # the plan's spacing: no resampling, so the round trip must be exact
    image.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, -1))  # an oblique-free but permuted, flipped grid
    segmentation = segmenter(image)
    assert np.array_equal(segmentation.full_class_map(), (array > 0).astype(np.uint8))
    assert segmentation.box[1].start >= 1  # the background rows are (partly) outside the region
    foreground = (array > 0)[segmentation.box].astype(np.float16)
    assert np.array_equal(segmentation.probabilities[1], foreground)


def test_vfscreen_trainer_checkpoints_are_found(model_folder):
    """Checkpoints written by vfscreenSegTrainer (not findable by nnunetv2's own look-up) load too."""
    from vfscreen.core.nnunet_models import load_nnunet_checkpoint
    from vfscreen.inference.segmentation import NnunetSegmenter

    for fold in (0, 1):
        path = model_folder / f"fold_{fold}" / "checkpoint_final.pth"
        checkpoint = load_nnunet_checkpoint(path)
        checkpoint["trainer_name"] = "vfscreenSegTrainer"
        torch.save(checkpoint, path)
    segmenter = NnunetSegmenter(model_folder, [0, 1], "cpu", use_mirroring=False)
    assert segmenter.trainer_name == "vfscreenSegTrainer"
    segmentation = segmenter(sitk.GetImageFromArray(np.zeros((8, 8, 8), np.float32)))
    assert segmentation.full_class_map().shape == (8, 8, 8)
