"""``vfscreen_benchmark ablation -d 501 -f 0 1 2 3 4``: the paper's claim (SupCon beats cross-entropy), tested fairly.

Three graders on the same folds, the same crops and the plan's step budget:
  SupCon (SGD, the plan's schedule) - the paper's method,
  CE (SGD, the same schedule)       - the like-for-like baseline,
  CE (Adam, lr 1e-3)                - the baseline of the paper's Table I (Adam, Kingma & Ba's default rate),
each read out two ways: the trained head (argmax of its raw logits) and a class-balanced logistic probe on frozen
features of the training crops (vfscreen.training.grader.readout_stage). Every model is the fold's final checkpoint
(no checkpoint selection at all; the probe is fitted on training crops only), scored on the fold's validation
vertebrae: nothing is chosen on the data it is scored on. Folds are trained where they have no validation
predictions yet (``vfscreen_train D C FOLD --stage grader --loss L --plans_tag ablation[adam] --grader_override``),
so the models live apart from the plans' own. The SupCon - CE differences get *paired* patient-bootstrap intervals
(the same patients drawn for every grader in each replicate).
"""
from __future__ import annotations

import datetime
import sys
from pathlib import Path

import pandas as pd

from vfscreen.core.model_folders import grader_model_folder
from vfscreen.core.plans import PLANS_NAME
from vfscreen.errors import ConfigError
from vfscreen.evaluation.bootstrap import bootstrap_intervals
from vfscreen.evaluation.curves import train_grader_run
from vfscreen.evaluation.metrics import compute_metrics, defined, metric_value, undefined
from vfscreen.evaluation.table import render, render_markdown

# name -> (loss, plans tag, grader override, label)
VARIANTS = {
    "supcon_sgd": ("supcon", "ablation", {}, "SupCon, SGD"),
    "ce_sgd": ("ce", "ablation", {}, "CE, SGD"),
    "ce_adam": ("ce", "ablationadam", {"optimizer": {"name": "adam", "lr": 0.001}}, "CE, Adam"),
}
READOUTS = ("head", "probe")
COMPARISONS = (("supcon_sgd", "ce_sgd"), ("supcon_sgd", "ce_adam"))
METRIC_PATHS = {"auroc": ("auroc",), "sensitivity": ("argmax", "sensitivity"),
                "specificity": ("argmax", "specificity"), "macro_f1": ("four_grades", "macro_f1")}


def variant_folder(dataset_name: str, configuration: str, plans_name: str, variant: str) -> Path:
    loss, tag, _, _ = VARIANTS[variant]
    return grader_model_folder(dataset_name, configuration, loss, f"{plans_name}_{tag}")


def trained_folds(dataset_name: str, configuration: str, plans_name: str, variant: str) -> list[int]:
    folder = variant_folder(dataset_name, configuration, plans_name, variant)
    names = [p.parent.parent.name[len("fold_"):] for p in folder.glob("fold_*/validation/predictions_head.csv")]
    return sorted(int(n) for n in names if n.isdigit())


def train_missing_folds(dataset_name: str, configuration: str, folds, plans_name: str, device: str | None,
                        common_override: dict | None = None) -> list:
    """Train every (fold, variant) without validation predictions, fold by fold (an interrupted run leaves complete
    sets of graders for --no_train); ``common_override``: plan values for every variant that do not change the
    training (e.g. ``diagnostics_at_steps``, so the SGD graders give the curves too). Returns the commands run."""
    commands = []
    for fold in folds:
        for variant, (loss, tag, own_override, _) in VARIANTS.items():
            override = {**(common_override or {}), **own_override}
            if fold in trained_folds(dataset_name, configuration, plans_name, variant):
                continue
            commands.append(train_grader_run(dataset_name, configuration, fold, loss, tag, override, device))
    return commands


def evaluation_table(folder: Path, folds, readout: str) -> pd.DataFrame:
    """The folds' validation predictions of one readout as an evaluation table (vfscreen.evaluation.metrics)."""
    frames = []
    for fold in folds:
        path = folder / f"fold_{fold}" / "validation" / f"predictions_{readout}.csv"
        if not path.is_file():
            raise ConfigError(f"{path} not found: train the fold (drop --no_train) or choose folds with -f")
        frames.append(pd.read_csv(path, dtype={"case_id": str}))
    table = pd.concat(frames, ignore_index=True)
    return pd.DataFrame({"case_id": table["case_id"], "label": table["label"].astype(int),
                         "grade": table["grade"].astype(int), "matched": True, "graded": True,
                         "predicted_grade": table["predicted_grade"].astype(int),
                         "score_grader": table["p_fracture"].astype(float)})


def _grader_metrics(table: pd.DataFrame) -> dict:
    grader = compute_metrics(table)["vertebra"]["grader"]
    out = {}
    for name, path in METRIC_PATHS.items():
        node = grader
        for key in path:
            node = node.get(key, {})
        out[name] = node if node else undefined("not computed")
    return out


