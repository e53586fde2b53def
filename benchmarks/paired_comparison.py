"""Each method against linear, paired per subject, with 95 % confidence intervals, over one or more sets.

The results table pairs every method with linear on its 3 test subjects; a Dice difference of a few
thousandths is then within the subjects' spread. This reads per-subject CSVs of ``calid evaluate``
(``*_subjects.csv``: the table's ``results/eval/spatial_x4_subjects.csv``, each setting of
``benchmarks/generalisation.sh``) and prints the table's paired reduction for each file and, with ``--pool``,
over the subjects of all files together (a subject pairs only with the reference row of its own file, so the
same subject name in two files is two subjects). Pool only sets of one distribution that no setting was chosen
on: the test split and the generalisation benchmark's ``id`` setting, not the validation split.

    .venv/bin/python benchmarks/paired_comparison.py results/eval/spatial_x4_subjects.csv \\
        results/generalisation/id_subjects.csv --pool
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Sequence
from pathlib import Path

from calid_lightning.reproduce.table import (
    PAIRED_FIELDS,
    REFERENCE,
    SLICE_COLUMNS,
    paired,
    paired_caption,
    paired_markdown,
)

COLUMNS = [c for c in SLICE_COLUMNS if c.field in PAIRED_FIELDS["slices"]]
"""The paired columns of the results table's slice sections."""


def read_rows(path: Path, pairing: str, reference: str = REFERENCE) -> list[dict[str, str]]:
    """The subject rows of ``path``, tagged with ``pairing`` so they pair only among themselves.

    Raises ``SystemExit`` with a one-line message when the file is missing or has no ``reference`` rows.
    """
    if not path.is_file():
        raise SystemExit(f"paired_comparison: {path}: no such file (a calid evaluate *_subjects.csv)")
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not any(r.get("method") == reference for r in rows):
        hint = f"--methods ...,{reference}"
        raise SystemExit(f"paired_comparison: {path}: no '{reference}' rows to pair with ({hint})")
    return [r | {"pairing": f"{pairing}:{r.get('factor', '')}"} for r in rows]


def report(paths: Sequence[Path], pool: bool, reference: str = REFERENCE) -> str:
    """Markdown: a paired table per file and, with ``pool``, one over the subjects of all files."""
    sets = [read_rows(path, str(index), reference) for index, path in enumerate(paths)]
    parts = []
    for path, rows in zip(paths, sets, strict=True):
        parts += [f"## {path}", "", paired_markdown(paired(rows, COLUMNS, reference), COLUMNS, reference), ""]
    if pool:
        pooled = [row for rows in sets for row in rows]
        subjects = len({(r["pairing"], r["subject"]) for r in pooled if r["method"] == reference})
        parts += [
            f"## Pooled: {subjects} subjects of {len(paths)} files",
            "",
            paired_markdown(paired(pooled, COLUMNS, reference), COLUMNS, reference),
            "",
        ]
    parts.append(paired_caption(reference))
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", nargs="+", type=Path, help="per-subject CSVs (*_subjects.csv)")
    parser.add_argument("--pool", action="store_true", help="also one table over the subjects of all files")
    parser.add_argument("--reference", default=REFERENCE, help=f"paired with (default {REFERENCE})")
    args = parser.parse_args(argv)
    print(report(args.csv, args.pool, args.reference))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
