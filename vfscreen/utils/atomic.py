"""Atomic writes: write to a temporary name in the same folder, fsync, rename. A crash never leaves a file (or a
folder) that a later run could mistake for a finished one. Every file vfscreen writes goes through this module."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np


def _current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


_UMASK = _current_umask()


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(final_path: str | os.PathLike, suffix: str | None = None):
    """Yield a temporary path next to ``final_path``; on success fsync it and rename it into place.

    ``suffix`` defaults to the final file's own suffixes so writers that look at the extension (SimpleITK, numpy,
    matplotlib) behave as for the final name.
    """
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(final_path.suffixes) if suffix is None else suffix
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final_path.name}.", suffix=".tmp" + suffix, dir=final_path.parent)
    os.close(fd)
    tmp_path = Path(tmp_name)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; final files get the usual permissions
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_path, final_path)
        _fsync_dir(final_path.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(final_path, text: str) -> None:
    with atomic_path(final_path) as tmp:
        tmp.write_text(text)


def atomic_write_json(final_path, data, indent: int = 2) -> None:
    atomic_write_text(final_path, json.dumps(data, indent=indent, sort_keys=False) + "\n")


def atomic_save_npy(final_path, array: np.ndarray) -> None:
    with atomic_path(final_path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, array)


def atomic_write_csv(final_path, data_frame, **to_csv_kwargs) -> None:
    with atomic_path(final_path) as tmp:
        data_frame.to_csv(tmp, index=False, **to_csv_kwargs)


def atomic_write_image(final_path, image, compress: bool = True) -> None:
    """Write a SimpleITK image atomically."""
    import SimpleITK as sitk

    with atomic_path(final_path) as tmp:
        sitk.WriteImage(image, str(tmp), compress)


@contextlib.contextmanager
def atomic_directory(final_dir: str | os.PathLike, overwrite: bool = False):
    """Build a folder under a temporary name and rename it into place when the block succeeds.

    Refuses (FileExistsError) to replace an existing non-empty folder unless ``overwrite``. With ``overwrite`` the
    old folder is replaced only after the new one is complete.
    """
    final_dir = Path(final_dir)
    if final_dir.exists() and any(final_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{final_dir} exists and is not empty (use --overwrite to replace it)")
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.", suffix=".tmp", dir=final_dir.parent))
    os.chmod(tmp_dir, 0o777 & ~_UMASK)  # mkdtemp makes 0700
    try:
        yield tmp_dir
        if final_dir.exists():
            trash = final_dir.with_name(f".{final_dir.name}.old-{os.getpid()}")
            os.replace(final_dir, trash)
            os.replace(tmp_dir, final_dir)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp_dir, final_dir)
        _fsync_dir(final_dir.parent)
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir, ignore_errors=True)


def remove_stale_temporaries(final_path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files :func:`atomic_path` left next to ``final_path`` when its process was killed
    (kill -9, power loss: no clean-up code ran). Call only when no other process can be writing ``final_path``
    (e.g. when a resumed run is about to redo that file). Returns the paths removed."""
    import glob

    final_path = Path(final_path)
    stale = sorted(final_path.parent.glob(f".{glob.escape(final_path.name)}.*.tmp*"))
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale
