"""vfscreen_predict with trained-model folders laid out as training writes them (tiny random networks).

Covers load_models: the grader fold ensemble (vfscreen checkpoints) + the nnU-Net segmentation fold ensemble found
through the grader's copy of the plans, default folds = those trained, clear errors for missing folds and for plans
of another dataset; the outputs of a full run keep the input's geometry."""
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from test_predict_outputs import CROP_PLAN, make_ct
from test_predict_segmentation import model_folder  # noqa: F401 (a fixture)
from vfscreen.errors import ConfigError

DATASET = "Dataset990_TinyPredict"
GRADER_NETWORK = {"block": "BasicBlockD", "features_per_stage": [4, 8], "n_blocks_per_stage": [1, 1],
                  "strides": [1, 2], "kernel_sizes": [3, 3], "projection_dim": 8, "num_classes": 4}


def write_grader_folds(results_dataset, dataset_name, folds=(0, 1)):
    from vfscreen.core.grader_checkpoint import checkpoint_path, save_checkpoint
    from vfscreen.core.grader_network import build_grader

    plans = {"dataset_name": dataset_name, "plans_name": "vfscreenPlans", "configurations": {"3d": {
        "segmentation": {"trainer": "nnUNetTrainer", "nnunet_plans_identifier": "nnUNetPlans",
                         "nnunet_configuration": "3d_fullres"},
        "grader": {"crop": CROP_PLAN, "network": GRADER_NETWORK}}}}
    folder = results_dataset / "vfscreen_grader__vfscreenPlans__3d"
    for fold in folds:
        torch.manual_seed(fold)
        fold_folder = folder / f"fold_{fold}"
        fold_folder.mkdir(parents=True)
        (fold_folder / "plans.json").write_text(json.dumps(plans))
        save_checkpoint(checkpoint_path(fold_folder, "final"), build_grader(GRADER_NETWORK, "supcon"), None, None,
                        {"dataset_name": dataset_name, "configuration": "3d", "fold": fold, "loss": "supcon",
                         "network_plan": GRADER_NETWORK, "input_channels": 3})
    return folder


@pytest.fixture
def trained_results(model_folder):
    """nnUNet_results/<DATASET>/ (the test session's folder) with a 2-fold segmentation model and a 2-fold grader
    (random weights); removed afterwards."""
    import shutil

    from vfscreen import paths
    dataset_folder = paths.nnUNet_results / DATASET
    shutil.rmtree(dataset_folder, ignore_errors=True)
    dataset_folder.mkdir(parents=True)
    shutil.copytree(model_folder, dataset_folder / model_folder.name)
    write_grader_folds(dataset_folder, DATASET)
    yield dataset_folder
    shutil.rmtree(dataset_folder, ignore_errors=True)


def test_full_run_with_trained_folders(trained_results, tmp_path):
    from vfscreen.inference.outputs import validate_case_json
    from vfscreen.inference.predict import predict

    torch.set_num_threads(1)
    (tmp_path / "in").mkdir()
    image = make_ct(tmp_path / "in" / "case.nii.gz", direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))
    table = predict(tmp_path / "in", tmp_path / "out", dataset=990, device="cpu", saliency=True)
    assert table.attrs["errors"] == [], table.attrs["errors"]
    data = json.loads((tmp_path / "out" / "case.json").read_text())
    validate_case_json(data)
    assert data["model"]["grader"]["folds"] == [0, 1] and data["model"]["segmentation"]["folds"] == [0, 1]
    assert data["model"]["dataset"] == DATASET
    for name in ("case_seg.nii.gz", "case_gradcam.nii.gz"):
        written = sitk.ReadImage(str(tmp_path / "out" / name))
        assert written.GetSize() == image.GetSize() and written.GetSpacing() == image.GetSpacing()
        assert written.GetOrigin() == image.GetOrigin() and written.GetDirection() == image.GetDirection()


