"""Grader training on tiny fake crops: artefacts, exact resume, SupCon vs CE gradient flow, bad input."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from grader_fakes import tiny_plans, write_dataset

from vfscreen import paths
from vfscreen.errors import ConfigError
from vfscreen.training.cli import main as cli_main
from vfscreen.core.grader_checkpoint import load_checkpoint, load_grader
from vfscreen.core.grader_network import build_grader
from vfscreen.training.grader.trainer import prepare_grader_training, train_grader

torch.set_num_threads(1)


def make_dataset(dataset_name, **plan_kwargs):
    plans = tiny_plans(dataset_name, **plan_kwargs)
    folder = paths.nnUNet_preprocessed / dataset_name
    shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(paths.nnUNet_results / dataset_name, ignore_errors=True)
    write_dataset(paths.nnUNet_preprocessed, dataset_name, plans)
    return plans


@pytest.fixture(scope="module")
def uninterrupted_run():
    plans = make_dataset("Dataset971_GraderFull")
    setup = prepare_grader_training("Dataset971_GraderFull", "3d", 0, plans)
    metrics = train_grader(setup, show_progress=False)
    return setup, metrics


def test_two_epoch_run_writes_all_artefacts(uninterrupted_run):
    setup, metrics = uninterrupted_run
    fold = setup.fold_folder
    assert fold == paths.nnUNet_results / "Dataset971_GraderFull" / "vfscreen_grader__vfscreenPlans__3d" / "fold_0"
    for name in ("checkpoint_final.pth", "checkpoint_best.pth", "checkpoint_latest.pth", "plans.json",
                 "training_log.txt", "progress.png", "validation/metrics.json", "validation/predictions.csv"):
        assert (fold / name).is_file(), name
    assert not list(fold.rglob("*.tmp*")), "temporary files left behind"
    assert json.loads((fold / "plans.json").read_text()) == setup.plans

    written = json.loads((fold / "validation/metrics.json").read_text())
    assert written == json.loads(json.dumps(metrics))
    assert written["epoch"] == 2 and written["num_vertebrae"] == len(setup.val_rows) == 20
    assert 0 <= written["multiclass"]["macro_f1"] <= 1 and written["binary"]["auroc"] is not None
    predictions = pd.read_csv(fold / "validation/predictions.csv", dtype={"case_id": str})
    assert len(predictions) == 20 and set(predictions["case_id"]) == set(setup.val_rows["case_id"])
    probabilities = predictions[["p_G0", "p_G1", "p_G2", "p_G3"]].to_numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    np.testing.assert_allclose(predictions["p_fracture"], 1 - predictions["p_G0"], atol=1e-5)

    checkpoint = torch.load(fold / "checkpoint_final.pth", weights_only=True)
    assert checkpoint["metadata"]["epoch"] == 2 and len(checkpoint["metadata"]["history"]["train_loss"]) == 2
    log = (fold / "training_log.txt").read_text()
    assert "epoch 2/2" in log and "waiting for data" in log

    network, plans = load_grader(fold, "cpu")
    assert not network.training and plans == setup.plans
    features, logits, projection = network(torch.rand(3, 3, 16, 16, 16))
    assert features.shape == (3, 8) and logits.shape == (3, 4) and projection.shape == (3, 128)
    torch.testing.assert_close(projection.norm(dim=1), torch.ones(3))


def test_resume_after_interruption_equals_uninterrupted_run(uninterrupted_run):
    full_setup, _ = uninterrupted_run
    plans = make_dataset("Dataset972_GraderResume")
    setup = prepare_grader_training("Dataset972_GraderResume", "3d", 0, plans)
    # first part with a background worker process, second part in the main process: batches must not depend on it
    assert train_grader(setup, stop_after_epoch=1, num_workers=1, show_progress=False) is None
    assert not (setup.fold_folder / "checkpoint_final.pth").exists()
    assert load_checkpoint(setup.fold_folder / "checkpoint_latest.pth")["metadata"]["epoch"] == 1

    setup = prepare_grader_training("Dataset972_GraderResume", "3d", 0, plans)
    train_grader(setup, continue_training=True, show_progress=False)

    resumed = torch.load(setup.fold_folder / "checkpoint_final.pth", weights_only=True)
    uninterrupted = torch.load(full_setup.fold_folder / "checkpoint_final.pth", weights_only=True)
    assert resumed["network_weights"].keys() == uninterrupted["network_weights"].keys()
    for name, tensor in uninterrupted["network_weights"].items():
        assert torch.equal(resumed["network_weights"][name], tensor), name
    for key in ("train_loss", "val_macro_f1"):
        assert resumed["metadata"]["history"][key] == uninterrupted["metadata"]["history"][key]
    momentum = [state["momentum_buffer"] for state in uninterrupted["optimizer_state"]["state"].values()]
    momentum_resumed = [state["momentum_buffer"] for state in resumed["optimizer_state"]["state"].values()]
    assert all(torch.equal(a, b) for a, b in zip(momentum, momentum_resumed))


@pytest.mark.parametrize("loss_name, reaches_backbone", [("supcon", False), ("ce", True)])
def test_classification_head_gradient_reaches_backbone_only_in_ce_mode(loss_name, reaches_backbone):
    torch.manual_seed(0)
    network = build_grader(tiny_plans("Dataset970_X")["configurations"]["3d"]["grader"]["network"], loss_name)
    features, logits, projection = network(torch.rand(4, 3, 16, 16, 16))
    F.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
    backbone_gradient = sum(float(p.grad.abs().sum()) for p in network.encoder.parameters() if p.grad is not None)
    assert (backbone_gradient > 0) == reaches_backbone
    assert network.classification_head.weight.grad.abs().sum() > 0
    assert network.projection_head.weight.grad is None  # CE never touches the projection head

    network.zero_grad(set_to_none=True)
    _, _, projection = network(torch.rand(4, 3, 16, 16, 16))
    projection.sum().backward()  # the projection (SupCon) path trains the backbone in both modes
    assert sum(float(p.grad.abs().sum()) for p in network.encoder.parameters() if p.grad is not None) > 0


def test_prior_correction_shifts_eval_logits_by_the_training_grade_mix():
    torch.manual_seed(0)
    network = build_grader(tiny_plans("Dataset970_X")["configurations"]["3d"]["grader"]["network"], "supcon")
    inputs = torch.rand(3, 3, 16, 16, 16)
    network.eval()
    with torch.no_grad():
        raw = network(inputs)[1]
        network.set_class_prior([60, 20, 10, 10])
        adjusted = network(inputs)[1]
        network.train()
        training_logits = network.classification_head(network(inputs)[0])
    # eval: + log(frequency * 4) per grade, i.e. Bayes' rule from a balanced to the training grade mix
    expected_shift = torch.log(torch.tensor([0.6, 0.2, 0.1, 0.1]) * 4)
    torch.testing.assert_close(adjusted - raw, expected_shift.expand(3, 4))
    # training mode: the raw logits (cross-entropy on balanced batches)
    torch.testing.assert_close(network(inputs)[1].detach(), training_logits.detach())
    assert "logit_adjustment" in network.state_dict()  # saved with the weights, used by prediction


def test_ce_model_goes_to_its_own_folder():
    plans = make_dataset("Dataset973_GraderCE")
    setup = prepare_grader_training("Dataset973_GraderCE", "3d", 1, plans, loss_name="ce")
    assert setup.fold_folder.parent.name == "vfscreen_graderCE__vfscreenPlans__3d"
    assert setup.fold_folder.name == "fold_1"


def test_projection_queue_trains_and_a_bad_queue_size_is_refused():
    plans = make_dataset("Dataset976_GraderQueue", num_epochs=1)
    plans["configurations"]["3d"]["grader"]["loss"]["queue_size"] = 24
    metrics = train_grader(prepare_grader_training("Dataset976_GraderQueue", "3d", 0, plans), show_progress=False)
    assert metrics is not None and metrics["epoch"] == 1
    for bad in (-1, 2.5, True, "24"):
        plans["configurations"]["3d"]["grader"]["loss"]["queue_size"] = bad
        shutil.rmtree(paths.nnUNet_results / "Dataset976_GraderQueue", ignore_errors=True)
        with pytest.raises(ConfigError, match="loss.queue_size must be an integer >= 0"):
            train_grader(prepare_grader_training("Dataset976_GraderQueue", "3d", 0, plans), show_progress=False)


def test_bad_input_is_refused_with_one_clear_message(uninterrupted_run, tmp_path):
    setup, _ = uninterrupted_run
    plans = setup.plans
    with pytest.raises(ConfigError, match="fold 5 is outside the split"):
        prepare_grader_training("Dataset971_GraderFull", "3d", 5, plans)
    with pytest.raises(ConfigError, match="run vfscreen_plan_and_preprocess -d 974 first"):
        prepare_grader_training("Dataset974_NoCrops", "3d", 0, tiny_plans("Dataset974_NoCrops"))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            prepare_grader_training("Dataset971_GraderFull", "3d", 0, plans, device="cuda")
    with pytest.raises(ConfigError, match="already holds a trained grader"):
        train_grader(prepare_grader_training("Dataset971_GraderFull", "3d", 0, plans), show_progress=False)

    # a grade without training sample in this fold
    no_g3 = "Dataset975_NoG3"
    no_g3_plans = tiny_plans(no_g3)
    shutil.rmtree(paths.nnUNet_preprocessed / no_g3, ignore_errors=True)
    write_dataset(paths.nnUNet_preprocessed, no_g3, no_g3_plans,
                  grades_of_case=lambda case: [0, 1, 2, 3] if case % 2 == 0 else [0, 1, 2, None])
    with pytest.raises(ConfigError, match="G3 have no training sample"):
        prepare_grader_training(no_g3, "3d", 0, no_g3_plans)


@pytest.mark.parametrize("content", ["corrupt", "foreign", "other_fold"])
def test_bad_checkpoint_on_continue_is_refused_and_kept(uninterrupted_run, content):
    full_setup, _ = uninterrupted_run
    plans = make_dataset("Dataset976_GraderBadCkpt")
    setup = prepare_grader_training("Dataset976_GraderBadCkpt", "3d", 0, plans)
    latest = setup.fold_folder / "checkpoint_latest.pth"
    latest.parent.mkdir(parents=True)
    if content == "corrupt":
        shutil.copy(full_setup.fold_folder / "checkpoint_latest.pth", latest)
        latest.write_bytes(latest.read_bytes()[:2000])
    elif content == "foreign":
        torch.save({"state_dict": {"w": torch.zeros(2)}}, latest)
    else:  # a vfscreen checkpoint of another dataset
        shutil.copy(full_setup.fold_folder / "checkpoint_latest.pth", latest)
    before = latest.read_bytes()
    with pytest.raises(ConfigError, match="corrupt|not a vfscreen grader checkpoint|belongs to another run"):
        train_grader(setup, continue_training=True, show_progress=False)
    assert latest.read_bytes() == before
    assert sorted(p.name for p in setup.fold_folder.iterdir()) == ["checkpoint_latest.pth"]


def test_cli_bad_fold_exits_with_usage_error(uninterrupted_run, capsys):
    plans = make_dataset("Dataset977_GraderCli")
    (paths.nnUNet_preprocessed / "Dataset977_GraderCli" / "vfscreenPlans.json").write_text(json.dumps(plans))
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["977", "3d", "fold7", "--stage", "grader", "-device", "cpu"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "fold 7 is outside the split" in error and "Traceback" not in error
    assert not (paths.nnUNet_results / "Dataset977_GraderCli").exists()
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["977", "3d", "fold_x"])
    assert exit_info.value.code == 2


def test_time_budget_finishes_with_validation_and_a_final_checkpoint():
    plans = make_dataset("Dataset979_GraderMinutes", num_epochs=5)
    plans["configurations"]["3d"]["grader"]["max_minutes"] = 0  # spent after the first epoch
    setup = prepare_grader_training("Dataset979_GraderMinutes", "3d", 0, plans)
    metrics = train_grader(setup, show_progress=False)
    assert metrics is not None and set(metrics["readouts"]) <= {"head", "probe"} and "head" in metrics["readouts"]
    assert load_checkpoint(setup.fold_folder / "checkpoint_final.pth")["metadata"]["epoch"] == 1
    assert "time budget of 0 minutes spent after epoch 1" in (setup.fold_folder / "training_log.txt").read_text()
