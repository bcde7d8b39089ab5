"""vfscreen's plans file: schema, validation, loading, saving, and the typed accessors every stage reads it with.

``nnUNet_preprocessed/<Dataset>/vfscreenPlans.json`` holds every setting of the vfscreen-specific stages (the
segmentation section only *points* at nnU-Net's own plans file ``nnUNetPlans.json``, which holds the network).
It is human-readable and may be edited by hand; every reader goes through :func:`load_plans`, which validates it and
names the offending field on any problem. Presets (partial plans for the planner) live in
vfscreen.experiment_planning.presets.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from vfscreen import paths
from vfscreen.errors import ConfigError
from vfscreen.dataset import resolve_dataset_name
from vfscreen.utils.atomic import atomic_write_json

SCHEMA_VERSION = 1
PLANS_NAME = "vfscreenPlans"
PLANS_FILE_NAME = PLANS_NAME + ".json"
FINGERPRINT_FILE_NAME = "vfscreen_fingerprint.json"
CONFIGURATION = "3d"

_NUMBER = (int, float)
_INT_LIST = ("list", int)
_NUM_LIST = ("list", _NUMBER)

# Required fields and their types. ("list", T): a non-empty list of T. A dict: a nested section.
_SEGMENTATION_SCHEMA = {
    "nnunet_plans_identifier": str, "nnunet_configuration": str, "trainer": str,
    "target_spacing_mm": _NUM_LIST, "patch_size": _INT_LIST, "batch_size": int, "features_per_stage": _INT_LIST,
    "iterations_per_epoch": int, "num_epochs": int, "estimated_memory_gb": _NUMBER,
}
_GRADER_SCHEMA = {
    "crop": {"mode": str, "spacing_mm": _NUMBER, "patch_size": _INT_LIST, "margin_mm": _NUMBER,
             "windows": ("list", dict), "mask_channel": str, "use_truncated": bool, "storage_dtype": str},
    "network": {"backbone": str, "block": str, "features_per_stage": _INT_LIST, "n_blocks_per_stage": _INT_LIST,
                "strides": _INT_LIST, "kernel_sizes": _INT_LIST, "squeeze_excitation": bool,
                "projection_dim": int, "num_classes": int},
    "loss": {"name": str, "temperature": _NUMBER},
    "sampler": {"samples_per_class": int, "views": int},
    "optimizer": {"name": str, "lr": _NUMBER, "momentum": _NUMBER, "weight_decay": _NUMBER,
                  "lr_decay_at": _NUM_LIST, "lr_decay_factor": _NUMBER},
    "num_epochs": int, "validate_every": int, "num_workers": int,
    "augmentation": {"probability": _NUMBER, "mask_boxes": int, "mask_box_size": _INT_LIST, "zoom": _NUM_LIST,
                     "noise_sigma": _NUMBER, "shift_voxels": int, "rotation_degrees": _NUMBER,
                     "intensity_scale": _NUM_LIST, "intensity_power": _NUM_LIST},
    "estimated_memory_gb": _NUMBER,
}
PLANS_SCHEMA = {
    "schema_version": int, "vfscreen_version": str, "dataset_name": str, "plans_name": str, "seed": int,
    "num_folds": int, "device": {"type": str, "memory_gb": _NUMBER, "num_threads": int},
    "configurations": {CONFIGURATION: {"segmentation": _SEGMENTATION_SCHEMA, "grader": _GRADER_SCHEMA}},
}
_ALLOWED_VALUES = {
    "device.type": ("cpu", "cuda", "mps"),
    f"configurations.{CONFIGURATION}.grader.crop.mode": ("fit", "spacing"),
    f"configurations.{CONFIGURATION}.grader.crop.mask_channel": ("label_modulated", "binary", "none"),
    f"configurations.{CONFIGURATION}.grader.crop.storage_dtype": ("float16", "float32"),
    f"configurations.{CONFIGURATION}.grader.network.block": ("BottleneckD", "BasicBlockD"),
    f"configurations.{CONFIGURATION}.grader.loss.name": ("supcon", "ce"),
    f"configurations.{CONFIGURATION}.grader.optimizer.name": ("sgd", "adam"),
}


def preprocessed_folder(dataset_name: str) -> Path:
    return paths.nnUNet_preprocessed / dataset_name


def plans_file(dataset_name: str) -> Path:
    """``nnUNet_preprocessed/<Dataset>/vfscreenPlans.json`` (dataset_name may also be an id like 501)."""
    return preprocessed_folder(_resolve(dataset_name)) / PLANS_FILE_NAME


def fingerprint_file(dataset_name: str) -> Path:
    return preprocessed_folder(_resolve(dataset_name)) / FINGERPRINT_FILE_NAME


def _resolve(dataset_name) -> str:
    text = str(dataset_name)
    if text.startswith("Dataset"):
        return text
    return resolve_dataset_name(text)


def load_plans(dataset_name: str, path: str | Path | None = None) -> dict:
    """Read and validate the plans of ``dataset_name`` (from ``path`` if given). Raises ConfigError naming the field."""
    dataset_name = _resolve(dataset_name)
    path = Path(path) if path is not None else plans_file(dataset_name)
    if not path.is_file():
        raise ConfigError(f"{path}: plans missing; run vfscreen_plan_and_preprocess -d {dataset_name} first")
    plans = read_json(path, "plans")
    validate_plans(plans, dataset_name, source=str(path))
    return plans


# ------------------------------------------------------------------------------------------- typed accessors
# Every stage reads the plans through these; the defaults for fields older plans may lack live here and nowhere else.
DEFAULT_GRADER_LOSS = "supcon"
DEFAULT_USE_TRUNCATED = False  # the planner's value: vertebrae cut by the field of view are neither trained nor graded
DEFAULT_TEST_TIME_MIRRORING = True  # nnU-Net's default
DEFAULT_ORIENTATION = None  # None: the network sees the image in its stored orientation
SPEED_SOURCES = ("measured", "model")
DEFAULT_SPEED_SOURCE = "model"  # plans without a speed record were sized by the speed model (or are GPU plans)
SPEED_STAGES = ("segmentation", "grader")
_SPEED_NUMBERS = ("modelled_seconds_per_step", "measured_seconds_per_step", "measured_steps", "measured_threads",
                  "measured_over_modelled", "loop_seconds_per_step", "planned_minutes")


@dataclass(frozen=True)
class SegmentationSettings:
    """What prediction and training need from a configuration's ``segmentation`` section."""
    trainer: str
    nnunet_plans_identifier: str
    nnunet_configuration: str
    orientation: str | None
    test_time_mirroring: bool
    section: dict  # the whole section (for the model-folder name and the schedule)


