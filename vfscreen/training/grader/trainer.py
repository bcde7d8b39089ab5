"""Fold-wise training of the SupCon grader (Wei et al. 2022) from the plans, on any device, resumable, DDP-ready.

    setup = prepare_grader_training("Dataset501_SyntheticSpine", "3d", 0, plans, device="cpu")   # validates only
    train_grader(setup)                                                                       # trains, writes

Output: ``nnUNet_results/<Dataset>/vfscreen_grader__<plans>__<config>/fold_<k>/`` (``vfscreen_graderCE`` for the
cross-entropy baseline, so it never overwrites a SupCon model): checkpoint_{latest,best,final}.pth, plans.json,
training_log.txt, progress.png, validation/{metrics.json,predictions.csv,predictions_head.csv,predictions_probe.csv}
(+ curves.json when the plan lists ``diagnostics_at_steps``). Both readouts (the head's raw logits, a linear probe on
frozen features; see readout_stage) are measured at the end; the plan's ``readout.name`` picks the final head.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from vfscreen import __version__, paths
from vfscreen.core.devices import resolve_device
from vfscreen.core.grader_checkpoint import CHECKPOINT_NAMES, PLANS_COPY, checkpoint_path, load_checkpoint, \
    restore_rng_state, save_checkpoint
from vfscreen.core.grader_network import LOSS_NAMES, build_grader
from vfscreen.core.model_folders import grader_model_folder
from vfscreen.core.plans import crop_num_channels, grader_loss, grader_section, includes_truncated
from vfscreen.dataset import dataset_id
from vfscreen.errors import ConfigError
from vfscreen.preprocessing.crops import patch_shape
from vfscreen.preprocessing.grader_crops import crops_folder
from vfscreen.training.grader import ddp
from vfscreen.training.grader.augmentation import GraderAugmentation, check_augmentation_plan
from vfscreen.training.grader.data import (PREPROCESS_HINT, ProbePatches, TrainingViews, ValidationPatches,
                                           fold_case_ids, make_loader, read_crops_table, select_fold)
from vfscreen.training.grader.optimization import build_optimizer, learning_rate_factor, set_learning_rate
from vfscreen.training.grader.progress import PROGRESS_PLOT, TrainingLog, new_history, plot_progress
from vfscreen.training.grader.readout_stage import describe, final_readout, measure_milestone, readout_plan, summary
from vfscreen.training.grader.sampler import PerClassBatchSampler
from vfscreen.training.grader.supcon import ProjectionQueue, SupConLoss
from vfscreen.training.grader.validation import grading_metrics, predictions_table
from vfscreen.utils.atomic import atomic_write_csv, atomic_write_json, remove_stale_temporaries
from vfscreen.utils.progress import progress_bar

_GRADER_KEYS = ("crop", "network", "loss", "sampler", "optimizer", "num_epochs", "validate_every", "augmentation")


@dataclass
class GraderSetup:
    dataset_name: str
    configuration: str
    fold: object  # int or "all"
    loss_name: str
    device: torch.device
    plans: dict
    grader_plan: dict
    train_rows: pd.DataFrame
    val_rows: pd.DataFrame
    fold_folder: Path


def prepare_grader_training(dataset_name: str, configuration: str, fold, plans: dict, loss_name: str | None = None,
                            device: str = "cpu", local_rank: int = 0) -> GraderSetup:
    """Check plans, crops, fold and device; read the fold's crops. Writes nothing."""
    dataset_name, configuration = str(dataset_name), str(configuration)
    hint = PREPROCESS_HINT.format(dataset_id=dataset_id(dataset_name) if dataset_name.startswith("Dataset")
                                  else dataset_name)
    try:
        grader_plan = grader_section(plans, configuration)
    except ConfigError as error:
        raise ConfigError(f"{error}; {hint}") from None
    missing = [key for key in _GRADER_KEYS if key not in grader_plan]
    if missing:
        raise ConfigError(f"grader plan of {dataset_name}/{configuration} lacks {missing}; {hint}")
    check_augmentation_plan(grader_plan["augmentation"])
    loss_name = loss_name or grader_loss(plans, configuration)
    if loss_name not in LOSS_NAMES:
        raise ConfigError(f"unknown grader loss {loss_name!r} (choose from {', '.join(LOSS_NAMES)})")
    torch_device = resolve_device(device, local_rank)
    preprocessed = paths.nnUNet_preprocessed / dataset_name
    table = read_crops_table(crops_folder(dataset_name, configuration), hint)
    train_cases, val_cases = fold_case_ids(table, preprocessed / "splits_final.json", fold,
                                           int(plans.get("num_folds", 5)))
    train_rows, val_rows = select_fold(table, train_cases, val_cases, includes_truncated(grader_plan["crop"]),
                                       fold, int(grader_plan["network"].get("num_classes", 4)))
    fold_name = "fold_all" if fold == "all" else f"fold_{fold}"
    fold_folder = grader_model_folder(dataset_name, configuration, loss_name,
                                      plans.get("plans_name", "vfscreenPlans")) / fold_name
    return GraderSetup(dataset_name, configuration, fold, loss_name, torch_device, plans, grader_plan, train_rows,
                       val_rows, fold_folder)


