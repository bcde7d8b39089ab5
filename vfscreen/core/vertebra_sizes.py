"""How large each vertebra is, as evidence of its level: a size model fitted on a dataset, read by the chain model.

Vertebrae grow from the neck to the sacrum (body volume roughly quadruples from T1 to L5), so the sizes along a field
of view say where in the spine it lies even when no landmark is in view (a mid-thoracic scan whose ends are cut).
Patients differ in size, so a size says nothing alone; a row of sizes does, once the patient's own scale is
marginalised. The model, fitted per fold after segmentation training and written to ``fold_X/vertebra_sizes.json``:

    observed log volume of a class-k component = alpha + beta * (r_k + a) + noise,  a ~ N(0, patient_sd^2)

- ``r_k``: mean log volume of class k in the reference label maps of the training cases, with one offset ``a`` per
  case (alternating least squares; vertebrae cut by the image border left out); ``reference_sd`` the residual.
- ``alpha, beta, network_sd``: how the network's components see a reference volume, a robust line (scikit-learn's
  HuberRegressor) through (reference log volume, observed log volume) of the fold's validation vertebrae, observed
  volume = the predicted vertebra voxels nearest to that reference vertebra. A coarse network inflates small
  vertebrae and trims large ones; the line absorbs that.
- noise: N(0, beta^2 reference_sd^2 + network_sd^2), mixed with a broad outlier term (a merged or split component).

:meth:`SizeModel.log_factors` turns the components' volumes into the chain model's factors on a grid of ``a``
(vfscreen.inference.chain_model marginalises it exactly over the grid).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.special import logsumexp
from scipy.stats import norm

from vfscreen.errors import ConfigError
from vfscreen.labels import NUM_VERTEBRA_CLASSES
from vfscreen.utils.atomic import atomic_write_json

SIZE_MODEL_FILE = "vertebra_sizes.json"
ASSIGN_DISTANCE_MM = 5.0  # predicted vertebra voxels this close to a reference vertebra belong to it
MIN_CALIBRATION_VERTEBRAE = 10  # fewer validation (or reference) vertebrae: sizes are unknown (no model)
OUTLIER_FRACTION = 0.1  # share of components whose volume says nothing (merged, split, partial)
OUTLIER_SD = 1.0  # log-volume spread of an outlier (a factor e)
SCALE_GRID_POINTS = 25  # patient scale a on +-3 patient_sd
_FITTING_ROUNDS = 50
END_SLOPE_CLASSES = 3  # unseen classes beyond the seen ones follow the slope of this many


@dataclass
class SizeModel:
    class_log_volume: list[float]  # (K,) r_k, mean log volume (mm3) of classes 1..K in the reference masks
    patient_sd: float  # spread of a case's offset a (log volume)
    reference_sd: float  # residual spread of one vertebra around r_k + a
    alpha: float  # observed = alpha + beta * reference (log volumes)
    beta: float
    network_sd: float  # robust spread of observed around the line
    num_reference_vertebrae: int = 0
    num_validation_vertebrae: int = 0
    classes_seen: list[int] | None = None  # classes with reference vertebrae (the others are interpolated)

    def log_factors(self, volumes_mm3, usable) -> tuple[np.ndarray, np.ndarray]:
        """(log prior (A,) of the scale grid, factors (A, N, K)): log-likelihood of each component's volume given
        each class at each scale, relative to a class drawn at random under the prior (0 where not ``usable``: a
        component cut by the field of view)."""
        volumes = np.maximum(np.asarray(volumes_mm3, dtype=float), 1.0)
        usable = np.asarray(usable, dtype=bool)
        scales = np.linspace(-3.0, 3.0, SCALE_GRID_POINTS) * max(self.patient_sd, 1e-3)
        log_prior = norm.logpdf(scales, scale=max(self.patient_sd, 1e-3))
        log_prior -= logsumexp(log_prior)
        mean = self.alpha + self.beta * (np.asarray(self.class_log_volume)[None, :] + scales[:, None])  # (A, K)
        spread = float(np.hypot(self.beta * self.reference_sd, self.network_sd))
        observed = np.log(volumes)[None, :, None]  # (1, N, 1)
        inlier = norm.logpdf(observed, loc=mean[:, None, :], scale=spread)
        outlier = norm.logpdf(observed, loc=mean[:, None, :], scale=OUTLIER_SD)
        factors = np.logaddexp(np.log1p(-OUTLIER_FRACTION) + inlier, np.log(OUTLIER_FRACTION) + outlier)
        average = logsumexp(log_prior[:, None, None] + factors, axis=(0, 2)) - np.log(factors.shape[2])  # (N,)
        factors = np.where(usable[None, :, None], factors - average[None, :, None], 0.0)
        return log_prior, factors


def cranio_caudal_axis(image) -> int:
    """The numpy axis (0 = k, 1 = j, 2 = i) of a SimpleITK image's index axis closest to the patient's head-feet
    (world z) direction: a vertebra that reaches the image's border along it is cut by the field of view's upper or
    lower end (one at a lateral border has lost a process at most)."""
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)  # columns: world directions of i, j, k
    return 2 - int(np.argmax(np.abs(direction[2])))


def vertebra_volumes(label_map: np.ndarray, voxel_mm3: float, cut_axis: int | None = None) -> dict[int, float]:
    """Volume (mm3) of every vertebra class 1..K in a reference label map, without those cut by the array border
    along ``cut_axis`` (numpy order: the cranio-caudal axis, as prediction tells cut components; None: any axis)."""
    volumes = {}
    counts = np.bincount(label_map.ravel(), minlength=NUM_VERTEBRA_CLASSES + 1)
    for class_id, box in enumerate(ndimage.find_objects(label_map), start=1):
        if class_id > NUM_VERTEBRA_CLASSES or box is None:
            continue
        if any(b.start == 0 or b.stop == size for axis, (b, size) in enumerate(zip(box, label_map.shape))
               if cut_axis is None or axis == cut_axis):
            continue
        volumes[class_id] = float(counts[class_id] * voxel_mm3)
    return volumes


def observed_volumes(predicted_vertebra: np.ndarray, label_map: np.ndarray, spacing_zyx, voxel_mm3: float,
                     classes) -> dict[int, float]:
    """Volume (mm3) of the predicted vertebra voxels nearest to (and within ASSIGN_DISTANCE_MM of) each reference
    vertebra of ``classes``: what the network's component of that vertebra holds."""
    vertebrae = np.where((label_map >= 1) & (label_map <= NUM_VERTEBRA_CLASSES), label_map, 0)
    distance, nearest = ndimage.distance_transform_edt(vertebrae == 0, sampling=spacing_zyx, return_indices=True)
    owner = vertebrae[tuple(nearest)]
    owner[~predicted_vertebra | (distance > ASSIGN_DISTANCE_MM)] = 0
    counts = np.bincount(owner.ravel(), minlength=NUM_VERTEBRA_CLASSES + 1)
    return {class_id: float(counts[class_id] * voxel_mm3) for class_id in classes if counts[class_id] > 0}


