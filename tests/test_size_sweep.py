"""The size sweep's pieces that need no trained model: its input sizes, its scans and its tables."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from vfscreen.errors import ConfigError
from vfscreen.evaluation.benchmark import sweep_scan_maker
from vfscreen.evaluation.size_sweep import STAGES, format_size_sweep, parse_size


def test_sizes_are_three_positive_numbers():
    assert parse_size("512x512x400") == (512, 512, 400)
    assert parse_size("64X64X3") == (64, 64, 3)
    for bad in ("512x512", "axbxc", "512x512x1", "1x2x3x4"):
        with pytest.raises(ConfigError, match="XxYxZ"):
            parse_size(bad)
    with pytest.raises(ConfigError, match="spine or noise"):
        sweep_scan_maker("bones")


def test_scans_have_the_asked_size_and_spacing_and_the_spine_is_inside():
    spacing = (0.8, 0.8, 1.0)
    noise = sweep_scan_maker("noise")((40, 30, 8), spacing)
    assert noise.GetSize() == (40, 30, 8) and noise.GetSpacing() == pytest.approx(spacing)
    array = sitk.GetArrayFromImage(noise)
    assert array.dtype == np.int16 and array.max() == 1000  # the bright column
    spine = sweep_scan_maker("spine")((160, 160, 120), spacing)
    assert spine.GetSize() == (160, 160, 120) and spine.GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1)
    array = sitk.GetArrayFromImage(spine)
    assert (array > 500).sum() > 1000  # bone of the pasted phantom
    assert array[0, 0, 0] == -1000 and abs(np.median(array[array > -500]) - 40) < 30  # air around a soft-tissue body


def test_tables_list_every_size_and_a_failed_one():
    seconds = {stage: 1.0 for stage in STAGES}
    peaks = {stage: 0.5 for stage in STAGES}
    sweep = {"machine": {"cpu_count": 2}, "dataset": "501", "configuration": "3d", "device": "cpu",
             "command": "vfscreen_benchmark speed --size_sweep 8x8x8 9x9x9", "created": "now",
             "rows": [{"size": [8, 8, 8], "spacing_mm": [0.8, 0.8, 1.0], "content": "spine", "seconds": seconds,
                       "total_s": 6.0, "post_processing_share": 0.5, "peak_rss_gb": peaks, "peak_rss_case_gb": 0.7,
                       "models_loaded_gb": 0.3, "threads": 2},
                      {"size": [9, 9, 9], "spacing_mm": [0.8, 0.8, 1.0], "content": "spine",
                       "error": "the measuring process died (exit code -9)"}]}
    text = format_size_sweep(sweep)
    assert "8 x 8 x 8" in text and "6.0" in text and "50%" in text and "failed: the measuring process died" in text
    markdown = format_size_sweep(sweep, markdown=True)
    assert "| 8 x 8 x 8 | 1.0 |" in markdown and "| 9 x 9 x 9 | failed" in markdown and "0.70" in markdown
