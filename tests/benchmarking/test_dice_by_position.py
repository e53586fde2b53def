"""benchmarks/dice_by_position.py: bands of the z extent, the table's reduction, pairing with linear."""

import csv
from pathlib import Path

import pytest

from benchmark_scripts import load_benchmark

bench = load_benchmark("dice_by_position")
FIELDS = ("subject", "method", "frame", "z", "dice_myo", "present_myo")


def _rows(spec: dict[str, dict[str, list[tuple[int, float, int]]]]) -> list[dict[str, str]]:
    """subject -> method -> [(z, dice, present)] as the per-slice CSV's string rows (frame 0)."""
    return [
        {"subject": s, "method": m, "frame": "0", "z": str(z), "dice_myo": str(d), "present_myo": f"{p:.1f}"}
        for s, methods in spec.items()
        for m, slices in methods.items()
        for z, d, p in slices
    ]


# z 0 holds no myocardium (a false positive scores 0 there); z 1..11 do: fifths at 1-2 and 10-11.
LINEAR = [(0, 0.0, 0), *((z, 0.8, 1) for z in range(1, 12))]
CALID = [(0, 0.0, 0), (1, 0.6, 1), *((z, 0.9, 1) for z in range(2, 11)), (11, 0.3, 1)]


def test_band_edges() -> None:
    assert [bench.band_of(z, 1, 11) for z in (1, 2, 3, 9, 10, 11)] == [
        "first fifth",
        "first fifth",
        "middle",
        "middle",
        "last fifth",
        "last fifth",
    ]
    assert bench.band_of(4, 4, 4) == "middle"


def test_bands_leave_out_slices_without_the_class_and_pair_with_linear() -> None:
    rows = _rows({"a": {"linear": LINEAR, "calid": CALID}, "b": {"linear": LINEAR, "calid": LINEAR}})
    scores = bench.band_scores(rows, "myo")
    assert scores["calid"]["first fifth"] == pytest.approx({"a": 0.75, "b": 0.8})  # z 1, 2: (0.6 + 0.9) / 2
    assert scores["calid"]["last fifth"]["a"] == pytest.approx(0.6)  # z 10, 11: (0.9 + 0.3) / 2
    assert scores["calid"]["middle"]["a"] == pytest.approx(0.9)
    assert scores["calid"]["all"]["a"] == pytest.approx((0.6 + 9 * 0.9 + 0.3) / 11), "z 0 is not counted"
    assert scores["linear"]["all"]["a"] == pytest.approx(0.8)
    line = dict(zip(("method", *bench.BANDS, "subjects"), bench.summary(scores)[1], strict=True))
    assert line["method"] == "calid" and line["subjects"] == "2"
    assert line["middle"] == "0.850 (+0.050, 1/2)"  # subject a +0.1, subject b ties
    assert line["last fifth"] == "0.700 (-0.100, 0/2)"
    assert bench.slice_counts(rows, "myo") == {"first fifth": 4, "middle": 14, "last fifth": 4, "all": 22}


def test_a_csv_without_presence_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "old.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS[:5])
        writer.writeheader()
        writer.writerow({k: v for k, v in _rows({"a": {"linear": LINEAR}})[0].items() if k in FIELDS[:5]})
    with pytest.raises(SystemExit, match=r"old\.csv: no column 'present_myo'"):
        bench.main([str(path)])


def test_prints_one_table_per_class(tmp_path: Path, capsys) -> None:
    path = tmp_path / "x4.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(_rows({"a": {"linear": LINEAR, "calid": CALID}}))
    assert bench.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "| calid | 0.750 (-0.050, 0/1) | 0.900 (+0.100, 1/1) | 0.600 (-0.200, 0/1) |" in out
