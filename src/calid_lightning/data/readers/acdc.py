"""ACDC layout reader (also the embedded phantom, which writes ACDC layout plus dense ground truth).

``root/patient001/Info.cfg`` (``ED``, ``ES`` 1-based, ``Group``, ``Height``, ``Weight``, ``NbFrame``),
``patient001_4d.nii.gz`` (X, Y, Z, T) and ``patient001_frameYY[_gt].nii.gz`` for ED and ES. ``root``
may also be the ``database`` folder with ``training/`` and ``testing/`` inside. Labels are remapped from ACDC
(1 RV, 2 myocardium, 3 LV) to the internal convention. Phantom extras, read when present:
``patient001_dense_4d.nii.gz``, ``patient001_dense_gt_4d.nii.gz`` (ACDC labels, every frame) and
``patient001_params.json`` (merged into ``meta``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from calid_lightning.data.readers.nifti import (
    ACDC_TO_INTERNAL,
    check_frame,
    check_lv_inside_myocardium,
    find_nifti,
    load_image,
    load_labels,
    require_nifti,
    subject_from_cine,
)
from calid_lightning.data.subject import CardiacSubject, DataError

SPLIT_FOLDERS = ("training", "testing")
ACDC_CONVENTION = "ACDC: 1 RV cavity, 2 myocardium, 3 LV cavity"


def parse_info_cfg(path: Path) -> dict[str, str]:
    """Read the ``key: value`` lines of an ACDC ``Info.cfg``; a missing or malformed file is a DataError."""
    if not path.is_file():
        raise DataError(path, "Info.cfg not found (needs ED and ES lines, 1-based frame numbers)")
    info: dict[str, str] = {}
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep or not key.strip():
            raise DataError(path, f"line {number} is not 'key: value': {line.strip()!r}")
        info[key.strip()] = value.strip()
    return info


def info_int(info: dict[str, str], key: str, path: Path) -> int:
    """An integer field of Info.cfg, with an error naming the key when it is missing or not an integer."""
    if key not in info:
        raise DataError(path, f"missing key {key!r} (expected a line '{key}: <integer>')")
    try:
        return int(info[key])
    except ValueError:
        raise DataError(path, f"{key} must be an integer, got {info[key]!r}") from None


def _info_float(info: dict[str, str], key: str) -> float | None:
    try:
        return float(info[key])
    except (KeyError, ValueError):
        return None


class AcdcReader:
    """Lazy reader of an ACDC-layout folder; ``dataset`` tags ``meta`` ("acdc" or "phantom")."""

    def __init__(self, root: str | Path, dataset: str = "acdc", lenient: bool = False) -> None:
        self.root = Path(root)
        self.dataset = dataset
        self.lenient = lenient
        self._dirs: dict[str, Path] | None = None

    def _subject_dirs(self) -> dict[str, Path]:
        if self._dirs is None:
            parents = [self.root] + [
                self.root / split for split in SPLIT_FOLDERS if (self.root / split).is_dir()
            ]
            self._dirs = {
                d.name: d
                for parent in parents
                for d in parent.iterdir()
                if d.is_dir() and ((d / "Info.cfg").exists() or find_nifti(d, f"{d.name}_4d") is not None)
            }
        return self._dirs

    def list_subjects(self) -> list[str]:
        """Sorted subject folder names (``patient001``, ...); no image is opened."""
        return sorted(self._subject_dirs())

    def read(self, subject_id: str) -> CardiacSubject:
        """Load one subject: cine, ED/ES labels remapped to internal, phantom extras when present."""
        directory = self._subject_dirs().get(subject_id)
        if directory is None:
            raise DataError(
                self.root / subject_id, "no such ACDC subject folder (with Info.cfg or *_4d.nii.gz)"
            )
        info_path = directory / "Info.cfg"
        info = parse_info_cfg(info_path)
        ed_1, es_1 = info_int(info, "ED", info_path), info_int(info, "ES", info_path)
        cine = load_image(require_nifti(directory, f"{subject_id}_4d"), ndims=(4,))
        num_frames = cine.array.shape[3]
        if "NbFrame" in info and info_int(info, "NbFrame", info_path) != num_frames:
            raise DataError(
                info_path,
                f"NbFrame {info['NbFrame']} differs from the {num_frames} frames of {cine.path.name}",
            )
        ed = check_frame(ed_1, num_frames, info_path, "ED", one_based=True)
        es = check_frame(es_1, num_frames, info_path, "ES", one_based=True)

        labels, labelled = self._frame_labels(directory, subject_id, cine.array.shape, {ed: ed_1, es: es_1})
        meta: dict[str, Any] = {
            "dataset": self.dataset,
            "split": directory.parent.name if directory.parent != self.root else None,
            "group": info.get("Group"),
            "height_cm": _info_float(info, "Height"),
            "weight_kg": _info_float(info, "Weight"),
            "info": info,
        }
        subject = subject_from_cine(subject_id, cine, ed, es, directory, labels, labelled, meta)
        self._add_phantom_extras(subject, directory)
        return subject

    def _frame_labels(
        self, directory: Path, subject_id: str, shape: tuple[int, ...], frames: dict[int, int]
    ) -> tuple[np.ndarray | None, tuple[int, ...]]:
        """Place ``_frameYY_gt`` volumes into a 4D label array that is zero at every other frame."""
        labels: np.ndarray | None = None
        labelled: list[int] = []
        checked: Path | None = None
        for frame, number in frames.items():
            path = find_nifti(directory, f"{subject_id}_frame{number:02d}_gt")
            if path is None:
                continue
            volume = load_labels(path, shape[:3], ACDC_TO_INTERNAL, ACDC_CONVENTION)
            if labels is None:
                labels = np.zeros(shape, dtype=np.uint8)
            labels[..., frame] = volume
            labelled.append(frame)
            checked = path
        if labels is not None and checked is not None:
            check_lv_inside_myocardium(labels, labelled, checked)
        return labels, tuple(labelled)

    def _add_phantom_extras(self, subject: CardiacSubject, directory: Path) -> None:
        sid = subject.subject_id
        dense_path = find_nifti(directory, f"{sid}_dense_4d")
        if dense_path is not None:
            dense = load_image(dense_path, ndims=(4,))
            if dense.array.shape[:2] != subject.image.shape[:2] or dense.array.shape[3] != subject.num_frames:
                raise DataError(
                    dense_path,
                    f"dense shape {dense.array.shape} must share X, Y, T with the cine {subject.shape}",
                )
            subject.dense_image, subject.dense_spacing, subject.dense_affine = (
                dense.array,
                dense.spacing,
                dense.affine,
            )
            gt_path = find_nifti(directory, f"{sid}_dense_gt_4d")
            if gt_path is not None:
                subject.dense_labels = load_labels(
                    gt_path, dense.array.shape, ACDC_TO_INTERNAL, ACDC_CONVENTION
                )
        params_path = directory / f"{sid}_params.json"
        if params_path.is_file():
            try:
                params = json.loads(params_path.read_text())
            except json.JSONDecodeError as exc:
                raise DataError(params_path, f"malformed JSON ({exc})") from exc
            if not isinstance(params, dict):
                raise DataError(params_path, "expected a JSON object of generator parameters")
            subject.meta.update(params)
