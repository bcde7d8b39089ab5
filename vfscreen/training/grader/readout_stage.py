"""Both readouts of one trained network, measured on the fold's validation crops (the end of training and the
``diagnostics_at_steps`` milestones of the plan).

The plan's ``grader.readout`` section (all optional):
    {"name": "head" | "probe", "augmented_copies": 2, "max_iter": 2000, "inverse_regularisation": 1.0}
``name`` chooses what the final checkpoint's classification head holds and what ``validation/predictions.csv``
shows; both readouts are always measured and written (``validation/predictions_head.csv``,
``validation/predictions_probe.csv``, ``metrics.json["readouts"]``).
"""
from __future__ import annotations

import numpy as np
import torch

from vfscreen.errors import ConfigError
from vfscreen.training.grader import ddp
from vfscreen.training.grader.readout import cosine_within_across, extract, fit_linear_probe, install_probe, softmax
from vfscreen.training.grader.supcon import SupConLoss
from vfscreen.training.grader.validation import grading_metrics, predictions_table
from vfscreen.utils.atomic import atomic_write_csv, atomic_write_json

READOUT_NAMES = ("head", "probe")
DEFAULT_READOUT = {"name": "head", "augmented_copies": 2, "max_iter": 2000, "inverse_regularisation": 1.0}


def readout_plan(grader_plan: dict) -> dict:
    plan = {**DEFAULT_READOUT, **grader_plan.get("readout", {})}
    if plan["name"] not in READOUT_NAMES:
        raise ConfigError(f"grader plan: readout {plan['name']!r} is not one of {', '.join(READOUT_NAMES)}")
    if int(plan["augmented_copies"]) < 0:
        raise ConfigError(f"grader plan: readout.augmented_copies must be >= 0, got {plan['augmented_copies']}")
    return plan


def summary(metrics: dict) -> dict:
    return {"auroc": metrics["binary"]["auroc"], "macro_f1": metrics["multiclass"]["macro_f1"],
            "macro_over_grades": metrics["multiclass"]["macro_over_grades"],
            "predicted_per_grade": np.asarray(metrics["multiclass"]["confusion_matrix"]).sum(axis=0).tolist()}


def measure_readouts(network, probe_loader, probe_grades, val_loader, val_grades, device, plan: dict,
                     temperature: float, memory_format=torch.contiguous_format) -> dict:
    """Head and probe readouts plus representation statistics of the validation features.

    Returns {"head": (metrics, probabilities), "probe": (metrics, probabilities) or None, "probe_fit": ProbeFit,
    "representation": {...}}; ``network`` is left in eval mode and unchanged.
    """
    train_features, _ = extract(network, probe_loader, device, memory_format)
    val_features, val_logits = extract(network, val_loader, device, memory_format)
    val_grades = np.array(val_grades, dtype=int)
    head_probabilities = softmax(val_logits)
    result = {"head": (grading_metrics(val_grades, head_probabilities), head_probabilities)}
    probe = fit_linear_probe(train_features, probe_grades, head_probabilities.shape[1], int(plan["max_iter"]),
                             float(plan["inverse_regularisation"]))
    result["probe_fit"] = probe
    result["probe"] = None
    if probe.converged:
        probe_probabilities = softmax(probe.logits(val_features) + _logit_adjustment(network))
        result["probe"] = (grading_metrics(val_grades, probe_probabilities), probe_probabilities)
    unit = torch.nn.functional.normalize(torch.from_numpy(val_features).double(), dim=1)
    normalised = SupConLoss(temperature).normalised(unit[:, None, :], torch.from_numpy(val_grades))
    result["representation"] = {**{f"cosine_{k}_grade": v for k, v in
                                    cosine_within_across(val_features, val_grades).items()},
                                "val_supcon_normalised": normalised}
    return result


def _logit_adjustment(network) -> np.ndarray:
    adjustment = getattr(network, "logit_adjustment", None)
    return 0.0 if adjustment is None else adjustment.detach().cpu().numpy().astype(np.float64)


