"""vfscreen_benchmark morphometry on a tiny generated phantom: three mask qualities, heights refined on the CT."""
import os
from pathlib import Path

from vfscreen.evaluation.morphometry_benchmark import format_morphometry, run_morphometry_benchmark
from vfscreen.phantom import generator


def test_three_mask_qualities_with_ct_edges():
    generator.generate_dataset(Path(os.environ["nnUNet_raw"]), seed=3, num_cases=1, num_test_cases=0,
                               preset="demo", num_processes=1, dataset_id=598, progress=False)
    result = run_morphometry_benchmark("598", num_cases=1, coarse_mm=3.0, totalsegmentator=False)
    qualities = result["qualities"]
    assert list(qualities) == ["ground truth", "ground truth at 3 mm", "3 mm mask on the native CT"]
    for name, values in qualities.items():
        assert values["measured"] >= values["of"] - 1 > 0, name
        assert values["edges_from_ct"] >= 0.5, name
        assert set(values["height_mae_by_name_mm"]) == {"anterior", "middle", "posterior"}
    assert qualities["ground truth"]["height_mae_mm"] < 1.5
    table = format_morphometry(result, markdown=True)
    assert table.count("\n| ") == 4  # header + three rows
    assert result["totalsegmentator"] == {"version": None, "why_not": "not run"}


def test_another_tools_heights_are_scored_like_vfscreens():
    """The side-by-side summary of another tool's three heights: exact heights score 0 error and the true grades;
    a vertebra it could not measure (a None height) is counted, not scored."""
    import pandas as pd
    from vfscreen.evaluation.morphometry_benchmark import _summarise_heights
    truth = pd.DataFrame({"anterior_mm": [20.0, 14.0, 20.0], "middle_mm": [20.0, 20.0, 12.0],
                          "posterior_mm": [20.0, 20.0, 20.0], "grade": [0, 2, 3]})
    rows = list(truth.itertuples())
    exact = [(row, {"anterior": row.anterior_mm, "middle": row.middle_mm, "posterior": row.posterior_mm})
             for row in rows]
    summary = _summarise_heights(exact + [(rows[0], {"anterior": None, "middle": 20.0, "posterior": 20.0})])
    assert (summary["measured"], summary["of"]) == (3, 4)
    assert summary["height_mae_mm"] == 0.0 and summary["ratio_mae"] == 0.0 and summary["auroc"] == 1.0
    shifted = _summarise_heights([(row, {k: v + 1.0 for k, v in heights.items()}) for row, heights in exact])
    assert abs(shifted["height_mae_mm"] - 1.0) < 1e-9


def test_real_example_side_by_side_says_what_it_could_not_run(example_ct, example_ct_vertebrae, monkeypatch):
    from vfscreen.evaluation import morphometry_benchmark, totalseg_heights
    monkeypatch.setattr(totalseg_heights, "totalsegmentator_version", lambda: None)
    result = morphometry_benchmark.run_example_comparison(example_ct, example_ct_vertebrae)
    names = [row["name"] for row in result["vertebrae"]]
    assert names == ["T11", "T12", "L1", "L2", "L3", "L4", "L5"]
    measured = [row for row in result["vertebrae"] if row["vfscreen"]]
    assert {row["name"] for row in measured} == {"L1", "L2", "L3", "L4", "L5"}  # T11 / T12 cut by the field
    for row in measured:
        low, high = row["vfscreen"]["ratio_interval"]
        assert low <= row["vfscreen"]["ratio"] <= high and row["totalsegmentator"] is None
    table = morphometry_benchmark.format_example(result, markdown=True)
    assert "not installed" in table and table.count("\n| ") == 1 + len(names)  # header + rows
