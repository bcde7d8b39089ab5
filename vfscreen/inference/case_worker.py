"""One case of ``vfscreen_predict``, start to finish, optionally in a worker process that may die alone.

:func:`run_case` reads a case (after a memory pre-check from its header), predicts it and writes its outputs.
:class:`CaseWorker` runs cases in a worker process that holds the models: when the operating system kills it (e.g.
its out-of-memory killer) or it outgrows the memory budget (the parent's
:class:`vfscreen.inference.resources.RssWatchdog` stops it), the case fails with the reason, its partial files are
removed, and the next case gets a new worker. A case without complete outputs is never counted as finished.
"""
from __future__ import annotations

import multiprocessing
import signal
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from vfscreen.errors import InputError, VfscreenError
from vfscreen.inference import outputs, resources
from vfscreen.inference.cases import read_case_image
from vfscreen.inference.masks import read_case_mask
from vfscreen.inference.pipeline import predict_case
from vfscreen.inference.report import render_report


@dataclass(frozen=True)
class CaseOptions:
    saliency: bool = False
    save_probabilities: bool = False
    mask_labels: str | None = None  # label convention of --masks (None: detected)
    memory_budget: int | None = None  # bytes; None: no budget


class CaseFailed(Exception):
    """The case failed; the message says why (goes to errors.csv)."""


def header_size(case) -> tuple[int, ...]:
    """(x, y, z) voxels of a case from its file header(s), without reading the voxels."""
    if case.kind == "nifti":
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(case.source))
        try:
            reader.ReadImageInformation()
        except RuntimeError as error:
            raise InputError(f"{case.source}: cannot read CT image header "
                             f"({str(error).strip().splitlines()[-1][:200]})") from None
        return tuple(int(n) for n in reader.GetSize())
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(case.source), case.series_id)
    reader = sitk.ImageFileReader()
    reader.SetFileName(files[0])
    reader.ReadImageInformation()
    size = reader.GetSize()
    return (int(size[0]), int(size[1]), len(files))


def run_case(case, output_folder: Path, models, mask_source, options: CaseOptions) -> dict:
    """Pre-check, read, predict and write one case (``mask_source``: its --masks entry or None). Returns {"message",
    "warnings", "timings_s", "peak_rss_gb"}."""
    size = header_size(case)
    resources.check_estimate("reading and segmenting the scan", resources.scan_estimate_bytes(resources.voxels(size)),
                             options.memory_budget, resources.resident_bytes() or 0,
                             " x ".join(map(str, size)) + " voxels")
    meter = resources.StageMeter()
    with meter.stage("read"):
        image = read_case_image(case)
        given = None
        if mask_source is not None:
            given = read_case_mask(mask_source, image, options.mask_labels)
    result = predict_case(image, case.case_id, models, options.saliency, given=given,
                          memory_budget=options.memory_budget)
    probability_arrays = None
    if options.save_probabilities and result["probabilities"] is not None:
        box = result["region"]
        probability_arrays = {"probabilities": result["probabilities"].astype(np.float16),
                              "class_ids": np.arange(result["probabilities"].shape[0]),
                              "region_start_zyx": np.array([s.start for s in box]),
                              "region_stop_zyx": np.array([s.stop for s in box])}
    with meter.stage("report"):
        outputs.write_case_outputs(
            output_folder, case.case_id, result["json"], result["seg_image"],
            lambda path: render_report(path, image, result["verse_map"], result["json"], result["morphometry"]),
            gradcam_image=result["gradcam"], probabilities=probability_arrays)
    return {"message": result["json"]["patient"]["message"], "warnings": list(result["json"]["warnings"]),
            "timings_s": {"read": meter.seconds["read"], **result["timings_s"], "report": meter.seconds["report"]},
            "peak_rss_gb": {**{k: v for k, v in meter.peak_gb.items() if k == "read"}, **result["peak_rss_gb"],
                            **{k: v for k, v in meter.peak_gb.items() if k == "report"}}}


def failure_message(error: BaseException) -> str:
    message = str(error) if isinstance(error, (VfscreenError, CaseFailed)) else f"{type(error).__name__}: {error}"
    return message.splitlines()[0] if message else type(error).__name__


def _worker_main(connection, model_source, num_threads, verbose: bool) -> None:
    """The worker process: build the models once, then run the cases the parent sends until it sends None."""
    try:
        if num_threads:
            import torch
            torch.set_num_threads(int(num_threads))
        models = model_source() if callable(model_source) else model_source
    except BaseException as error:  # noqa: BLE001 - the parent raises it as the run's error
        connection.send(("not_ready", error if isinstance(error, VfscreenError) else failure_message(error)))
        connection.close()
        return
    connection.send(("ready", None))
    while True:
        try:
            arguments = connection.recv()
        except EOFError:
            break
        if arguments is None:
            break
        try:
            case, output_folder, mask_source, options = arguments
            outcome = ("ok", run_case(case, output_folder, models, mask_source, options))
        except BaseException as error:  # noqa: BLE001 - everything goes back to the parent
            if verbose:
                traceback.print_exc()
            outcome = ("failed", failure_message(error))
        connection.send(outcome)
    connection.close()


