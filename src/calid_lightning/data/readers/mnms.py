"""M&Ms layout reader.

``root/Training/Labeled/<CODE>/<CODE>_sa.nii.gz`` (X, Y, Z, T cine) with ``<CODE>_sa_gt.nii.gz`` (4D labels,
filled only at ED and ES), plus ``Validation/``, ``Testing/`` and ``Training/Unlabeled/`` (no labels, read
only with ``include_unlabeled``). ED/ES are 0-based indices from the information CSV (columns
``External code``, ``ED``, ``ES``; ``VendorName``, ``Vendor``, ``Centre``, ``Pathology`` and any other
columns go into ``meta``). Labels are already internal (1 LV, 2 myocardium, 3 RV); a file with the ACDC
order is rejected by checking that the myocardium surrounds class 1.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from calid_lightning.data.readers.nifti import (
    check_frame,
    check_lv_inside_myocardium,
    find_nifti,
    load_image,
    load_labels,
    nifti_stem,
    require_nifti,
    subject_from_cine,
)
from calid_lightning.data.subject import CardiacSubject, DataError

CODE_COLUMN = "External code"
REQUIRED_COLUMNS = (CODE_COLUMN, "ED", "ES")


def find_info_csv(root: Path, levels: int = 2) -> Path | None:
    """The first ``*.csv`` with an ``External code`` column in ``root`` or up to ``levels`` parents."""
    for folder in [root, *list(root.resolve().parents)[:levels]]:
        for candidate in sorted(folder.glob("*.csv")):
            with candidate.open(newline="", errors="replace") as handle:
                header = next(csv.reader(handle), [])
            if CODE_COLUMN in (name.strip() for name in header):
                return candidate
    return None


def read_info_csv(path: Path) -> dict[str, dict[str, str]]:
    """Rows of the M&Ms information CSV keyed by external code (header names stripped of spaces)."""
    if not path.is_file():
        raise DataError(path, "M&Ms information CSV not found")
    with path.open(newline="", errors="replace") as handle:
        reader = csv.DictReader(handle)
        fields = [name.strip() for name in reader.fieldnames or []]
        missing = [name for name in REQUIRED_COLUMNS if name not in fields]
        if missing:
            raise DataError(path, f"missing column(s) {missing}; found {fields}")
        rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    return {row[CODE_COLUMN]: row for row in rows if row[CODE_COLUMN]}


def _row_int(row: dict[str, str], key: str, path: Path, code: str) -> int:
    try:
        return int(row[key])
    except ValueError:
        raise DataError(path, f"row {code!r}: {key} must be an integer, got {row[key]!r}") from None


class MnmsReader:
    """Lazy reader of an M&Ms ``OpenDataset`` folder."""

    def __init__(
        self,
        root: str | Path,
        info_csv: str | Path | None = None,
        include_unlabeled: bool = False,
        lenient: bool = False,
    ) -> None:
        self.root = Path(root)
        self.include_unlabeled = include_unlabeled
        self.lenient = lenient
        self._info_csv = Path(info_csv) if info_csv is not None else None
        self._rows: dict[str, dict[str, str]] | None = None
        self._dirs: dict[str, Path] | None = None

    @property
    def info_csv(self) -> Path:
        """The information CSV: the ``info_csv`` option, else the first matching CSV in root or parents."""
        if self._info_csv is None:
            found = find_info_csv(self.root)
            if found is None:
                raise DataError(
                    self.root, f"no M&Ms information CSV (with an {CODE_COLUMN!r} column); pass info_csv"
                )
            self._info_csv = found
        return self._info_csv

    def _subject_dirs(self) -> dict[str, Path]:
        if self._dirs is None:
            dirs: dict[str, Path] = {}
            for image in sorted(self.root.rglob("*_sa.nii*")):
                code = nifti_stem(image)[: -len("_sa")]
                if image.parent.name != code:
                    continue
                if "Unlabeled" in image.relative_to(self.root).parts and not self.include_unlabeled:
                    continue
                dirs[code] = image.parent
            self._dirs = dirs
        return self._dirs

    def list_subjects(self) -> list[str]:
        """Sorted external codes of the subject folders found; no image is opened."""
        return sorted(self._subject_dirs())

    def read(self, subject_id: str) -> CardiacSubject:
        """Load one subject: cine, its ED/ES from the CSV and the ED/ES labels when the gt file exists."""
        directory = self._subject_dirs().get(subject_id)
        if directory is None:
            raise DataError(self.root / subject_id, "no such M&Ms subject folder (with <CODE>_sa.nii.gz)")
        cine = load_image(require_nifti(directory, f"{subject_id}_sa"), ndims=(4,))
        num_frames = cine.array.shape[3]
        if self._rows is None:
            self._rows = read_info_csv(self.info_csv)
        row = self._rows.get(subject_id)
        unlabeled = "Unlabeled" in directory.relative_to(self.root).parts
        if row is None and not unlabeled:
            raise DataError(self.info_csv, f"no row for {CODE_COLUMN} {subject_id!r}")
        meta: dict[str, Any] = {
            "dataset": "mnms",
            "split": "/".join(directory.relative_to(self.root).parts[:-1]),
        }
        if row is None:
            ed = es = 0
            meta["ed_es_known"] = False
        else:
            ed = check_frame(
                _row_int(row, "ED", self.info_csv, subject_id), num_frames, self.info_csv, "ED", False
            )
            es = check_frame(
                _row_int(row, "ES", self.info_csv, subject_id), num_frames, self.info_csv, "ES", False
            )
            meta.update({k: v for k, v in row.items() if k not in REQUIRED_COLUMNS})
        labels, labelled = None, ()
        gt_path = find_nifti(directory, f"{subject_id}_sa_gt")
        if gt_path is not None and row is not None:
            labels = load_labels(gt_path, cine.array.shape)
            labelled = tuple(dict.fromkeys((ed, es)))
            check_lv_inside_myocardium(labels, labelled, gt_path)
        return subject_from_cine(subject_id, cine, ed, es, directory, labels, labelled, meta)
