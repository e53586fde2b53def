"""The results table: per-subject evaluation CSVs reduced to mean +- std per method, as Markdown and CSV.

Reads the ``*_subjects.csv`` files that ``calid evaluate`` (``spatial_x<k>``, ``pixel_x<k>``, the injection
ablation's ``concat_x<k>``, the DDIM-steps ablation's ``steps<n>_x<k>``) and ``calid evaluate-cine``
(``cine_x<k>`` and ``cine_inflated_x<k>``, one section) write. Every metric is the
mean +- sample std over test subjects of the subject means; seconds per volume is the median over subjects.
The best method per column (the ``truth`` ceilings excluded) is in bold. Columns a CSV lacks (no segmenter
given) show ``-``.

With 3 test subjects a mean +- std says little about whether one method beats another: the subjects differ
far more from each other than the methods do. So each section that scores ``linear`` also gets a paired
table (:func:`paired`): per method, the mean over subjects of ``method - linear`` on the same subject, same
slices, the half-width of its 95 % confidence interval (Student t over subjects: with 3 subjects a mean
difference must be about 2.5 of its subjects' spread before the interval leaves zero), and on how many
subjects the method is the better of the two.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import re
import statistics
from collections.abc import Sequence
from pathlib import Path

from scipy import stats

from calid_lightning.evaluation.table import markdown_table, mean_std
from calid_lightning.inference.methods import METHODS, split_variant, title_of, variant_name
from calid_lightning.io_safety import atomic_path, atomic_write_text


@dataclasses.dataclass(frozen=True)
class Column:
    """A table column: CSV field, header, whether higher is better (or the ``target`` value that is best),
    digits (decimals, or significant digits for ``style="g"``), median instead of mean."""

    field: str
    header: str
    higher_is_better: bool = True
    digits: int = 2
    median: bool = False
    style: str = "f"
    target: float | None = None


SLICE_COLUMNS = (
    Column("psnr", "PSNR dB"),
    Column("ssim", "SSIM", digits=3),
    Column("psnr_heart", "PSNR heart"),
    Column("ssim_heart", "SSIM heart", digits=3),
    Column("hf_ratio", "HF energy / truth", target=1.0),
    Column("dice_lv", "Dice LV", digits=3),
    Column("dice_myo", "Dice myo", digits=3),
    Column("dice3d_myo", "Dice myo 3D", digits=3),
    Column("dice_rv", "Dice RV", digits=3),
    Column("hd95_mean", "HD95 mm", higher_is_better=False, digits=1),
    Column("abs_ef_error", "abs EF err pp", higher_is_better=False, digits=1),
    Column("seconds_per_volume", "s/volume", higher_is_better=False, digits=3, median=True, style="g"),
)
CINE_COLUMNS = (
    Column("psnr", "PSNR dB"),
    Column("ssim", "SSIM", digits=3),
    Column("psnr_heart", "PSNR heart"),
    Column("ssim_heart", "SSIM heart", digits=3),
    Column("temporal_error", "temporal err", higher_is_better=False, digits=4),
    Column("seconds_per_volume", "s/3D+t volume", higher_is_better=False, digits=3, median=True, style="g"),
)
METHOD_ORDER = tuple(METHODS)
"""Rows in the order of the method registry (ceilings last, never bold)."""
CEILINGS = tuple(name for name, method in METHODS.items() if method.ceiling)
REFERENCE = "linear"
"""The method every other one is paired with: image-space linear interpolation in z."""
PAIRED_FIELDS = {
    "slices": ("psnr", "ssim", "psnr_heart", "ssim_heart", "dice_myo", "dice3d_myo", "hd95_mean"),
    "cine": ("psnr", "ssim", "ssim_heart", "temporal_error"),
}
"""The columns of each section's paired table."""
FILE_PATTERN = re.compile(r"^(spatial|pixel|concat|cine|cine_inflated|steps(\d+))_x(\d+)_subjects\.csv$")
CONCAT = "input concatenation only"
"""The variant of the injection ablation's rows (``concat_x<k>``: CaLID trained without tau_theta2)."""


def _float(value: str | None) -> float:
    try:
        return float(value) if value not in (None, "") else math.nan
    except ValueError:
        return math.nan