@dataclass(frozen=True)
class PlannedSpeed:
    """A stage's ``speed`` record: which speed sized its epochs (``source``: measured on the planning machine, or
    the speed model), seconds per training step modelled and measured, the loop's seconds per step the schedule
    assumed and the minutes it planned. Fields the record lacks are None."""
    source: str = DEFAULT_SPEED_SOURCE
    modelled_seconds_per_step: float | None = None
    measured_seconds_per_step: float | None = None
    measured_steps: int | None = None
    measured_threads: int | None = None
    measured_over_modelled: float | None = None
    loop_seconds_per_step: float | None = None
    planned_minutes: float | None = None
    note: str | None = None


def planned_speed(plans: dict, stage: str, configuration: str = CONFIGURATION) -> PlannedSpeed:
    """The speed record of ``stage`` ('segmentation' | 'grader'); the defaults (source 'model', no numbers) for
    plans that have none."""
    if stage not in SPEED_STAGES:
        raise ConfigError(f"no speed record for stage {stage!r} (choose from {', '.join(SPEED_STAGES)})")
    record = _stage_section(plans, configuration, stage).get("speed") or {}
    return PlannedSpeed(source=record.get("source", DEFAULT_SPEED_SOURCE), note=record.get("note"),
                        **{key: record.get(key) for key in _SPEED_NUMBERS})


def _check_speed_records(plans: dict, source: str) -> None:
    for stage in SPEED_STAGES:
        record = plans["configurations"][CONFIGURATION][stage].get("speed")
        if record is None:
            continue
        field = f"configurations.{CONFIGURATION}.{stage}.speed"
        if not isinstance(record, dict):
            raise ConfigError(f"{source}: field '{field}' must be an object")
        if record.get("source", DEFAULT_SPEED_SOURCE) not in SPEED_SOURCES:
            raise ConfigError(f"{source}: field '{field}.source' is {record.get('source')!r}; allowed: "
                              f"{', '.join(SPEED_SOURCES)}")
        for key in _SPEED_NUMBERS:
            if key in record and (isinstance(record[key], bool) or not isinstance(record[key], _NUMBER)):
                raise ConfigError(f"{source}: field '{field}.{key}' must be a number, got {record[key]!r}")


