"""95 % bootstrap intervals that resample PATIENTS (cases), not vertebrae.

Vertebrae of one patient are correlated (same scanner, same bone quality, fractures cluster), so resampling vertebrae
would give intervals that are too narrow. Each bootstrap replicate draws as many patients as there are, with
replacement, and takes *all* rows of every drawn patient from every table; a patient drawn twice appears twice under
two distinct ids (``<case>#<k>``), so patient-level metrics see two patients. The percentile interval of each metric is
reported with the number of replicates in which it was defined (e.g. AUROC is undefined in a replicate that drew only
non-fractured patients). The random generator is numpy's ``default_rng(seed)``: same seed, same intervals.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
import sklearn

from vfscreen.evaluation.metrics import flatten_metrics, is_metric, metric_value
from vfscreen.utils.progress import progress_bar

DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0
DEFAULT_CONFIDENCE = 0.95
PATIENT_COLUMN = "case_id"


def resample_patients(tables: dict[str, pd.DataFrame], patients: list[str], rng: np.random.Generator,
                      row_index: dict[str, dict[str, np.ndarray]]) -> dict[str, pd.DataFrame]:
    """One bootstrap replicate of every table (see the module docstring)."""
    drawn = rng.integers(0, len(patients), size=len(patients))
    replicate = {}
    for name, table in tables.items():
        positions, new_ids = [], []
        for draw_number, patient_number in enumerate(drawn):
            rows = row_index[name].get(patients[patient_number])
            if rows is not None and rows.size:
                positions.append(rows)
                new_ids.append(np.full(rows.size, f"{patients[patient_number]}#{draw_number}", dtype=object))
        if positions:
            resampled = table.iloc[np.concatenate(positions)].copy()
            resampled[PATIENT_COLUMN] = np.concatenate(new_ids)
        else:
            resampled = table.iloc[:0].copy()
        replicate[name] = resampled.reset_index(drop=True)
    return replicate


def _run_replicates(tables, compute, patients, rng, row_index, n_resamples, progress, samples) -> None:
    if not patients:
        return
    for _ in progress_bar(range(n_resamples), desc="bootstrap (patients)", disable=not progress, leave=False):
        replicate = resample_patients(tables, patients, rng, row_index)
        for name, leaf in flatten_metrics(compute(replicate)).items():
            value = metric_value(leaf)
            samples.setdefault(name, [])
            if value is not None:
                samples[name].append(value)


def bootstrap_intervals(tables: dict[str, pd.DataFrame], compute: Callable[[dict[str, pd.DataFrame]], dict],
                        n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                        confidence: float = DEFAULT_CONFIDENCE, progress: bool = True) -> dict[str, dict]:
    """Percentile intervals of every metric leaf that ``compute(tables)`` returns.

    ``tables``: name -> DataFrame with a ``case_id`` column (the patient). Patients are the union over all tables.
    Returns flat metric name -> {"ci95": [low, high] or None, "defined_in": number of replicates}.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    patients = sorted(set().union(*(set(t[PATIENT_COLUMN].astype(str)) for t in tables.values())))
    row_index = {name: {str(patient): np.asarray(rows, dtype=np.int64)
                        for patient, rows in table.groupby(table[PATIENT_COLUMN].astype(str)).indices.items()}
                 for name, table in tables.items()}
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {}
    # inputs were validated by the point estimate; skip scikit-learn's per-call checks in the replicates
    with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
        _run_replicates(tables, compute, patients, rng, row_index, n_resamples, progress, samples)
    tail = (1.0 - confidence) / 2.0 * 100.0
    intervals = {}
    for name, values in samples.items():
        interval = None
        if values:
            low, high = np.percentile(np.asarray(values, dtype=float), [tail, 100.0 - tail])
            interval = [float(low), float(high)]
        intervals[name] = {"ci95": interval, "defined_in": len(values)}
    return intervals


def attach_intervals(tree: dict, intervals: dict[str, dict], n_resamples: int, prefix: str = "") -> dict:
    """Copy of a nested metric result with each leaf's interval added (leaf["ci95"], leaf["bootstrap_defined"])."""
    out = {}
    for key, node in tree.items():
        name = f"{prefix}{key}"
        if is_metric(node):
            leaf = dict(node)
            found = intervals.get(name, {"ci95": None, "defined_in": 0})
            leaf["ci95"] = found["ci95"]
            leaf["bootstrap_defined"] = f"{found['defined_in']}/{n_resamples}"
            out[key] = leaf
        elif isinstance(node, dict):
            out[key] = attach_intervals(node, intervals, n_resamples, name + ".")
        else:
            out[key] = node
    return out
