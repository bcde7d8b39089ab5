"""Generate synthetic spine-CT cases and write them as an nnU-Net raw dataset with ``grades.csv``.

Determinism: the dataset seed spawns one :class:`numpy.random.SeedSequence` per case (train cases first, then test
cases) and one for the patient mix, so every case depends only on (seed, counts, preset, patient mix) - not on the
number of worker processes or the order in which workers finish.
"""
from __future__ import annotations

import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from vfscreen import dataset, labels
from vfscreen.errors import ConfigError
from vfscreen.phantom.acquisition import PRESETS, Preset, apply_scanner, sample_acquisition, to_image
from vfscreen.phantom.anatomy import SpineCase, build_case
from vfscreen.phantom.rendering import add_trabecular_texture, render
from vfscreen.utils.atomic import atomic_directory, atomic_write_csv, atomic_write_image
from vfscreen.utils.progress import progress_bar

DATASET_SUFFIX = "SyntheticSpine"
DEFAULT_PATIENT_MIX = (1.0, 3.0, 3.0, 3.0)  # patients by worst grade G0:G1:G2:G3 (the paper's dataset)
CASE_PREFIX = "synspine"
MAX_CASES = 100_000
GRADE_COLUMNS = ["case_id", "label", "grade", "anterior_mm", "middle_mm", "posterior_mm", "morphology", "truncated",
                 "name", "split", "centre_x_mm", "centre_y_mm", "centre_z_mm",
                 "superior_x", "superior_y", "superior_z", "anterior_x", "anterior_y", "anterior_z"]


@dataclass(frozen=True)
class CaseSpec:
    case_id: str
    split: str  # "Tr" or "Ts"
    seed: np.random.SeedSequence
    target_worst_grade: int
    preset: Preset


@dataclass
class GeneratedCase:
    ct: sitk.Image  # int16 HU
    label: sitk.Image  # uint8 nnU-Net class ids, same geometry
    rows: list[dict]  # one per vertebra present in the label mask
    anatomy: SpineCase


def allocate_worst_grades(num_cases: int, patient_mix, rng: np.random.Generator) -> list[int]:
    """Target worst grade per case: counts proportional to ``patient_mix`` (largest remainder), shuffled."""
    weights = np.asarray(patient_mix, dtype=float) / np.sum(patient_mix)
    exact = weights * num_cases
    counts = np.floor(exact).astype(int)
    for grade in np.argsort(-(exact - counts), kind="stable")[: num_cases - counts.sum()]:
        counts[grade] += 1
    targets = np.repeat(np.arange(4), counts)
    return [int(g) for g in rng.permutation(targets)]


def case_specs(seed: int, num_cases: int, num_test_cases: int, preset: Preset,
               patient_mix=DEFAULT_PATIENT_MIX) -> list[CaseSpec]:
    mix_sequence, cases_sequence = np.random.SeedSequence(seed).spawn(2)
    mix_rng = np.random.default_rng(mix_sequence)
    targets = allocate_worst_grades(num_cases, patient_mix, mix_rng)
    targets += allocate_worst_grades(num_test_cases, patient_mix, mix_rng)
    sequences = cases_sequence.spawn(num_cases + num_test_cases)
    width = max(4, len(str(num_cases + num_test_cases - 1)))
    return [CaseSpec(f"{CASE_PREFIX}_{index:0{width}d}", "Tr" if index < num_cases else "Ts", sequences[index],
                     targets[index], preset) for index in range(num_cases + num_test_cases)]


def _case_rng(spec: CaseSpec, stream: int) -> np.random.Generator:
    """Independent random stream ``stream`` of a case (0 anatomy, 1 acquisition, 2 noise, 3 bone texture);
    stateless, so a spec gives the same case however often it is generated."""
    return np.random.default_rng(np.random.SeedSequence(spec.seed.entropy,
                                                        spawn_key=tuple(spec.seed.spawn_key) + (stream,)))