def configuration_section(plans: dict, configuration: str = CONFIGURATION, wanted: str = "") -> dict:
    """``plans["configurations"][configuration]``; ConfigError naming the field (``wanted``: the sub-field the
    caller reads) and the configurations that exist."""
    configurations = plans.get("configurations") if isinstance(plans, dict) else None
    if not isinstance(configurations, dict) or not isinstance(configurations.get(configuration), dict):
        dataset = plans.get("dataset_name") if isinstance(plans, dict) else None
        raise ConfigError(f"field 'configurations.{configuration}{wanted}' is missing: configuration "
                          f"{configuration!r} is not in the plans of {dataset!r} "
                          f"(available: {sorted(configurations or {})})")
    return configurations[configuration]


def _stage_section(plans: dict, configuration: str, stage: str, wanted: str = "") -> dict:
    section = configuration_section(plans, configuration, f".{stage}{wanted}").get(stage)
    if not isinstance(section, dict):
        raise ConfigError(f"field 'configurations.{configuration}.{stage}{wanted}' is missing: the plans of "
                          f"{plans.get('dataset_name')!r} have no {stage} stage for {configuration!r}")
    return section


def segmentation_settings(plans: dict, configuration: str = CONFIGURATION) -> SegmentationSettings:
    section = _stage_section(plans, configuration, "segmentation")
    try:
        return SegmentationSettings(trainer=section["trainer"],
                                    nnunet_plans_identifier=section["nnunet_plans_identifier"],
                                    nnunet_configuration=section["nnunet_configuration"],
                                    orientation=section.get("orientation", DEFAULT_ORIENTATION),
                                    test_time_mirroring=bool(section.get("test_time_mirroring",
                                                                         DEFAULT_TEST_TIME_MIRRORING)),
                                    section=section)
    except KeyError as error:
        raise ConfigError(f"field 'configurations.{configuration}.segmentation.{error.args[0]}' is missing") from None


def grader_section(plans: dict, configuration: str = CONFIGURATION) -> dict:
    return _stage_section(plans, configuration, "grader")


def crop_section(plans: dict, configuration: str = CONFIGURATION) -> dict:
    crop = _stage_section(plans, configuration, "grader", ".crop").get("crop")
    if not isinstance(crop, dict):
        raise ConfigError(f"field 'configurations.{configuration}.grader.crop' is missing")
    return crop


def includes_truncated(crop: dict) -> bool:
    """Whether vertebrae cut by the field of view are trained on and graded (the crop plan's ``use_truncated``)."""
    return bool(crop.get("use_truncated", DEFAULT_USE_TRUNCATED))


def grader_loss(plans: dict, configuration: str = CONFIGURATION) -> str:
    """The grader loss the plans name for ``configuration``."""
    return grader_section(plans, configuration).get("loss", {}).get("name", DEFAULT_GRADER_LOSS)


def save_plans(plans: dict, path: str | Path | None = None) -> Path:
    """Validate, then write atomically. Returns the path written."""
    validate_plans(plans, plans.get("dataset_name"), source="plans to save")
    path = Path(path) if path is not None else plans_file(plans["dataset_name"])
    atomic_write_json(path, plans)
    return path


def read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read {what} ({error})") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: {what} is not valid JSON (line {error.lineno}: {error.msg})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: {what} must be a JSON object")
    return data


def validate_plans(plans: dict, dataset_name: str | None = None, source: str = "plans") -> None:
    """Check required fields, types, allowed values and cross-field consistency. One ConfigError per problem."""
    if not isinstance(plans, dict):
        raise ConfigError(f"{source}: plans must be a JSON object")
    _check_section(plans, PLANS_SCHEMA, "", source)
    if plans["schema_version"] != SCHEMA_VERSION:
        raise ConfigError(f"{source}: field 'schema_version' is {plans['schema_version']}, this vfscreen reads "
                          f"version {SCHEMA_VERSION}; re-run vfscreen_plan_and_preprocess --overwrite_plans")
    if dataset_name is not None and plans["dataset_name"] != dataset_name:
        raise ConfigError(f"{source}: field 'dataset_name' is {plans['dataset_name']!r} but these plans are used for "
                          f"{dataset_name!r} (plans made for another dataset)")
    for field, allowed in _ALLOWED_VALUES.items():
        value = _get(plans, field)
        if value not in allowed:
            raise ConfigError(f"{source}: field '{field}' is {value!r}; allowed: {', '.join(map(str, allowed))}")
    if plans["num_folds"] < 2:
        raise ConfigError(f"{source}: field 'num_folds' must be >= 2, got {plans['num_folds']}")
    _check_grader_consistency(plans["configurations"][CONFIGURATION]["grader"], source)
    _check_speed_records(plans, source)
    seg = plans["configurations"][CONFIGURATION]["segmentation"]
    if len(seg["patch_size"]) != 3 or len(seg["target_spacing_mm"]) != 3:
        raise ConfigError(f"{source}: fields 'configurations.3d.segmentation.patch_size' and 'target_spacing_mm' "
                          "need 3 values")