def read_subject_rows(eval_dir: Path) -> dict[tuple[str, int], list[dict[str, str]]]:
    """Per-subject rows by ``(section, factor)``: ``slices`` (spatial + pixel), ``cine`` or ``steps``."""
    groups: dict[tuple[str, int], list[dict[str, str]]] = {}
    for path in sorted(Path(eval_dir).glob("*_subjects.csv")):
        match = FILE_PATTERN.match(path.name)
        if not match:
            continue
        kind, steps, factor = match.group(1), match.group(2), int(match.group(3))
        sections = {
            "cine": "cine",
            "cine_inflated": "cine",
            "spatial": "slices",
            "pixel": "slices",
            "concat": "slices",
        }
        section = sections.get(kind, "steps")
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        if steps:  # the DDIM-steps ablation: one CaLID row per step count
            rows = [r | {"method": variant_name("calid", f"{steps} DDIM steps")} for r in rows]
        if kind == "concat":  # the injection ablation: its methods' rows beside the full model's
            rows = [r | {"method": variant_name(r["method"], CONCAT)} for r in rows]
        # Rows pair only with rows scored on the same slices: the pixel file scores other frames; the
        # ablation's file scores the spatial file's slices.
        pairing = {"cine_inflated": "cine", "concat": "spatial"}.get(kind, kind)
        rows = [r | {"pairing": pairing} for r in rows]
        groups.setdefault((section, factor), []).extend(rows)
    return groups


def summarise(rows: Sequence[dict[str, str]], columns: Sequence[Column]) -> list[dict[str, object]]:
    """One summary per method: subjects, and ``<field>`` (mean or median), ``<field>_std`` per column."""
    methods = sorted({r["method"] for r in rows}, key=lambda m: (m in CEILINGS, *_rank(m)))
    summaries = []
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        summary: dict[str, object] = {"method": method, "subjects": len({r["subject"] for r in mine})}
        for column in columns:
            values = [v for v in (_float(r.get(column.field)) for r in mine) if not math.isnan(v)]
            if not values:
                summary[column.field], summary[f"{column.field}_std"] = math.nan, math.nan
            elif column.median:
                summary[column.field], summary[f"{column.field}_std"] = statistics.median(values), math.nan
            else:
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                summary[column.field], summary[f"{column.field}_std"] = statistics.fmean(values), std
        summaries.append(summary)
    return summaries


def ci95_half_width(values: Sequence[float]) -> float:
    """Half-width of the 95 % confidence interval of the mean of ``values`` (Student t, n - 1 degrees of
    freedom): the interval is ``mean +- half-width``. NaN for fewer than two values."""
    if len(values) < 2:
        return math.nan
    return float(stats.t.ppf(0.975, len(values) - 1)) * statistics.stdev(values) / math.sqrt(len(values))


def paired(
    rows: Sequence[dict[str, str]], columns: Sequence[Column], reference: str = REFERENCE
) -> list[dict[str, object]]:
    """Per method, each column's paired difference with ``reference`` over the subjects both scored.

    ``<field>_vs_<reference>`` is the mean over subjects of ``method - reference`` on the same subject and
    slices (rows of one ``pairing``), ``<field>_ci95`` the half-width of its 95 % confidence interval
    (:func:`ci95_half_width`); ``<field>_better`` counts the subjects where the method is better (higher,
    or lower where ``higher_is_better`` is False; a tie is not better) and ``<field>_pairs`` the subjects
    compared. Methods with no row beside a reference row are left out, as are the ceilings.
    """
    ref = {(r["pairing"], r["subject"]): r for r in rows if r["method"] == reference}
    methods = sorted({r["method"] for r in rows} - {reference, *CEILINGS}, key=_rank)
    out = []
    for method in methods:
        keys = [(r, (r["pairing"], r["subject"])) for r in rows if r["method"] == method]
        mine = [(r, ref[key]) for r, key in keys if key in ref]
        if not mine:
            continue
        summary: dict[str, object] = {"method": method}
        for column in columns:
            diffs = [_float(r.get(column.field)) - _float(base.get(column.field)) for r, base in mine]
            diffs = [d for d in diffs if not math.isnan(d)]
            sign = 1 if column.higher_is_better else -1
            summary[f"{column.field}_vs_{reference}"] = statistics.fmean(diffs) if diffs else math.nan
            summary[f"{column.field}_ci95"] = ci95_half_width(diffs)
            summary[f"{column.field}_better"] = sum(sign * d > 0 for d in diffs)
            summary[f"{column.field}_pairs"] = len(diffs)
        out.append(summary)
    return out


def paired_markdown(
    summaries: Sequence[dict[str, object]], columns: Sequence[Column], reference: str = REFERENCE
) -> str:
    """A Markdown table of :func:`paired` output: ``+0.52 ± 0.30 (3/3)`` = mean difference ± the half-width
    of its 95 % confidence interval (subjects better); no ``±`` part for a single subject."""
    rows = []
    for summary in summaries:
        cells = []
        for column in columns:
            diff = float(summary[f"{column.field}_vs_{reference}"])
            better, pairs = summary[f"{column.field}_better"], summary[f"{column.field}_pairs"]
            half = float(summary[f"{column.field}_ci95"])
            interval = "" if math.isnan(half) else f" ± {half:.{column.digits}f}"
            text = f"{diff:+.{column.digits}f}{interval} ({better}/{pairs})"
            cells.append("-" if math.isnan(diff) else text)
        rows.append([title_of(str(summary["method"])), *cells])
    header = ["method", *(f"{c.header} - {reference}" for c in columns)]
    return markdown_table(header, rows, right=[False] + [True] * len(columns))


