"""Grader checkpoints: plain tensors + JSON-able metadata, loadable with ``torch.load(weights_only=True)``.

A checkpoint is a dict:
    "format": "vfscreen_grader_checkpoint", "format_version": 1,
    "network_weights": state dict, "optimizer_state": SGD state dict, "grad_scaler_state": dict (AMP, may be empty),
    "rng_state": torch / numpy / python RNG states as tensors and numbers,
    "metadata": {"dataset_name", "configuration", "fold", "loss", "epoch" (completed epochs), "num_epochs", "seed",
                 "network_plan", "patch_size", "best_macro_f1", "history", "vfscreen_version", ...}
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from vfscreen.errors import ConfigError
from vfscreen.utils.atomic import atomic_path
from vfscreen.core.grader_network import build_grader

CHECKPOINT_FORMAT = "vfscreen_grader_checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
CHECKPOINT_NAMES = ("final", "best", "latest")
PLANS_COPY = "plans.json"


def checkpoint_path(fold_folder: Path, which: str) -> Path:
    if which not in CHECKPOINT_NAMES:
        raise ConfigError(f"unknown grader checkpoint {which!r} (choose from {', '.join(CHECKPOINT_NAMES)})")
    return Path(fold_folder) / f"checkpoint_{which}.pth"


def capture_rng_state() -> dict:
    numpy_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(numpy_state[1].astype(np.int64)), "position": int(numpy_state[2]),
                  "has_gauss": int(numpy_state[3]), "cached_gaussian": float(numpy_state[4])},
        "python": {"version": random.getstate()[0],
                   "internal": torch.tensor(random.getstate()[1], dtype=torch.int64)},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["position"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    random.setstate((state["python"]["version"], tuple(int(v) for v in state["python"]["internal"].tolist()), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, network: torch.nn.Module, optimizer, grad_scaler, metadata: dict) -> None:
    """Write atomically (a crash never leaves a half-written checkpoint)."""
    json.dumps(metadata)  # fail early (TypeError) if metadata is not JSON-able
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "network_weights": {name: tensor.detach().cpu() for name, tensor in network.state_dict().items()},
        "optimizer_state": optimizer.state_dict() if optimizer is not None else {},
        "grad_scaler_state": grad_scaler.state_dict() if grad_scaler is not None else {},
        "rng_state": capture_rng_state(),
        "metadata": metadata,
    }
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


def load_checkpoint(path: Path, expected: dict | None = None) -> dict:
    """Load a grader checkpoint safely; ConfigError if missing, corrupt, foreign, or not matching ``expected``.

    ``expected`` maps metadata keys (e.g. dataset_name, configuration, fold, loss) to required values.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"grader checkpoint {path} not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means the file is unusable
        raise ConfigError(f"grader checkpoint {path} is corrupt or not a vfscreen checkpoint "
                          f"({type(error).__name__}: {str(error).splitlines()[0][:200]})") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{path} is not a vfscreen grader checkpoint (foreign file; no '{CHECKPOINT_FORMAT}' "
                          "marker)")
    if checkpoint.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise ConfigError(f"{path}: checkpoint format version {checkpoint.get('format_version')} is not supported "
                          f"(this vfscreen reads version {CHECKPOINT_FORMAT_VERSION})")
    for key in ("network_weights", "metadata"):
        if key not in checkpoint:
            raise ConfigError(f"{path}: checkpoint lacks '{key}' (corrupt)")
    metadata = checkpoint["metadata"]
    for key, value in (expected or {}).items():
        if metadata.get(key) != value:
            raise ConfigError(f"{path} belongs to another run: its {key} is {metadata.get(key)!r}, expected "
                              f"{value!r} (delete the folder or choose the matching arguments)")
    return checkpoint


def load_grader(fold_folder, device="cpu", which: str = "final"):
    """(GraderNet in eval mode on ``device``, plans dict) from a grader model folder ``.../fold_<k>``."""
    fold_folder = Path(fold_folder)
    plans_path = fold_folder / PLANS_COPY
    if not plans_path.is_file():
        raise ConfigError(f"{fold_folder} is not a grader model folder ({PLANS_COPY} missing); train it with "
                          "vfscreen_train")
    try:
        plans = json.loads(plans_path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{plans_path}: not valid JSON ({error})") from None
    checkpoint = load_checkpoint(checkpoint_path(fold_folder, which))
    metadata = checkpoint["metadata"]
    network = build_grader(metadata["network_plan"], metadata["loss"], int(metadata.get("input_channels", 3)))
    weights = dict(checkpoint["network_weights"])
    # models trained before prior correction existed carry no logit adjustment: theirs is zero
    weights.setdefault("logit_adjustment", torch.zeros_like(network.logit_adjustment))
    try:
        network.load_state_dict(weights)
    except RuntimeError as error:
        raise ConfigError(f"{checkpoint_path(fold_folder, which)}: weights do not fit the network in its metadata "
                          f"({str(error).splitlines()[0][:200]})") from None
    device = torch.device(device) if isinstance(device, str) else device
    # channels-last 3D: faster 3D convolutions on CPU and with cuDNN; inputs of any memory layout are accepted
    network.to(device, memory_format=torch.channels_last_3d if device.type in ("cpu", "cuda") else
               torch.contiguous_format)
    network.eval()
    return network, plans
