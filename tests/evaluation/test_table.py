"""evaluation/table.py: the one Markdown table writer and its ``mean ± std`` cell."""

from __future__ import annotations

import math

from calid_lightning.evaluation.table import markdown_table, mean_std, summary_table


def test_mean_std_cell() -> None:
    assert mean_std(21.004, 0.956, ".2f") == "21.00 ± 0.96"
    assert mean_std(0.000194, math.nan, ".3g") == "0.000194"  # a median: no spread


def test_markdown_table_rule_and_rows() -> None:
    table = markdown_table(["method", "n", "PSNR"], [["linear", 3, "21.00 ± 0.96"]], right=[False, True])
    assert table.splitlines() == ["| method | n | PSNR |", "|---|---:|---|", "| linear | 3 | 21.00 ± 0.96 |"]


def test_summary_table_means_and_sample_std_over_subjects() -> None:
    rows = [
        {"method": "lerp", "psnr": 20.0, "seconds_per_volume": 1.0},
        {"method": "lerp", "psnr": 22.0, "seconds_per_volume": 3.0},
        {"method": "truth", "psnr": math.nan, "seconds_per_volume": 0.0},
    ]
    lines = summary_table(rows, ["lerp", "truth", "absent"], columns=["psnr"]).splitlines()
    assert lines[0] == "| method | subjects | psnr | s/volume (median) |"
    assert lines[2:] == ["| lerp | 2 | 21.00 ± 1.41 | 2 |", "| truth | 1 | n/a | 0 |"]