def curve_row(step: int, epoch: int, measured: dict, train_supcon_normalised) -> dict:
    """One milestone of the curves (JSON-able)."""
    head = summary(measured["head"][0])
    probe = summary(measured["probe"][0]) if measured["probe"] is not None else None
    return {"step": step, "epoch": epoch, "train_supcon_normalised": train_supcon_normalised,
            **measured["representation"],
            "head_auroc": head["auroc"], "head_macro_f1": head["macro_f1"],
            "probe_auroc": probe["auroc"] if probe else None, "probe_macro_f1": probe["macro_f1"] if probe else None,
            "probe_fit": measured["probe_fit"].message, "macro_over_grades": head["macro_over_grades"]}


def describe(readout: dict) -> str:
    """'macro-F1 <value> over G0, G1, G2, G3, AUROC <value>, predicted per grade [..]', saying absent grades."""
    auroc = readout["auroc"]
    grades = readout["macro_over_grades"]
    absent = "" if len(grades) == 4 else " (the other grades are absent from validation)"
    counts = readout["predicted_per_grade"]
    single = " - every vertebra predicted as one grade" if sum(c > 0 for c in counts) == 1 else ""
    return (f"macro-F1 {readout['macro_f1']:.3f} over {', '.join(grades)}{absent}, AUROC "
            f"{'n/a' if auroc is None else f'{auroc:.3f}'}, predicted per grade {counts}{single}")


# ------------------------------------------------------------------ stages of a GraderTrainer run
def _measure(trainer) -> dict:
    return measure_readouts(ddp.unwrap_model(trainer.network), trainer.probe_loader, trainer.probe_grades,
                            trainer.full_val_loader, trainer.setup.val_rows["grade"].to_numpy(), trainer.device,
                            trainer.readout, trainer.supcon.temperature, trainer.memory_format)


def measure_milestone(trainer, epoch: int) -> None:
    """The curves: both readouts and the representation statistics at the plan's diagnostics_at_steps."""
    steps_before, steps_after = epoch * len(trainer.sampler), (epoch + 1) * len(trainer.sampler)
    if not any(steps_before < step <= steps_after for step in trainer.diagnostics_at_steps):
        return
    row = curve_row(steps_after, epoch + 1, _measure(trainer), trainer.history["train_supcon_normalised"][-1])
    trainer.curves.append(row)
    trainer.log(f"diagnostics at step {steps_after}: " + ", ".join(
        f"{key} {value:.3f}" for key, value in row.items() if isinstance(value, float)))
    if trainer.context.is_main:
        atomic_write_json(trainer.setup.fold_folder / "validation" / "curves.json",
                          {"loss": trainer.setup.loss_name, "fold": trainer.setup.fold, "rows": trainer.curves})


def final_readout(trainer, metrics: dict | None) -> dict | None:
    """Measure both readouts of the final network; install the probe as the head if the plan says so (and the
    fit converged); write each readout's validation predictions, the chosen one as predictions.csv."""
    measured = _measure(trainer)
    probe = measured["probe_fit"]
    chosen = trainer.readout["name"]
    trainer.log(f"probe readout ({len(trainer.probe_grades)} training views, class-balanced logistic regression): "
                f"{probe.message}")
    if chosen == "probe" and not probe.converged:
        trainer.log("probe did not converge: the final model keeps the trained head (readout 'head')")
        chosen = "head"
    if chosen == "probe":
        install_probe(ddp.unwrap_model(trainer.network), probe)
    readouts = {}
    for name in ("head", "probe"):
        if measured[name] is None:
            continue
        readout_metrics, probabilities = measured[name]
        readouts[name] = summary(readout_metrics)
        trainer.log(f"final validation, {name} readout: {describe(readouts[name])}")
        if trainer.context.is_main:
            atomic_write_csv(trainer.setup.fold_folder / "validation" / f"predictions_{name}.csv",
                             predictions_table(trainer.setup.val_rows, probabilities))
    if metrics is None or not trainer.context.is_main:
        return metrics
    chosen_metrics, chosen_probabilities = measured[chosen]
    metrics = {**metrics, **chosen_metrics, "readout": chosen, "readouts": readouts,
               "probe_fit": probe.message, **measured["representation"]}
    folder = trainer.setup.fold_folder / "validation"
    atomic_write_json(folder / "metrics.json", metrics)
    atomic_write_csv(folder / "predictions.csv", predictions_table(trainer.setup.val_rows, chosen_probabilities))
    return metrics