def case_anatomy(spec: CaseSpec) -> SpineCase:
    """The anatomy (vertebrae, heights, grades, field of view) of a case, without rendering it."""
    return build_case(_case_rng(spec, 0), spec.target_worst_grade, spec.preset.whole_vertebrae)


def generate_case(spec: CaseSpec) -> GeneratedCase:
    """Anatomy -> acquisition -> rendering -> scanner -> images in the stored orientation + grade rows."""
    anatomy = case_anatomy(spec)
    acquisition_rng, noise_rng = _case_rng(spec, 1), _case_rng(spec, 2)
    acquisition = sample_acquisition(acquisition_rng, anatomy, spec.preset)
    hu, verse_labels = render(anatomy, acquisition.grid)
    texture_rng = _case_rng(spec, 3)
    hu = add_trabecular_texture(hu, verse_labels, acquisition.grid.spacing, texture_rng,
                                texture_rng.uniform(*spec.preset.trabecular_texture_hu))
    ct_array = apply_scanner(hu, acquisition, noise_rng)
    rows = grade_rows(spec, anatomy, verse_labels)
    ct = to_image(ct_array, acquisition.grid, acquisition.orientation)
    label = to_image(labels.verse_to_class(verse_labels, landmarks=True), acquisition.grid, acquisition.orientation)
    return GeneratedCase(ct, label, rows, anatomy)


def border_labels(label_array: np.ndarray) -> set[int]:
    """Labels touching any face of the volume (cut by the field of view)."""
    faces = [label_array[0], label_array[-1], label_array[:, 0], label_array[:, -1], label_array[:, :, 0],
             label_array[:, :, -1]]
    return {int(v) for face in faces for v in np.unique(face) if v}


def grade_rows(spec: CaseSpec, anatomy: SpineCase, verse_labels: np.ndarray) -> list[dict]:
    """One grades.csv row per vertebra present in the mask; heights and grade from the generated geometry."""
    present = {int(v) for v in np.unique(verse_labels) if v}
    cut = border_labels(verse_labels)
    rows = []
    for vertebra in anatomy.vertebrae:
        if vertebra.verse_id not in present:
            continue
        anterior, middle, posterior = vertebra.heights
        lateral, anterior_axis, superior = vertebra.axes
        rows.append({
            "case_id": spec.case_id, "label": vertebra.verse_id, "grade": vertebra.grade,
            "anterior_mm": round(anterior, 3), "middle_mm": round(middle, 3), "posterior_mm": round(posterior, 3),
            "morphology": vertebra.morphology, "truncated": vertebra.verse_id in cut, "name": vertebra.name,
            "split": spec.split,
            **{f"centre_{axis}_mm": round(float(value), 4) for axis, value in zip("xyz", vertebra.centre)},
            **{f"superior_{axis}": round(float(value), 6) for axis, value in zip("xyz", superior)},
            **{f"anterior_{axis}": round(float(value), 6) for axis, value in zip("xyz", anterior_axis)},
        })
    return rows


def write_case(spec: CaseSpec, dataset_folder: Path) -> list[dict]:
    generated = generate_case(spec)
    atomic_write_image(dataset.image_path(dataset_folder, spec.case_id, spec.split), generated.ct)
    atomic_write_image(dataset.label_path(dataset_folder, spec.case_id, spec.split), generated.label)
    return generated.rows


def _worker_init():
    sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(1)


def _write_case_job(job):
    return write_case(*job)


def dataset_name(dataset_id: int) -> str:
    return f"Dataset{dataset_id:03d}_{DATASET_SUFFIX}"