class GraderTrainer:
    def __init__(self, setup: GraderSetup, context: ddp.DistributedContext, num_workers: int | None = None,
                 show_progress: bool = True):
        self.setup = setup
        self.plan = setup.grader_plan
        self.context = context
        self.log = TrainingLog(setup.fold_folder, enabled=self.context.is_main, echo=show_progress)
        self.show_progress = show_progress and self.context.is_main
        self.device = setup.device
        self.num_epochs = int(self.plan["num_epochs"])
        self.validate_every = max(1, int(self.plan["validate_every"]))
        self.num_views = int(self.plan["sampler"].get("views", 2))
        self.seed = int(setup.plans.get("seed", 12345))
        crop_plan = self.plan["crop"]
        self.patch_size = patch_shape(crop_plan)  # array order (D, H, W)
        self.num_image_channels = len(crop_plan["windows"])
        self.input_channels = crop_num_channels(crop_plan)
        self.num_workers = int(self.plan.get("num_workers", 0) if num_workers is None else num_workers)
        self.use_amp = self.device.type == "cuda"

        torch.manual_seed(self.seed)
        # channels-last 3D: faster 3D convolutions on the CPU, also preferred by cuDNN
        self.memory_format = torch.channels_last_3d if self.device.type in ("cpu", "cuda") else torch.contiguous_format
        network = build_grader(self.plan["network"], setup.loss_name, self.input_channels)
        self.prior_correction = self.plan.get("prior_correction", "none")
        if self.prior_correction == "training_frequencies":
            network.set_class_prior(np.bincount(setup.train_rows["grade"],
                                                minlength=int(self.plan["network"].get("num_classes", 4))))
        elif self.prior_correction != "none":
            raise ConfigError(f"grader plan: prior_correction {self.prior_correction!r} is not one of "
                              "'training_frequencies', 'none'")
        network = network.to(self.device, memory_format=self.memory_format)
        self.network = ddp.wrap_model(network, self.context, self.device,
                                      find_unused_parameters=(setup.loss_name == "ce"),
                                      sync_batchnorm=bool(self.plan.get("sync_batchnorm", False)))
        self.optimizer = build_optimizer(network, self.plan["optimizer"])
        self.readout = readout_plan(self.plan)
        self.grad_scaler = torch.amp.GradScaler("cuda") if self.use_amp else None
        self.supcon = SupConLoss(float(self.plan["loss"].get("temperature", 0.07)))
        queue_size = self.plan["loss"].get("queue_size", 0)  # 0: SupCon over the batch alone
        if not isinstance(queue_size, int) or isinstance(queue_size, bool) or queue_size < 0:
            raise ConfigError(f"grader plan: loss.queue_size must be an integer >= 0, not {queue_size!r}")
        self.queue = ProjectionQueue(queue_size)
        self.sampler = self._make_sampler()
        if self.plan.get("num_steps"):  # a step budget instead of epochs (the curves): whole passes covering it
            self.num_epochs = -(-int(self.plan["num_steps"]) // len(self.sampler))
        augmentation = GraderAugmentation(self.plan["augmentation"], self.patch_size, self.num_image_channels)
        self.train_loader = make_loader(
            TrainingViews(setup.train_rows["path"], setup.train_rows["grade"], augmentation, self.num_views),
            self.num_workers, pin_memory=self.use_amp, batch_sampler=self.sampler)
        val_indices = list(range(self.context.rank, len(setup.val_rows), self.context.world_size))
        self.val_indices = val_indices
        self.val_loader = make_loader(
            ValidationPatches(setup.val_rows["path"].iloc[val_indices], self.patch_size), 0, pin_memory=False,
            batch_size=max(1, int(self.plan["sampler"]["samples_per_class"]) * 4))
        probe_copies = int(self.readout["augmented_copies"])
        self.probe_grades = np.repeat(setup.train_rows["grade"].to_numpy(dtype=int), 1 + probe_copies)
        self.probe_loader = make_loader(
            ProbePatches(setup.train_rows["path"], self.patch_size, augmentation, probe_copies, self.seed),
            self.num_workers, pin_memory=False, batch_size=self.val_loader.batch_size)
        self.full_val_loader = make_loader(ValidationPatches(setup.val_rows["path"], self.patch_size), 0,
                                           pin_memory=False, batch_size=self.val_loader.batch_size)
        self.diagnostics_at_steps = sorted(int(s) for s in self.plan.get("diagnostics_at_steps", []))
        self.start_epoch = 0
        self.best_macro_f1 = None
        self.history = new_history()
        self.curves = []

    def _make_sampler(self) -> PerClassBatchSampler:
        samples_per_class = int(self.plan["sampler"]["samples_per_class"])
        try:
            return PerClassBatchSampler(self.setup.train_rows["grade"].to_numpy(), samples_per_class, self.seed,
                                        int(self.plan["network"].get("num_classes", 4)),
                                        self.context.world_size, self.context.rank)
        except ValueError as error:
            raise ConfigError(f"fold {self.setup.fold}: cannot form balanced batches: {error}; lower "
                              "sampler.samples_per_class in the plans or use fewer processes") from None

    # ------------------------------------------------------------------ state
    def _metadata(self, epoch: int) -> dict:
        setup = self.setup
        return {"dataset_name": setup.dataset_name, "configuration": setup.configuration, "fold": setup.fold,
                "loss": setup.loss_name, "epoch": epoch, "num_epochs": self.num_epochs, "seed": self.seed,
                "network_plan": self.plan["network"], "patch_size": list(self.patch_size),
                "patch_size_order": "D, H, W (array order; the plan's crop.patch_size is x, y, z)",
                "input_channels": self.input_channels, "crop_plan": self.plan["crop"],
                "num_views": self.num_views, "world_size": self.context.world_size,
                "best_macro_f1": self.best_macro_f1, "history": self.history, "curves": self.curves,
                "vfscreen_version": __version__}

    def _expected_metadata(self) -> dict:
        setup = self.setup
        return {"dataset_name": setup.dataset_name, "configuration": setup.configuration, "fold": setup.fold,
                "loss": setup.loss_name, "network_plan": self.plan["network"], "seed": self.seed}

    def _save(self, which: str, epoch: int) -> None:
        if self.context.is_main:
            save_checkpoint(checkpoint_path(self.setup.fold_folder, which), ddp.unwrap_model(self.network),
                            self.optimizer, self.grad_scaler, self._metadata(epoch))

    def resume(self) -> bool:
        """Load checkpoint_latest.pth; False (fresh start) if there is none. ConfigError if corrupt/foreign."""
        path = checkpoint_path(self.setup.fold_folder, "latest")
        if not path.is_file():
            return False
        checkpoint = load_checkpoint(path, self._expected_metadata())
        ddp.unwrap_model(self.network).load_state_dict(checkpoint["network_weights"])
        self.optimizer.load_state_dict(checkpoint["optimizer_state"])
        if self.grad_scaler is not None and checkpoint["grad_scaler_state"]:
            self.grad_scaler.load_state_dict(checkpoint["grad_scaler_state"])
        restore_rng_state(checkpoint["rng_state"])
        metadata = checkpoint["metadata"]
        self.start_epoch = int(metadata["epoch"])
        self.best_macro_f1 = metadata["best_macro_f1"]
        self.curves = list(metadata.get("curves", []))
        self.history = new_history()  # keys a checkpoint of an older vfscreen lacks are filled with None
        for key in self.history:
            length = len(metadata["history"]["val_epoch" if key.startswith("val_") else "epoch"])
            self.history[key] = list(metadata["history"].get(key, [None] * length))
        return True

    # ------------------------------------------------------------------ epochs
    def train_epoch(self, epoch: int) -> None:
        learning_rate = set_learning_rate(self.optimizer,
                                          learning_rate_factor(self.plan["optimizer"], epoch, self.num_epochs))
        self.network.train()
        self.sampler.set_epoch(epoch)
        totals = {"loss": 0.0, "supcon": 0.0, "ce": 0.0, "supcon_normalised": 0.0, "skipped_anchors": 0.0}
        num_batches, num_views, data_wait = 0, 0, 0.0
        started = time.perf_counter()
        batches = iter(self.train_loader)
        progress = progress_bar(total=len(self.sampler), desc=f"epoch {epoch + 1}/{self.num_epochs}",
                        disable=not self.show_progress, leave=False)
        while True:
            waited = time.perf_counter()
            try:
                views, grades = next(batches)  # views: (B, V, 3, *patch), grades: (B,)
            except StopIteration:
                break
            data_wait += time.perf_counter() - waited
            losses = self._train_step(views, grades)
            for key in totals:
                totals[key] += losses[key]
            num_batches += 1
            num_views += views.shape[0] * views.shape[1]
            progress.update()
            progress.set_postfix(loss=f"{losses['loss']:.4f}")
        progress.close()
        seconds = time.perf_counter() - started
        means = {key: ddp.mean_over_ranks(value / max(1, num_batches), self.context) for key, value in totals.items()}
        views_per_second = ddp.mean_over_ranks(num_views / seconds, self.context) * self.context.world_size
        self.history["epoch"].append(epoch + 1)
        self.history["train_loss"].append(means["loss"])
        self.history["train_supcon"].append(means["supcon"] if self.setup.loss_name == "supcon" else None)
        self.history["train_ce"].append(means["ce"])
        self.history["learning_rate"].append(learning_rate)
        self.history["epoch_seconds"].append(seconds)
        self.history["data_wait_seconds"].append(data_wait)
        self.history["views_per_second"].append(views_per_second)
        supcon_run = self.setup.loss_name == "supcon"
        self.history["train_supcon_normalised"].append(means["supcon_normalised"] if supcon_run else None)
        skipped = int(round(means["skipped_anchors"] * num_batches))
        self.history["skipped_anchors"].append(skipped)
        if skipped:
            self.log(f"epoch {epoch + 1}: {skipped} SupCon anchor(s) without a positive (a grade with a single crop "
                     "and a single view) were left out of the loss")
        self.log(f"epoch {epoch + 1}/{self.num_epochs}: loss {means['loss']:.4f} (SupCon {means['supcon']:.4f}, "
                 f"CE {means['ce']:.4f}), lr {learning_rate:g}, {num_batches} batches, {seconds:.1f} s, "
                 f"{views_per_second:.1f} views/s, waiting for data {data_wait:.2f} s "
                 f"({100 * data_wait / max(seconds, 1e-9):.0f} %)")

    def _train_step(self, views: torch.Tensor, grades: torch.Tensor) -> dict:
        batch_size, num_views = views.shape[:2]
        # view-major stacking: (V * B, 3, *patch)
        inputs = views.transpose(0, 1).reshape(num_views * batch_size, *views.shape[2:])
        inputs = inputs.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        grades = grades.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.use_amp):
            _, logits, projection = self.network(inputs)  # (V*B, 4), (V*B, P)
        projection = projection.float().reshape(num_views, batch_size, -1).transpose(0, 1)  # (B, V, P)
        ce_loss = F.cross_entropy(logits.float(), grades.repeat(num_views))
        supcon_loss = None
        if self.setup.loss_name == "supcon":
            supcon_loss = self.supcon(projection, grades, *self.queue.contents())
            self.queue.push(projection, grades)
        normalised = self.supcon.normalised(projection.detach(), grades) if supcon_loss is not None else None
        loss = ce_loss + supcon_loss if supcon_loss is not None else ce_loss
        self.optimizer.zero_grad(set_to_none=True)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        return {"loss": float(loss.detach()), "ce": float(ce_loss.detach()),
                "supcon": float(supcon_loss.detach()) if supcon_loss is not None else 0.0,
                "supcon_normalised": normalised or 0.0,
                "skipped_anchors": float(self.supcon.last_skipped_anchors if supcon_loss is not None else 0)}

    @torch.no_grad()
    def validate(self, epoch: int) -> dict:
        """Predict the fold's validation vertebrae (sharded over ranks); rank 0 computes metrics and writes them."""
        self.network.eval()
        probabilities, positions = [], []
        for patches, indices in self.val_loader:  # patches: (b, 3, *patch)
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.use_amp):
                patches = patches.to(self.device).contiguous(memory_format=self.memory_format)
                _, logits, _ = ddp.unwrap_model(self.network)(patches)
            probabilities.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
            positions.extend(self.val_indices[int(i)] for i in indices)
        local = (positions, np.concatenate(probabilities) if probabilities else np.zeros((0, 4)))
        gathered = ddp.gather_to_all(local, self.context)
        order = np.concatenate([np.asarray(p, dtype=int) for p, _ in gathered])
        all_probabilities = np.concatenate([q for _, q in gathered])[np.argsort(order)]  # (N_val, 4)
        rows = self.setup.val_rows
        true_grades = rows["grade"].to_numpy(dtype=np.int64, copy=True)
        metrics = grading_metrics(true_grades, all_probabilities)
        val_loss = float(F.nll_loss(torch.log(torch.from_numpy(all_probabilities).clamp_min(1e-12)),
                                    torch.from_numpy(true_grades)))
        metrics.update({"epoch": epoch + 1, "validation_ce_loss": val_loss, "fold": self.setup.fold,
                        "loss": self.setup.loss_name, "dataset_name": self.setup.dataset_name})
        self.history["val_epoch"].append(epoch + 1)
        self.history["val_loss"].append(val_loss)
        self.history["val_macro_f1"].append(metrics["multiclass"]["macro_f1"])
        self.history["val_auroc"].append(metrics["binary"]["auroc"])
        if self.context.is_main:
            folder = self.setup.fold_folder / "validation"
            atomic_write_json(folder / "metrics.json", metrics)
            atomic_write_csv(folder / "predictions.csv", predictions_table(rows, all_probabilities))
        self.log(f"validation after epoch {epoch + 1}: {describe(summary(metrics))}, CE {val_loss:.4f} "
                 f"({len(rows)} vertebrae)")
        return metrics

    # ------------------------------------------------------------------ run
    def run(self, stop_after_epoch: int | None = None) -> dict | None:
        """Train from ``self.start_epoch``; ``stop_after_epoch`` ends early after that many epochs (as if killed)."""
        setup = self.setup
        train_counts = np.bincount(setup.train_rows["grade"], minlength=4).tolist()
        self.log(f"grader {setup.loss_name} {setup.dataset_name} {setup.configuration} fold {setup.fold} on "
                 f"{self.device} x{self.context.world_size}: {len(setup.train_rows)} training crops (per grade "
                 f"{train_counts}), {len(setup.val_rows)} validation crops, {len(self.sampler)} batches/epoch, "
                 f"{self.num_workers} data worker(s), epochs {self.start_epoch + 1}-{self.num_epochs}")
        metrics = None
        started, max_minutes = time.monotonic(), self.plan.get("max_minutes")
        completed = self.num_epochs
        for epoch in range(self.start_epoch, self.num_epochs):
            self.train_epoch(epoch)
            time_up = max_minutes is not None and ddp.mean_over_ranks(
                float(time.monotonic() - started > 60 * float(max_minutes)), self.context) > 0
            last = epoch + 1 == self.num_epochs or time_up
            if time_up and epoch + 1 < self.num_epochs:
                self.log(f"time budget of {max_minutes} minutes spent after epoch {epoch + 1}: finishing here")
            if last or (epoch + 1) % self.validate_every == 0:
                metrics = self.validate(epoch)
                macro_f1 = metrics["multiclass"]["macro_f1"]
                if self.best_macro_f1 is None or macro_f1 > self.best_macro_f1:
                    self.best_macro_f1 = macro_f1
                    self._save("best", epoch + 1)
                    self.log(f"new best validation macro-F1 {macro_f1:.3f}: checkpoint_best.pth")
            measure_milestone(self, epoch)
            self._save("latest", epoch + 1)
            if self.context.is_main:
                plot_progress(self.history, setup.fold_folder / PROGRESS_PLOT)
            if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and not last:
                self.log(f"stopping after epoch {epoch + 1} as requested")
                return None
            if last:
                completed = epoch + 1
                break
        metrics = final_readout(self, metrics)
        self._save("final", completed)
        self.log(f"training done: checkpoint_final.pth in {setup.fold_folder}")
        return metrics


