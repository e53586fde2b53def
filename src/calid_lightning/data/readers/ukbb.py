"""UK Biobank reader for the usual per-subject conversion (as in ``ukbb_cardiac``).

``root/<eid>/sa.nii.gz`` (X, Y, Z, T=50) with either ``seg_sa.nii.gz`` (4D labels, every frame) or
``seg_sa_ED.nii.gz`` / ``seg_sa_ES.nii.gz`` (3D). Labels 1 LV, 2 myocardium, 3 RV (already internal).
The header's pixdim[4] is the frame duration in seconds, also when its time unit is unset.
ED is frame 0. ES is found, in this order of preference:

1. the frame of minimal LV-cavity volume when a 4D ``seg_sa.nii.gz`` exists;
2. the frame of ``sa.nii.gz`` that equals ``sa_ES.nii.gz`` (the converter extracts it from the cine) when
   only 3D segmentations exist;
3. otherwise it is unknown: ``es_frame`` = 0 and ``meta["es_frame_known"] = False``. A ``seg_sa_ES`` that
   cannot be placed in time is then a :class:`DataError` (add ``sa_ES.nii.gz`` or a 4D ``seg_sa.nii.gz``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from calid_lightning.data.readers.nifti import (
    check_lv_inside_myocardium,
    find_nifti,
    frame_of_min_lv_volume,
    load_image,
    load_labels,
    require_nifti,
    subject_from_cine,
)
from calid_lightning.data.subject import CardiacSubject, DataError


def _matching_frame(cine: np.ndarray, frame_path: Path) -> int:
    """Index of the cine frame closest (mean absolute difference) to the 3D image in ``frame_path``."""
    frame = load_image(frame_path, ndims=(3,)).array
    if frame.shape != cine.shape[:3]:
        raise DataError(frame_path, f"shape {frame.shape} differs from the cine's {cine.shape[:3]}")
    errors = np.abs(cine - frame[..., None]).mean(axis=(0, 1, 2))
    return int(np.argmin(errors))


class UkbbReader:
    """Lazy reader of a UK Biobank folder with one sub-folder per eid (about 11k of them)."""

    def __init__(self, root: str | Path, lenient: bool = False) -> None:
        self.root = Path(root)
        self.lenient = lenient

    def list_subjects(self) -> list[str]:
        """Sorted eids of the sub-folders that hold ``sa.nii.gz`` (or ``sa.nii``); no image is opened."""
        return sorted(
            d.name
            for d in self.root.iterdir()
            if d.is_dir() and ((d / "sa.nii.gz").exists() or (d / "sa.nii").exists())
        )

    def read(self, subject_id: str) -> CardiacSubject:
        """Load one subject; see the module docstring for how ES is found."""
        directory = self.root / subject_id
        cine = load_image(require_nifti(directory, "sa"), ndims=(4,), unknown_time_unit="sec")
        shape = cine.array.shape
        meta: dict[str, Any] = {"dataset": "ukbb", "es_frame_known": True}
        ed, es = 0, 0
        labels: np.ndarray | None = None
        labelled: tuple[int, ...] = ()
        seg4d = find_nifti(directory, "seg_sa")
        seg_ed, seg_es = find_nifti(directory, "seg_sa_ED"), find_nifti(directory, "seg_sa_ES")
        checked: Path | None = None
        if seg4d is not None:
            labels = load_labels(seg4d, shape)
            labelled = tuple(int(t) for t in np.flatnonzero(labels.any(axis=(0, 1, 2))))
            found = frame_of_min_lv_volume(labels, labelled)
            if found is None:
                raise DataError(seg4d, "no LV cavity (label 1) in any frame; cannot find ES")
            es, checked = found, seg4d
            meta["es_frame_source"] = "min LV volume of seg_sa"
        elif seg_ed is not None or seg_es is not None:
            labels = np.zeros(shape, dtype=np.uint8)
            if seg_es is not None:
                es_image = find_nifti(directory, "sa_ES")
                if es_image is None:
                    raise DataError(seg_es, "cannot place it in time: add sa_ES.nii.gz or a 4D seg_sa.nii.gz")
                es = _matching_frame(cine.array, es_image)
                meta["es_frame_source"] = "frame of sa matching sa_ES"
                labels[..., es] = load_labels(seg_es, shape[:3])
                checked = seg_es
            else:
                meta["es_frame_known"] = False
            if seg_ed is not None:
                labels[..., ed] = load_labels(seg_ed, shape[:3])
                checked = seg_ed
            labelled = tuple(dict.fromkeys(t for t, p in ((ed, seg_ed), (es, seg_es)) if p is not None))
        else:
            meta["es_frame_known"] = False
        if labels is not None and checked is not None:
            check_lv_inside_myocardium(labels, (ed, es) if seg4d is not None else labelled, checked)
        return subject_from_cine(subject_id, cine, ed, es, directory, labels, labelled, meta)