def _check_grader_consistency(grader: dict, source: str) -> None:
    prefix = f"configurations.{CONFIGURATION}.grader"
    network = grader["network"]
    n_stages = len(network["features_per_stage"])
    for field in ("n_blocks_per_stage", "strides", "kernel_sizes"):
        if len(network[field]) != n_stages:
            raise ConfigError(f"{source}: field '{prefix}.network.{field}' has {len(network[field])} entries, "
                              f"'features_per_stage' has {n_stages}; they must match")
    patch_size = grader["crop"]["patch_size"]
    if len(patch_size) != 3 or min(patch_size) < 8:
        raise ConfigError(f"{source}: field '{prefix}.crop.patch_size' must be 3 sizes >= 8, got {patch_size}")
    total_stride = 1
    for stride in network["strides"]:
        total_stride *= stride
    if any(size % total_stride for size in patch_size):
        raise ConfigError(f"{source}: field '{prefix}.crop.patch_size' {patch_size} is not divisible by the "
                          f"backbone's total stride {total_stride}")
    for position, window in enumerate(grader["crop"]["windows"]):
        for key in ("name", "width", "level"):
            if key not in window:
                raise ConfigError(f"{source}: field '{prefix}.crop.windows[{position}].{key}' is missing")
        if not isinstance(window["width"], _NUMBER) or window["width"] <= 0:
            raise ConfigError(f"{source}: field '{prefix}.crop.windows[{position}].width' must be a number > 0")
    positive = {"crop.spacing_mm": grader["crop"]["spacing_mm"], "sampler.samples_per_class":
                grader["sampler"]["samples_per_class"], "num_epochs": grader["num_epochs"],
                "loss.temperature": grader["loss"]["temperature"], "optimizer.lr": grader["optimizer"]["lr"]}
    for field, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{source}: field '{prefix}.{field}' must be > 0, got {value}")
    if network["num_classes"] != 4:
        raise ConfigError(f"{source}: field '{prefix}.network.num_classes' must be 4 (Genant grades 0-3)")


def _check_section(data: dict, schema: dict, prefix: str, source: str) -> None:
    for key, expected in schema.items():
        field = f"{prefix}{key}"
        if key not in data:
            raise ConfigError(f"{source}: field '{field}' is missing")
        value = data[key]
        if isinstance(expected, dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: field '{field}' must be an object, got {type(value).__name__}")
            _check_section(value, expected, field + ".", source)
        elif isinstance(expected, tuple) and expected and expected[0] == "list":
            item_type = expected[1]
            if not isinstance(value, list) or not value:
                raise ConfigError(f"{source}: field '{field}' must be a non-empty list, got {value!r}")
            if not all(_is_type(item, item_type) for item in value):
                raise ConfigError(f"{source}: field '{field}' has an entry of the wrong type ({value!r})")
        elif not _is_type(value, expected):
            names = expected.__name__ if isinstance(expected, type) else "/".join(t.__name__ for t in expected)
            raise ConfigError(f"{source}: field '{field}' must be {names}, got {type(value).__name__} ({value!r})")


def _is_type(value, expected) -> bool:
    if isinstance(value, bool) and expected is not bool and (expected is int or expected == _NUMBER):
        return False  # JSON true is not a number
    return isinstance(value, expected)


def _get(data: dict, dotted: str):
    for key in dotted.split("."):
        data = data[key]
    return data


def crop_num_channels(crop_plan: dict) -> int:
    """Channels of a grader crop: one per CT window, plus the mask channel unless mask_channel is "none"."""
    return len(crop_plan["windows"]) + (crop_plan.get("mask_channel", "label_modulated") != "none")