def fit_reference(case_volumes: list[dict[int, float]]) -> tuple[np.ndarray, float, float, list[int], int]:
    """(r (K,), patient_sd, reference_sd, classes seen, number of vertebrae) from per-case {class: volume mm3}."""
    rows = [(case, class_id, np.log(volume)) for case, table in enumerate(case_volumes)
            for class_id, volume in table.items() if volume > 0]
    if len(rows) < 3:
        raise ConfigError(f"{len(rows)} whole reference vertebrae: too few to fit vertebra sizes")
    case_of, class_of, log_volume = (np.array(column) for column in zip(*rows))
    num_cases = len(case_volumes)
    offsets, class_means = np.zeros(num_cases), np.zeros(NUM_VERTEBRA_CLASSES + 1)
    seen = np.unique(class_of)
    for _ in range(_FITTING_ROUNDS):
        class_means[seen] = [np.mean(log_volume[class_of == c] - offsets[case_of[class_of == c]]) for c in seen]
        residual = log_volume - class_means[class_of]
        offsets = np.bincount(case_of, residual, num_cases) / np.maximum(np.bincount(case_of, minlength=num_cases), 1)
        shift = offsets[np.unique(case_of)].mean()
        offsets -= shift
        class_means[seen] += shift
    residual = log_volume - class_means[class_of] - offsets[case_of]
    degrees = max(len(rows) - len(np.unique(case_of)) - len(seen) + 1, 1)
    reference_sd = float(np.sqrt(np.sum(residual ** 2) / degrees))
    per_case = np.bincount(case_of, minlength=num_cases)
    used = per_case > 0
    # an offset fitted on n vertebrae carries reference_sd^2 / n of noise: take it out of the offsets' spread
    patient_var = np.var(offsets[used]) - np.mean(reference_sd ** 2 / per_case[used])
    patient_sd = float(np.sqrt(max(patient_var, (reference_sd / 2) ** 2)))
    return _fill_unseen(seen, class_means[seen]), patient_sd, reference_sd, seen.astype(int).tolist(), len(rows)


