"""Evaluation records: per-slice records reduced to one row per subject and method, written as CSV files.

``calid evaluate`` and ``calid evaluate-cine`` both write the per-slice CSV (``--out``) and the per-subject
CSV beside it (:func:`subjects_path`), which ``calid reproduce``'s table reads.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from calid_lightning.io_safety import atomic_path


def nan_mean(values: Sequence[float] | np.ndarray) -> float:
    """The mean of the values that are not NaN; NaN (no warning) when every value is NaN or there are none."""
    array = np.asarray(values, dtype=np.float64)
    return float("nan") if np.isnan(array).all() else float(np.nanmean(array))


def subject_row(
    records: Sequence[Mapping[str, Any]],
    keys: Sequence[str],
    metrics: Sequence[str],
    seconds_per_volume: float,
    extra: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """One subject's per-slice ``records`` of one method reduced to a row.

    The row holds ``keys`` (from the first record), ``slices`` (the record count), the NaN-aware mean of
    each of ``metrics`` (NaN when every value is: the heart metrics of slices without a heart),
    ``seconds_per_volume`` and ``extra`` (e.g. per-subject segmentation summaries).
    """
    row = {k: records[0][k] for k in keys} | {"slices": len(records)}
    for metric in metrics:
        row[metric] = nan_mean([r[metric] for r in records])
    return row | {"seconds_per_volume": seconds_per_volume} | dict(extra or {})


def write_csv(path: Path, fields: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
    """``rows`` as a CSV with header ``fields``, written atomically (a reader never sees half a file)."""
    with atomic_path(path) as temp, temp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(fields))
        writer.writeheader()
        writer.writerows(rows)


def subjects_path(out: Path) -> Path:
    """``results/x.csv`` -> ``results/x_subjects.csv``: the per-subject CSV beside the per-slice one."""
    return out.with_name(f"{out.stem}_subjects{out.suffix or '.csv'}")
