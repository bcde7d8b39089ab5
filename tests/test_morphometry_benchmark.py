"""vfscreen_benchmark morphometry on a tiny generated phantom: three mask qualities, heights refined on the CT."""
import os
from pathlib import Path

from vfscreen.evaluation.morphometry_benchmark import format_morphometry, run_morphometry_benchmark
from vfscreen.phantom import generator


def test_three_mask_qualities_with_ct_edges():
    generator.generate_dataset(Path(os.environ["nnUNet_raw"]), seed=3, num_cases=1, num_test_cases=0,
                               preset="demo", num_processes=1, dataset_id=598, progress=False)
    result = run_morphometry_benchmark("598", num_cases=1, coarse_mm=3.0)
    qualities = result["qualities"]
    assert list(qualities) == ["ground truth", "ground truth at 3 mm", "3 mm mask on the native CT"]
    for name, values in qualities.items():
        assert values["measured"] >= values["of"] - 1 > 0, name
        assert values["edges_from_ct"] >= 0.5, name
        assert set(values["height_mae_by_name_mm"]) == {"anterior", "middle", "posterior"}
    assert qualities["ground truth"]["height_mae_mm"] < 1.5
    table = format_morphometry(result, markdown=True)
    assert table.count("\n| ") == 4  # header + three rows