def paired_caption(reference: str = REFERENCE) -> str:
    """The sentence that reads a :func:`paired_markdown` table."""
    return (
        f"Paired with {title_of(reference)}: the mean over subjects of method - {reference} on the same "
        "subject and slices ± the half-width of its 95 % confidence interval (Student t over subjects), and "
        "(subjects where the method is better / subjects)."
    )


def _rank(method: str) -> tuple[int, int, str]:
    """Registry order; an ablation's variant (``"calid_mean, <variant>"``) right after its method."""
    base, variant = split_variant(method)
    steps = re.fullmatch(r"(\d+) DDIM steps", variant)
    position = METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER)
    return (position, int(steps.group(1)) if steps else 0, method)


def markdown(summaries: Sequence[dict[str, object]], columns: Sequence[Column]) -> str:
    """A Markdown table of :func:`summarise` output, best value per column in bold (ceilings excluded)."""
    best: dict[str, float] = {}
    for column in columns:
        values = [
            float(s[column.field])
            for s in summaries
            if s["method"] not in CEILINGS and not math.isnan(float(s[column.field]))
        ]
        if len(values) > 1 and column.target is not None:
            best[column.field] = min(values, key=lambda v, t=column.target: abs(v - t))
        elif len(values) > 1:
            best[column.field] = max(values) if column.higher_is_better else min(values)
    rows = []
    for summary in summaries:
        cells = []
        for column in columns:
            value, std = float(summary[column.field]), float(summary[f"{column.field}_std"])
            if math.isnan(value):
                cells.append("-")
                continue
            text = mean_std(value, std, f".{column.digits}{column.style}")
            is_best = summary["method"] not in CEILINGS and best.get(column.field) == value
            cells.append(f"**{text}**" if is_best else text)
        name = title_of(str(summary["method"]))
        rows.append([name, summary["subjects"], *cells])
    header = ["method", "n", *(c.header for c in columns)]
    return markdown_table(header, rows, right=[False] + [True] * (len(columns) + 1))


def build_table(eval_dir: Path, title: str, notes: Sequence[str] = ()) -> tuple[str, list[dict[str, object]]]:
    """``(markdown, csv rows)`` of every evaluation CSV in ``eval_dir``.

    Raises ``FileNotFoundError`` naming the folder when it holds no evaluation CSV.
    """
    groups = read_subject_rows(eval_dir)
    if not groups:
        raise FileNotFoundError(f"{eval_dir}: no spatial_x*/pixel_x*/cine_x* _subjects.csv to tabulate")
    parts, csv_rows = [f"# {title}", ""], []
    order = {"slices": 0, "steps": 1, "cine": 2}
    for (section, factor), rows in sorted(groups.items(), key=lambda item: (order[item[0][0]], item[0][1])):
        columns = CINE_COLUMNS if section == "cine" else SLICE_COLUMNS
        summaries = summarise(rows, columns)
        heading = {
            "slices": f"Gap factor x{factor}",
            "steps": f"Ablation: DDIM steps of CaLID, gap factor x{factor}",
            "cine": f"2D+T cines, gap factor x{factor}",
        }[section]
        parts += [f"## {heading}", "", markdown(summaries, columns), ""]
        pairs = {}
        if section in PAIRED_FIELDS:
            paired_columns = [c for c in columns if c.field in PAIRED_FIELDS[section]]
            pairs = {p["method"]: p for p in paired(rows, paired_columns)}
        if pairs:
            parts += [
                paired_caption(),
                "",
                paired_markdown(list(pairs.values()), paired_columns),
                "",
            ]
        csv_rows += [
            {"section": section, "factor": factor} | s | pairs.get(s["method"], {}) for s in summaries
        ]
    parts += [f"- {note}" for note in notes]
    return "\n".join(parts).rstrip() + "\n", csv_rows


def write_table(eval_dir: Path, out_dir: Path, title: str, notes: Sequence[str] = ()) -> tuple[Path, Path]:
    """Write ``table.md`` and ``table.csv`` into ``out_dir`` from the CSVs of ``eval_dir``."""
    text, rows = build_table(eval_dir, title, notes)
    out_dir.mkdir(parents=True, exist_ok=True)
    md_path, csv_path = out_dir / "table.md", out_dir / "table.csv"
    atomic_write_text(md_path, text)
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    with atomic_path(csv_path) as temp, temp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return md_path, csv_path