def train_grader(setup: GraderSetup, continue_training: bool = False, num_workers: int | None = None,
                 stop_after_epoch: int | None = None, show_progress: bool = True) -> dict | None:
    """Train one fold. Returns the final validation metrics (None if stopped early or already finished)."""
    fold_folder = setup.fold_folder
    final = checkpoint_path(fold_folder, "final")
    if final.is_file() and not continue_training:
        raise ConfigError(f"{fold_folder} already holds a trained grader (checkpoint_final.pth); delete that folder "
                          "to retrain it, or pass --c")
    if continue_training and final.is_file():
        load_checkpoint(final)  # refuse a corrupt final checkpoint rather than report success
        print(f"vfscreen: {fold_folder} is already trained (checkpoint_final.pth); nothing to do")
        return None
    context = ddp.init_distributed(setup.device.type)
    try:
        trainer = GraderTrainer(setup, context, num_workers=num_workers, show_progress=show_progress)
        if continue_training and not trainer.resume():
            trainer.log("no checkpoint_latest.pth to continue from: starting a new training")
        if trainer.context.is_main:
            for which in CHECKPOINT_NAMES:  # half-written by a run that was killed (kill -9)
                remove_stale_temporaries(checkpoint_path(fold_folder, which))
            atomic_write_json(fold_folder / PLANS_COPY, setup.plans)
        return trainer.run(stop_after_epoch=stop_after_epoch)
    finally:
        ddp.shutdown(context)