def ablation_metrics(tables: dict) -> dict:
    """{'<variant>/<readout>': metrics, 'differences': {'<a>-<b>/<readout>': {macro_f1, auroc}}}."""
    result = {name: _grader_metrics(table) for name, table in tables.items()}
    differences = {}
    for first, second in COMPARISONS:
        for readout in READOUTS:
            a, b = result[f"{first}/{readout}"], result[f"{second}/{readout}"]
            differences[f"{first}-{second}/{readout}"] = {
                name: defined(metric_value(a[name]) - metric_value(b[name]))
                if metric_value(a[name]) is not None and metric_value(b[name]) is not None
                else undefined("undefined for one of the graders") for name in ("macro_f1", "auroc")}
    return {**result, "differences": differences}


def run_ablation(dataset_name: str, configuration: str, folds, plans_name: str = PLANS_NAME, train: bool = True,
                 device: str | None = None, n_resamples: int = 1000, seed: int = 0,
                 common_override: dict | None = None) -> dict:
    commands = train_missing_folds(dataset_name, configuration, folds, plans_name, device, common_override) \
        if train else []
    tables = {f"{variant}/{readout}": evaluation_table(variant_folder(dataset_name, configuration, plans_name,
                                                                      variant), folds, readout)
              for variant in VARIANTS for readout in READOUTS}
    keys = {name: set(zip(t["case_id"], t["label"])) for name, t in tables.items()}
    if len({frozenset(k) for k in keys.values()}) != 1:
        raise ConfigError("the graders' validation predictions cover different vertebrae; they must share folds")
    point = ablation_metrics(tables)
    intervals = bootstrap_intervals(tables, ablation_metrics, n_resamples=n_resamples, seed=seed, progress=False)
    for group, metrics in point.items():
        nodes = metrics.items() if group != "differences" else \
            ((f"{pair}.{name}", leaf) for pair, leaves in metrics.items() for name, leaf in leaves.items())
        for name, leaf in nodes:
            key = f"{group}.{name}" if group != "differences" else f"differences.{name}"
            leaf["ci95"] = intervals.get(key, {}).get("ci95")
    any_table = next(iter(tables.values()))
    return {"schema_version": 2, "kind": "vfscreen_ablation",
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["vfscreen_benchmark"] + sys.argv[1:]), "dataset": dataset_name,
            "configuration": configuration, "plans": plans_name, "folds": list(folds),
            "num_vertebrae": int(len(any_table)), "num_patients": int(any_table["case_id"].nunique()),
            "n_resamples": n_resamples, "variants": {v: {"loss": VARIANTS[v][0], "grader_override": VARIANTS[v][2]}
                                                     for v in VARIANTS},
            "checkpoint": "final (no selection); probe fitted on the training crops", "training_commands": commands,
            "metrics": point}


def _cell(leaf: dict, spec: str = ".2f") -> str:
    """'0.84 [0.81, 0.87]' (``spec`` '+.3f' for differences); 'n/a' when undefined."""
    value = metric_value(leaf)
    if value is None:
        return "n/a"
    interval = leaf.get("ci95")
    return f"{value:{spec}} [{interval[0]:{spec}}, {interval[1]:{spec}}]" if interval else f"{value:{spec}}"


def format_ablation(ablation: dict, markdown: bool = False) -> str:
    metrics = ablation["metrics"]
    header = ["Grader", "Readout", "AUROC", "Sensitivity", "Specificity", "Macro-F1"]
    rows = [[VARIANTS[variant][3], readout] + [_cell(metrics[f"{variant}/{readout}"][name])
                                               for name in ("auroc", "sensitivity", "specificity", "macro_f1")]
            for variant in VARIANTS for readout in READOUTS]
    difference_header = ["Difference", "Readout", "Macro-F1", "AUROC"]
    difference_rows = []
    for first, second in COMPARISONS:
        for readout in READOUTS:
            leaves = metrics["differences"][f"{first}-{second}/{readout}"]
            difference_rows.append([f"{VARIANTS[first][3]} - {VARIANTS[second][3]}", readout,
                                    _cell(leaves["macro_f1"], "+.3f"), _cell(leaves["auroc"], "+.3f")])
    title = (f"Ablation on {ablation['dataset']} ({ablation['configuration']}), folds {ablation['folds']}: "
             f"{ablation['num_vertebrae']} validation vertebrae of {ablation['num_patients']} patients; "
             f"{ablation['checkpoint']}; 95 % patient-bootstrap intervals ({ablation['n_resamples']} resamples, "
             "paired for the differences)")
    if markdown:
        return "\n".join([title, "", render_markdown(header, rows), "",
                          render_markdown(difference_header, difference_rows)])
    return "\n".join([title, render(header, rows), "", render(difference_header, difference_rows)])
