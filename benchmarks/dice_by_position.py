"""Where along the long axis each method's myocardium Dice is won or lost (from a ``calid evaluate`` CSV).

The table's Dice myo is one number per method: per-slice Dice averaged over the slices whose true label
holds myocardium (``present_myo`` in the per-slice CSV), per subject, then over subjects. This splits those
slices into bands of the myocardium's extent in z (per subject and frame: the first fifth, the middle three
fifths, the last fifth of the held-out slices holding it) and gives each band's Dice in the same reduction,
paired with linear on the same subjects; the column "all" is the table's number. The row ``truth`` (the
segmenter on the true slices) shows where the segmenter itself is reliable. On the phantom z runs from apex
to base, so the last fifth is the basal end, where the ring is cut by the valve plane.

    .venv/bin/python benchmarks/dice_by_position.py results/eval/spatial_x4.csv [--classes myo lv rv]
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

BANDS = ("first fifth", "middle", "last fifth", "all")
"""The bands of the myocardium's z extent, and all its slices (the table's number)."""

REFERENCE = "linear"
"""The method every band is paired with."""


def band_of(z: int, lowest: int, highest: int) -> str:
    """The band of slice ``z`` in an extent ``lowest..highest``: the first or last fifth, else the middle."""
    if highest == lowest:
        return "middle"
    position = (z - lowest) / (highest - lowest)
    if position < 0.2:
        return "first fifth"
    return "last fifth" if position > 0.8 else "middle"


def _holds(row: dict[str, str], label: str) -> bool:
    """The slice's true label holds the class (``present_<label>`` is 1)."""
    return float(row[f"present_{label}"]) == 1.0


def banded(rows: Sequence[dict[str, str]], label: str) -> list[tuple[dict[str, str], str]]:
    """The rows whose true label holds class ``label``, each with its band of the class's z extent in its
    subject and frame (the presence is the truth's, so every method's rows give the same extent)."""
    held = [row for row in rows if _holds(row, label)]
    extent: dict[tuple[str, str], list[int]] = defaultdict(list)
    for row in held:
        extent[(row["subject"], row["frame"])].append(int(row["z"]))
    bands = []
    for row in held:
        zs = extent[(row["subject"], row["frame"])]
        bands.append((row, band_of(int(row["z"]), min(zs), max(zs))))
    return bands


def band_scores(rows: Sequence[dict[str, str]], label: str) -> dict[str, dict[str, dict[str, float]]]:
    """method -> band -> subject -> the subject's mean Dice of class ``label`` over its slices in the band
    whose true label holds the class (the others count neither in the mean nor in the extent)."""
    values: dict[str, dict[str, dict[str, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    for row, band in banded(rows, label):
        for key in (band, "all"):
            values[row["method"]][key][row["subject"]].append(float(row[f"dice_{label}"]))
    return {
        method: {
            band: {subject: float(np.mean(v)) for subject, v in subjects.items()}
            for band, subjects in bands.items()
        }
        for method, bands in values.items()
    }


def summary(scores: dict[str, dict[str, dict[str, float]]]) -> list[list[str]]:
    """Markdown rows: per method and band, the mean over subjects and, beside ``linear``, the paired
    difference with the subjects where the method is better."""
    reference = scores.get(REFERENCE, {})
    lines = []
    for method, bands in scores.items():
        cells = [method]
        for band in BANDS:
            subjects = bands.get(band, {})
            if not subjects:
                cells.append("-")
                continue
            cell = f"{np.mean(list(subjects.values())):.3f}"
            shared = sorted(set(subjects) & set(reference.get(band, {})))
            if method != REFERENCE and shared:
                diffs = [subjects[s] - reference[band][s] for s in shared]
                wins = sum(d > 0 for d in diffs)
                cell += f" ({np.mean(diffs):+.3f}, {wins}/{len(shared)})"
            cells.append(cell)
        cells.append(str(len(bands.get("all", {}))))
        lines.append(cells)
    return lines


def slice_counts(rows: Sequence[dict[str, str]], label: str) -> dict[str, int]:
    """Slices per band (of one method: every method scores the same slices)."""
    first = rows[0]["method"]
    counts = dict.fromkeys(BANDS, 0)
    for row, band in banded(rows, label):
        if row["method"] == first:
            counts[band] += 1
            counts["all"] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", nargs="+", help="per-slice CSVs of calid evaluate --segmenter (one factor)")
    parser.add_argument("--classes", nargs="+", default=["myo"], choices=("lv", "myo", "rv"))
    args = parser.parse_args(argv)
    rows: list[dict[str, str]] = []
    for path in args.csv:
        with Path(path).open(newline="") as handle:
            found = list(csv.DictReader(handle))
        if not found or "present_myo" not in found[0]:
            raise SystemExit(
                f"{path}: no column 'present_myo': a per-slice CSV of calid evaluate --segmenter is needed "
                "(written by this version: older ones lack the column)"
            )
        rows += found
    for label in args.classes:
        print(f"\nDice {label} per band of the z extent; slices per band: {slice_counts(rows, label)}")
        print("| method | " + " | ".join(BANDS) + " | subjects |")
        print("|---|" + "---:|" * (len(BANDS) + 1))
        for cells in summary(band_scores(rows, label)):
            print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
