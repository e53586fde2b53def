"""Markdown tables of evaluation results: one writer, one ``mean ± std`` style.

:func:`markdown_table` writes the rows, :func:`mean_std` a cell; :func:`summary_table` is the summary that
``calid evaluate`` and ``calid evaluate-cine`` print (the results table of ``calid reproduce`` has the same
cell style).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np

from calid_lightning.evaluation.heldout import SEGMENTATION_FIELDS
from calid_lightning.evaluation.metrics import METRICS

TABLE_SEGMENTATION = (*SEGMENTATION_FIELDS, "abs_ef_error")


def mean_std(value: float, std: float, spec: str) -> str:
    """``"<value> ± <std>"`` formatted with ``spec`` (e.g. ``".2f"``); just the value where ``std`` is NaN."""
    return format(value, spec) + ("" if math.isnan(std) else f" ± {format(std, spec)}")


def markdown_table(
    header: Sequence[str], rows: Sequence[Sequence[object]], right: Sequence[bool] = ()
) -> str:
    """A Markdown table: ``header``, its rule (``---:`` for the columns ``right`` marks) and ``rows``."""
    right = list(right) + [False] * (len(header) - len(right))
    lines = ["| " + " | ".join(header) + " |", "|" + "".join("---:|" if r else "---|" for r in right)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def summary_table(
    rows: list[dict[str, Any]], methods: Sequence[str], columns: Sequence[str] | None = None
) -> str:
    """Markdown table: per method, mean ± std over subjects of each metric and median seconds per volume.

    By default the image metrics, plus per-class Dice / HD95 (mm) and ``abs_ef_error`` (percentage points)
    when the rows carry them (``--segmenter``); ``columns`` names other ones (``calid evaluate-cine``).
    ``n/a`` where a method has no finite value (``truth``'s PSNR).
    """
    if columns is None:
        columns = [*METRICS, *(c for c in TABLE_SEGMENTATION if rows and c in rows[0])]
    table = []
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            continue
        cells = []
        for metric in columns:
            values = np.array([r[metric] for r in mine], dtype=np.float64)
            values = values[~np.isnan(values)]
            if values.size == 0:
                cells.append("n/a")
                continue
            std = values.std(ddof=1) if values.size > 1 else 0.0
            digits = 4 if metric == "temporal_error" else 3 if metric.startswith(("ssim", "dice")) else 2
            cells.append(mean_std(values.mean(), std, f".{digits}f"))
        seconds = statistics.median(r["seconds_per_volume"] for r in mine)
        table.append([method, len(mine), *cells, f"{seconds:.3g}"])
    return markdown_table(["method", "subjects", *columns, "s/volume (median)"], table)
