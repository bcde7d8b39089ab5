"""``vfscreen_benchmark curves -d 501 -f 0``: how the SupCon and the cross-entropy grader develop with the budget.

For one fold, each loss is trained once (``vfscreen_train ... --stage grader --plans_tag curves<TAG>
--grader_override``: the plan's grader with ``num_steps`` = the largest budget and ``diagnostics_at_steps`` = the
budgets), so every budget is a snapshot of one run whose learning-rate schedule spans the largest budget. At each
budget the trainer measures (``validation/curves.json``): the training SupCon loss normalised to
(L - log P) / (log(N - 1) - log P) (1 = chance, 0 = floor; SupCon runs only), the same normalised loss of the
L2-normalised validation features (both losses), the mean cosine of validation features within and across grades,
and the validation AUROC / macro-F1 of two readouts: the trained head (raw logits) and a class-balanced logistic probe
on frozen features of the training crops. Prints the table, writes curves.json and curves.png.
"""
from __future__ import annotations

import datetime
import json
import subprocess
import sys
from pathlib import Path

from vfscreen.core.model_folders import grader_model_folder
from vfscreen.core.plans import PLANS_NAME
from vfscreen.errors import ConfigError
from vfscreen.evaluation.table import render, render_markdown
from vfscreen.utils.atomic import atomic_path, atomic_write_json

DEFAULT_STEPS = (100, 200, 400, 800, 1600)
LOSSES = ("supcon", "ce")
COLUMNS = (("loss", "loss"), ("step", "step"), ("train_supcon_normalised", "train SupCon (norm.)"),
           ("val_supcon_normalised", "val SupCon (norm.)"), ("cosine_within_grade", "cos within"),
           ("cosine_across_grade", "cos across"), ("probe_auroc", "probe AUROC"),
           ("probe_macro_f1", "probe macro-F1"), ("head_auroc", "head AUROC"), ("head_macro_f1", "head macro-F1"))


def train_grader_run(dataset_name: str, configuration: str, fold: int, loss: str, plans_tag: str, override: dict,
                     device: str | None) -> str:
    """``vfscreen_train ... --stage grader --plans_tag TAG --grader_override JSON`` in a subprocess (evaluation does
    not import training); ConfigError if it fails. Returns the command."""
    command = [sys.executable, "-m", "vfscreen.training.cli", dataset_name, configuration, str(fold),
               "--stage", "grader", "--loss", loss, "--plans_tag", plans_tag,
               "--grader_override", json.dumps(override)] + (["--device", device] if device else [])
    print(f"training: {' '.join(command[1:])}", flush=True)
    completed = subprocess.run(command, check=False)
    if completed.returncode != 0:
        raise ConfigError(f"training {loss} fold {fold} ({plans_tag}) failed (exit {completed.returncode})")
    return " ".join(command[1:])


def curves_plans_tag(tag: str) -> str:
    return f"curves{tag}"


def run_curves(dataset_name: str, configuration: str, fold: int, steps, override: dict | None = None,
               tag: str = "", device: str | None = None, train: bool = True, losses=LOSSES,
               plans_tag: str | None = None) -> dict:
    steps = sorted(int(s) for s in steps)
    plans_tag = plans_tag or curves_plans_tag(tag)
    values = {**(override or {}), "num_steps": steps[-1], "diagnostics_at_steps": steps,
              "validate_every": 10 ** 6}
    commands, curves = [], {}
    for loss in losses:
        folder = grader_model_folder(dataset_name, configuration, loss, f"{PLANS_NAME}_{plans_tag}")
        curves_file = folder / f"fold_{fold}" / "validation" / "curves.json"
        if train and not (folder / f"fold_{fold}" / "checkpoint_final.pth").is_file():
            commands.append(train_grader_run(dataset_name, configuration, fold, loss, plans_tag, values, device))
        if not curves_file.is_file():
            raise ConfigError(f"{curves_file} not found: train the curves first (drop --no_train)")
        curves[loss] = json.loads(curves_file.read_text())["rows"]
    return {"kind": "vfscreen_curves", "schema_version": 1,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["vfscreen_benchmark"] + sys.argv[1:]), "dataset": dataset_name,
            "configuration": configuration, "fold": fold, "steps": steps, "grader_override": override or {},
            "plans_tag": plans_tag,
            "training_commands": commands, "curves": curves}


def curve_table_rows(result: dict) -> list[list[str]]:
    rows = []
    for loss, curve in result["curves"].items():
        for row in curve:
            cells = []
            for key, _ in COLUMNS:
                value = loss if key == "loss" else row.get(key)
                cells.append("-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value))
            rows.append(cells)
    return rows


def format_curves(result: dict, markdown: bool = False) -> str:
    header = [name for _, name in COLUMNS]
    rows = curve_table_rows(result)
    override = json.dumps(result["grader_override"]) if result["grader_override"] else "none"
    title = (f"Curves on {result['dataset']} ({result['configuration']}), fold {result['fold']}, validation "
             f"vertebrae; grader override: {override}")
    if markdown:
        return "\n".join([title, "", render_markdown(header, rows)])
    return "\n".join([title, render(header, rows)])


def plot_curves(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    styles = {"supcon": "-", "ce": "--"}
    for loss, curve in result["curves"].items():
        steps = [row["step"] for row in curve]
        for axis, keys in zip(axes, (("train_supcon_normalised", "val_supcon_normalised"),
                                     ("cosine_within_grade", "cosine_across_grade"),
                                     ("probe_macro_f1", "head_macro_f1", "probe_auroc", "head_auroc"))):
            for key in keys:
                values = [row.get(key) for row in curve]
                if any(v is not None for v in values):
                    axis.plot(steps, [float("nan") if v is None else v for v in values], styles[loss],
                              marker="o", label=f"{loss}: {dict(COLUMNS)[key]}")
    for axis, title in zip(axes, ("normalised SupCon (1 = chance)", "validation cosine", "validation readouts")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("SGD steps")
        axis.set_title(title)
        axis.legend(fontsize=7)
    figure.suptitle(f"{result['dataset']} fold {result['fold']}")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=80, format="png")
    plt.close(figure)


def write_curves(result: dict, output_folder: Path) -> tuple[Path, Path]:
    output_folder = Path(output_folder)
    output_folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(output_folder / "curves.json", result)
    plot_curves(result, output_folder / "curves.png")
    return output_folder / "curves.json", output_folder / "curves.png"
