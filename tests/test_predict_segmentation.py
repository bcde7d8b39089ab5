"""The nnU-Net segmenter of vfscreen_predict on a hand-made tiny nnU-Net model folder (random weights).

Checks what vfscreen adds around nnUNetPredictor: checkpoints in nnU-Net's own format (numpy scalars in the training
log, a torch.device in init_args) load with weights_only=True, the fold ensemble is set up by manual initialisation,
and class map + probabilities come back on the input's grid, also through a reorientation."""
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_fakes import tiny_nnunet_plans
from vfscreen.labels import NUM_CLASSES, nnunet_labels_dict


def tiny_plans() -> dict:
    return tiny_nnunet_plans("Dataset990_Tiny")


@pytest.fixture
def model_folder(tmp_path):
    import json

    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    folder = tmp_path / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    folder.mkdir()
    plans = tiny_plans()
    dataset_json = {"channel_names": {"0": "CT"}, "labels": nnunet_labels_dict(), "numTraining": 1,
                    "file_ending": ".nii.gz"}
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset_json))
    manager = PlansManager(plans)
    for fold in (0, 1):
        torch.manual_seed(fold)
        network = nnUNetTrainer.build_network_architecture(
            manager, manager.get_configuration("3d_fullres"), 1, NUM_CLASSES, enable_deep_supervision=False)
        (folder / f"fold_{fold}").mkdir()
        torch.save({"network_weights": network.state_dict(), "trainer_name": "nnUNetTrainer",
                    "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": fold,
                                  "dataset_json": dataset_json, "device": torch.device("cpu")},
                    "inference_allowed_mirroring_axes": (0, 1, 2), "current_epoch": 1,
                    "_best_ema": np.float64(0.5), "logging": {"mean_fg_dice": [np.float64(0.4)],
                                                              "train_losses": [np.float32(1.0)]}},
                   folder / f"fold_{fold}" / "checkpoint_final.pth")
    return folder


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
    class_map, probabilities = segmenter(image)
    assert class_map.shape == array.shape and class_map.dtype == np.uint8
    assert probabilities.shape == (NUM_CLASSES,) + array.shape
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

    def threshold_network(data, properties, *args):  # stands in for nnU-Net: class 1 where the voxel is > 0
        foreground = (data[0] > 0).astype(np.uint8)
        probabilities = np.zeros((NUM_CLASSES,) + foreground.shape, np.float32)
        probabilities[0], probabilities[1] = 1 - foreground, foreground
        return foreground, probabilities

    segmenter.predictor.predict_single_npy_array = threshold_network
    array = np.random.default_rng(1).normal(0, 1, (7, 9, 11)).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, -1))  # an oblique-free but permuted, flipped grid
    class_map, probabilities = segmenter(image)
    assert np.array_equal(class_map, (array > 0).astype(np.uint8))
    assert np.array_equal(probabilities[1], (array > 0).astype(np.float16))


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
    class_map, _ = segmenter(sitk.GetImageFromArray(np.zeros((8, 8, 8), np.float32)))
    assert class_map.shape == (8, 8, 8)