def test_the_grader_folders_fusion_model_is_loaded(trained_results):
    from test_predict_outputs import _identity_fusion
    from vfscreen.inference.segmentation import load_models

    assert load_models(DATASET).fusion is None
    fusion = _identity_fusion(0.3)
    (trained_results / "vfscreen_grader__vfscreenPlans__3d" / "fusion.json").write_text(json.dumps(fusion))
    assert load_models(DATASET).fusion["thresholds"]["fused"] == 0.3


def test_test_time_mirroring_follows_the_plans_unless_overridden(trained_results):
    from vfscreen.inference.segmentation import load_models

    assert load_models(DATASET).segmenter.predictor.use_mirroring is True  # plans without the field: nnU-Net's default
    for plans_path in (trained_results / "vfscreen_grader__vfscreenPlans__3d").glob("fold_*/plans.json"):
        plans = json.loads(plans_path.read_text())
        plans["configurations"]["3d"]["segmentation"]["test_time_mirroring"] = False  # what a CPU plan says
        plans_path.write_text(json.dumps(plans))
    models = load_models(DATASET)
    assert models.segmenter.predictor.use_mirroring is False
    assert models.info["segmentation"]["test_time_mirroring"] is False
    assert load_models(DATASET, use_mirroring=True).segmenter.predictor.use_mirroring is True


def test_missing_fold_and_foreign_plans_are_refused(trained_results, tmp_path):
    from vfscreen.inference.segmentation import load_models

    with pytest.raises(ConfigError, match=r"fold\(s\) \[4\] not trained"):
        load_models(DATASET, folds=[0, 4])
    for plans_path in (trained_results / "vfscreen_grader__vfscreenPlans__3d").glob("fold_*/plans.json"):
        plans = json.loads(plans_path.read_text())
        plans["dataset_name"] = "Dataset991_Other"
        plans_path.write_text(json.dumps(plans))
    with pytest.raises(ConfigError, match="Dataset991_Other"):
        load_models(DATASET)


def test_a_hand_edit_of_the_plans_of_record_reaches_prediction(trained_results):
    """vfscreenPlans.json (nnUNet_preprocessed/<Dataset>/) is the file of record for the segmentation settings: an edit
    there - not in the grader folds' copies - changes what prediction does."""
    from planning_dataset import nnunet_plans, synthetic_fingerprint
    from vfscreen import paths
    from vfscreen.core.plans import plans_file, save_plans
    from vfscreen.experiment_planning import budget as B
    from vfscreen.experiment_planning import planner as P
    from vfscreen.inference.segmentation import load_models

    plans = P.assemble_plans(DATASET, synthetic_fingerprint(), nnunet_plans(), "3d_fullres", B.DeviceBudget("cuda", 80, 8),
                             B.PlanningTargets(), preset=None)
    plans["configurations"]["3d"]["segmentation"].update(trainer="nnUNetTrainer", nnunet_plans_identifier="nnUNetPlans",
                                                         nnunet_configuration="3d_fullres")
    record = save_plans(plans, plans_file(DATASET))
    try:
        plans["configurations"]["3d"]["segmentation"].update(test_time_mirroring=True, orientation=None)
        save_plans(plans, record)
        models = load_models(DATASET)
        assert models.segmenter.predictor.use_mirroring is True and models.segmenter.orientation is None
        edited = json.loads(record.read_text())  # the hand edit the README invites
        edited["configurations"]["3d"]["segmentation"].update(test_time_mirroring=False, orientation="LPS")
        record.write_text(json.dumps(edited, indent=2))
        models = load_models(DATASET)
        assert models.segmenter.predictor.use_mirroring is False and models.segmenter.orientation == "LPS"
        assert models.info["segmentation"]["test_time_mirroring"] is False
        copies = [json.loads(p.read_text()) for p in (trained_results / "vfscreen_grader__vfscreenPlans__3d").glob(
            "fold_*/plans.json")]
        assert copies and all("test_time_mirroring" not in c["configurations"]["3d"]["segmentation"] for c in copies)
    finally:
        record.unlink()
        assert not (paths.nnUNet_preprocessed / DATASET / "vfscreenPlans.json").exists()