def _fill_unseen(seen: np.ndarray, means: np.ndarray) -> np.ndarray:
    """(K,) log volumes of all classes: between seen classes interpolated, beyond them extended along the slope of
    the nearest END_SLOPE_CLASSES seen classes (never shrinking towards the sacrum), with one class seen constant."""
    all_classes = np.arange(1, NUM_VERTEBRA_CLASSES + 1)
    filled = np.interp(all_classes, seen, means)
    if len(seen) < 2:
        return filled
    low, high = slice(0, END_SLOPE_CLASSES), slice(-END_SLOPE_CLASSES, None)
    low_slope = max(np.polyfit(seen[low], means[low], 1)[0], 0.0) if len(seen[low]) > 1 else 0.0
    high_slope = max(np.polyfit(seen[high], means[high], 1)[0], 0.0) if len(seen[high]) > 1 else 0.0
    below, above = all_classes < seen[0], all_classes > seen[-1]
    filled[below] = means[0] - low_slope * (seen[0] - all_classes[below])
    filled[above] = means[-1] + high_slope * (all_classes[above] - seen[-1])
    return filled


def fit_size_model(reference_volumes: list[dict[int, float]],
                   calibration_pairs: list[tuple[float, float]]) -> SizeModel | None:
    """The size model from reference volumes (per training case) and (reference mm3, observed mm3) pairs of the
    validation vertebrae; None with fewer than MIN_CALIBRATION_VERTEBRAE of either (nothing to fit on)."""
    num_reference = sum(len(table) for table in reference_volumes)
    if min(len(calibration_pairs), num_reference) < MIN_CALIBRATION_VERTEBRAE:
        return None
    from sklearn.linear_model import HuberRegressor

    class_log_volume, patient_sd, reference_sd, seen, count = fit_reference(reference_volumes)
    reference, observed = np.log(np.asarray(calibration_pairs, dtype=float)).T
    line = HuberRegressor().fit(reference[:, None], observed)
    residual = observed - line.predict(reference[:, None])
    network_sd = float(1.4826 * np.median(np.abs(residual - np.median(residual))))
    return SizeModel(class_log_volume.tolist(), patient_sd, reference_sd, float(line.intercept_),
                     float(line.coef_[0]), max(network_sd, 1e-3), count, len(calibration_pairs), seen)


def write_size_model(fold_folder: Path, model: SizeModel, cases: list[str]) -> Path:
    path = Path(fold_folder) / SIZE_MODEL_FILE
    atomic_write_json(path, {**asdict(model), "validation_cases": cases})
    return path


def read_size_model(model_folder: Path, folds) -> SizeModel | None:
    """The size model of the first fold that has one (folds share the reference part; their validation lines
    differ little); None when none has it (a model trained elsewhere: no size evidence)."""
    for fold in folds:
        path = Path(model_folder) / f"fold_{fold}" / SIZE_MODEL_FILE
        if not path.is_file():
            continue
        try:
            content = json.loads(path.read_text())
            content.pop("validation_cases", None)
            model = SizeModel(**content)
        except (json.JSONDecodeError, TypeError, ValueError) as error:
            raise ConfigError(f"{path}: not a vertebra-size file ({type(error).__name__}: {error}); "
                              "delete it to name vertebrae without size evidence") from None
        if len(model.class_log_volume) != NUM_VERTEBRA_CLASSES or not np.all(np.isfinite(model.class_log_volume)):
            raise ConfigError(f"{path}: 'class_log_volume' must hold {NUM_VERTEBRA_CLASSES} finite numbers")
        return model
    return None