def validate_settings(seed, num_cases, num_test_cases, num_processes, patient_mix, dataset_id) -> None:
    """Raise ConfigError naming the first bad setting."""
    checks = [
        (isinstance(seed, (int, np.integer)) and 0 <= seed < 2 ** 63, f"seed {seed!r} must be an integer >= 0"),
        (isinstance(num_cases, (int, np.integer)) and 1 <= num_cases <= MAX_CASES,
         f"number of training cases {num_cases!r} must be an integer in 1..{MAX_CASES}"),
        (isinstance(num_test_cases, (int, np.integer)) and 0 <= num_test_cases <= MAX_CASES,
         f"number of test cases {num_test_cases!r} must be an integer in 0..{MAX_CASES}"),
        (isinstance(num_processes, (int, np.integer)) and num_processes >= 1,
         f"number of processes {num_processes!r} must be an integer >= 1"),
        (len(patient_mix) == 4 and all(np.isfinite(w) and w >= 0 for w in patient_mix) and sum(patient_mix) > 0,
         f"patient mix {patient_mix!r} must be 4 non-negative weights (G0:G1:G2:G3) with a positive sum"),
        (isinstance(dataset_id, (int, np.integer)) and 1 <= dataset_id <= 999,
         f"dataset id {dataset_id!r} must be an integer in 1..999"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def generate_dataset(output_root: Path, seed: int = 0, num_cases: int | None = None,
                     num_test_cases: int | None = None, preset: str | Preset = "demo", overwrite: bool = False,
                     num_processes: int | None = None, patient_mix=DEFAULT_PATIENT_MIX, dataset_id: int = 501,
                     progress: bool = True) -> Path:
    """Write ``output_root/DatasetXXX_SyntheticSpine`` atomically; returns its path."""
    if not isinstance(preset, Preset):
        if preset not in PRESETS:
            raise ConfigError(f"preset {preset!r} is unknown (choose one of {', '.join(PRESETS)})")
        preset = PRESETS[preset]
    num_cases = preset.num_cases if num_cases is None else num_cases
    num_test_cases = preset.num_test_cases if num_test_cases is None else num_test_cases
    num_processes = (os.cpu_count() or 1) if num_processes is None else num_processes
    validate_settings(seed, num_cases, num_test_cases, num_processes, tuple(patient_mix), dataset_id)
    name = dataset_name(dataset_id)
    final_folder = Path(output_root) / name
    specs = case_specs(seed, num_cases, num_test_cases, preset, patient_mix)
    try:
        with atomic_directory(final_folder, overwrite=overwrite) as folder:
            jobs = [(spec, folder) for spec in specs]
            rows = []
            bar = progress_bar(total=len(jobs), desc=f"generating {name}", unit="case", disable=not progress)
            if num_processes == 1:
                for job in jobs:
                    rows.extend(_write_case_job(job))
                    bar.update()
            else:
                context = multiprocessing.get_context("spawn")
                with context.Pool(min(num_processes, len(jobs)), initializer=_worker_init) as pool:
                    for case_rows in pool.imap_unordered(_write_case_job, jobs):
                        rows.extend(case_rows)
                        bar.update()
            bar.close()
            for split in ("Tr", "Ts"):  # nnU-Net expects the folders even when a split is empty
                (folder / f"images{split}").mkdir(exist_ok=True)
                (folder / f"labels{split}").mkdir(exist_ok=True)
            table = pd.DataFrame(rows, columns=GRADE_COLUMNS)
            table["order"] = table["label"].map(labels.spine_position)
            table = table.sort_values(["case_id", "order"]).drop(columns="order")
            atomic_write_csv(folder / dataset.GRADES_FILE, table)
            dataset.write_dataset_json(
                folder, name, num_cases,
                "Synthetic spine CT phantoms with exact Genant grades (vfscreen.phantom)",
                licence="MIT (generated by vfscreen; no patient data)",
                generator={"seed": int(seed), "preset": preset.name, "num_test_cases": int(num_test_cases),
                           "patient_mix": [float(w) for w in patient_mix]})
    except FileExistsError as error:
        raise ConfigError(str(error)) from None
    return final_folder