def _remove_partial_outputs(output_folder: Path, case_id: str) -> None:
    """A dead worker's temporaries, and the files of its case when its JSON (written last) is missing."""
    files = outputs.case_files(output_folder, case_id, saliency=True, probabilities=True)
    for path in files.values():
        outputs.remove_stale_temporaries(path)
    if not files["json"].is_file():
        for path in files.values():
            path.unlink(missing_ok=True)


class _Channel:
    """One end of the parent-worker link: receives on one one-way pipe and sends on the other."""

    def __init__(self, inbox, outbox):
        self.inbox, self.outbox = inbox, outbox

    def send(self, message) -> None:
        self.outbox.send(message)

    def recv(self):
        return self.inbox.recv()

    def close(self) -> None:
        self.inbox.close()
        self.outbox.close()


class CaseWorker:
    """A worker process (spawned: no threads or locks inherited) that holds the models and runs cases one by one;
    one that dies is replaced (models loaded again) for the next case.

    model_source: a picklable callable that builds the models in the worker (e.g. functools.partial(load_models,
    ...)) or picklable models. Use as a context manager."""

    def __init__(self, model_source, memory_budget: int | None, num_threads: int | None = None,
                 verbose: bool = False):
        self.model_source, self.memory_budget = model_source, memory_budget
        self.num_threads, self.verbose = num_threads, verbose
        self.context = multiprocessing.get_context("spawn")
        self.process = self.connection = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        if self.process is not None:
            try:
                self.connection.send(None)
            except (OSError, BrokenPipeError):
                pass
            self.process.join(timeout=10)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()
            self.connection.close()
        self.process = self.connection = None

    def start(self) -> None:
        """Start a worker and wait until its models are built (their errors are raised here)."""
        # two one-way pipes (os.pipe), not a duplex one (a socket pair): the worker needs no socket of any kind
        worker_inbox, parent_outbox = self.context.Pipe(duplex=False)
        parent_inbox, worker_outbox = self.context.Pipe(duplex=False)
        self.process = self.context.Process(target=_worker_main, daemon=True,
                                            args=(_Channel(worker_inbox, worker_outbox), self.model_source,
                                                  self.num_threads, self.verbose))
        self.process.start()
        worker_inbox.close()
        worker_outbox.close()
        self.connection = _Channel(parent_inbox, parent_outbox)
        try:
            status, detail = self.connection.recv()
        except EOFError:
            status, detail = "not_ready", f"the worker process died while loading the models " \
                                          f"(exit code {self.process.exitcode})"
        if status != "ready":
            self.close()
            if isinstance(detail, VfscreenError):
                raise detail
            raise CaseFailed(detail)

    def run(self, case, output_folder: Path, mask_source, options: CaseOptions) -> dict:
        """:func:`run_case` in the worker; raises CaseFailed with the reason when the case fails or the worker dies."""
        if self.process is None or not self.process.is_alive():
            self.close()
            self.start()
        outcome = None
        with resources.RssWatchdog(self.process, self.memory_budget) as watchdog:
            self.connection.send((case, output_folder, mask_source, options))
            try:
                outcome = self.connection.recv()
            except EOFError:  # the worker died before it could answer
                self.process.join()
        if outcome is None or outcome[0] != "ok":
            _remove_partial_outputs(output_folder, case.case_id)
        if outcome is None:
            exitcode = self.process.exitcode
            self.close()
            if watchdog.exceeded_bytes is not None:
                raise CaseFailed(f"the worker outgrew the memory budget ({watchdog.exceeded_bytes / resources.GB:.1f} "
                                 f"GB resident > {self.memory_budget / resources.GB:.1f} GB) and was stopped")
            if exitcode is not None and exitcode < 0:
                name = signal.Signals(-exitcode).name
                reason = " (as the operating system's out-of-memory killer does)" if name == "SIGKILL" else ""
                raise CaseFailed(f"the worker process was killed by {name}{reason}; the case has no output")
            raise CaseFailed(f"the worker process ended (exit code {exitcode}) without a result")
        if outcome[0] != "ok":
            raise CaseFailed(outcome[1])
        for message in outcome[1]["warnings"]:  # the worker's warnings, for this process's handlers
            warnings.warn(message, stacklevel=2)
        return outcome[1]
