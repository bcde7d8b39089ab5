"""Training log file and progress.png (loss curves and validation metrics), like nnU-Net's."""
from __future__ import annotations

import datetime
from pathlib import Path

from vfscreen.utils.atomic import atomic_path

LOG_FILE = "training_log.txt"
PROGRESS_PLOT = "progress.png"


def new_history() -> dict:
    """Per-epoch lists (train_*, learning_rate, timing) and per-validation lists (val_*) of a grader run."""
    keys = ("epoch", "train_loss", "train_supcon", "train_ce", "learning_rate", "epoch_seconds", "data_wait_seconds",
            "views_per_second", "train_supcon_normalised", "skipped_anchors", "val_epoch", "val_loss",
            "val_macro_f1", "val_auroc")
    return {key: [] for key in keys}


class TrainingLog:
    """Timestamped lines to the console (optional) and to ``fold_folder/training_log.txt``.

    The log is append-only by nature (a resumed run continues it), so lines are appended and flushed one by one
    rather than rewritten atomically; every other artefact is written atomically.
    """

    def __init__(self, fold_folder: Path, enabled: bool = True, echo: bool = True):
        self.path = Path(fold_folder) / LOG_FILE
        self.enabled = enabled
        self.echo = echo

    def __call__(self, message: str) -> None:
        if not self.enabled:
            return
        line = f"{datetime.datetime.now().isoformat(timespec='seconds')}: {message}"
        if self.echo:
            print(line, flush=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")


def plot_progress(history: dict, path: Path) -> None:
    """Two panels: training/validation losses per epoch; validation macro-F1 and AUROC (+ learning rate)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axis, metric_axis) = plt.subplots(2, 1, figsize=(10, 9), sharex=True)
    epochs = history["epoch"]
    loss_axis.plot(epochs, history["train_loss"], color="b", label="train loss (total)")
    if any(value is not None for value in history["train_supcon"]):
        loss_axis.plot(epochs, history["train_supcon"], color="c", label="train SupCon")
    loss_axis.plot(epochs, history["train_ce"], color="g", label="train CE (classification head)")
    if history["val_epoch"]:
        loss_axis.plot(history["val_epoch"], history["val_loss"], color="r", marker="o", label="validation CE")
    loss_axis.set_ylabel("loss")
    loss_axis.legend(loc="upper right")
    if history["val_epoch"]:
        metric_axis.plot(history["val_epoch"], history["val_macro_f1"], color="m", marker="o",
                         label="validation macro-F1 (4 grades)")
        auroc = [value if value is not None else float("nan") for value in history["val_auroc"]]
        metric_axis.plot(history["val_epoch"], auroc, color="orange", marker="s", label="validation AUROC (G0 vs G1-3)")
    metric_axis.set_ylim(0, 1.02)
    metric_axis.set_ylabel("metric")
    metric_axis.set_xlabel("epoch")
    if history["val_epoch"]:  # no labelled artist before the first validation (matplotlib would warn)
        metric_axis.legend(loc="lower left")
    lr_axis = metric_axis.twinx()
    lr_axis.plot(epochs, history["learning_rate"], color="k", linestyle="--", label="learning rate")
    lr_axis.set_ylabel("learning rate")
    lr_axis.legend(loc="lower right")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=80)
    plt.close(figure)
