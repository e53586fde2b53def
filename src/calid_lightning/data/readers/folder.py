"""Plain NIfTI folder reader: any ``*.nii`` / ``*.nii.gz`` short-axis stack, 3D or 4D.

``root/<name>.nii.gz`` is one subject (3D X, Y, Z becomes T = 1); an optional
``root/<name><label_suffix>.nii.gz`` (default suffix ``_gt``) holds its labels, in the internal convention
unless ``label_map`` says otherwise (``"acdc"`` or a ``{file value: internal value}`` dict). ED is frame 0.
ES is the labelled frame of minimal LV volume when labels exist; otherwise it is unknown, set to 0 and
``meta["es_frame_known"] = False``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from calid_lightning.data.readers.nifti import (
    ACDC_TO_INTERNAL,
    NIFTI_SUFFIXES,
    check_lv_inside_myocardium,
    find_nifti,
    frame_of_min_lv_volume,
    load_image,
    load_labels,
    nifti_stem,
)
from calid_lightning.data.subject import CardiacSubject, DataError

NAMED_LABEL_MAPS: dict[str, dict[int, int]] = {
    "internal": {0: 0, 1: 1, 2: 2, 3: 3},
    "acdc": ACDC_TO_INTERNAL,
}


def resolve_label_map(label_map: str | Mapping[int | str, int] | None) -> dict[int, int]:
    """A ``{file value: internal value}`` dict from a name (``internal``, ``acdc``) or a mapping."""
    if label_map is None:
        return NAMED_LABEL_MAPS["internal"]
    if isinstance(label_map, str):
        if label_map not in NAMED_LABEL_MAPS:
            raise ValueError(
                f"label_map must be one of {sorted(NAMED_LABEL_MAPS)} or a dict, got {label_map!r}"
            )
        return NAMED_LABEL_MAPS[label_map]
    mapping = {int(k): int(v) for k, v in label_map.items()}
    if any(v not in NAMED_LABEL_MAPS["internal"] for v in mapping.values()):
        raise ValueError(f"label_map values must be internal labels 0-3, got {mapping}")
    if any(not 0 <= k <= 255 for k in mapping):
        raise ValueError(f"label_map keys must be file label values 0-255, got {mapping}")
    return {0: 0, **mapping}


class NiftiFolderReader:
    """Lazy reader of a flat folder of NIfTI short-axis stacks."""

    def __init__(
        self,
        root: str | Path,
        label_suffix: str = "_gt",
        label_map: str | Mapping[int | str, int] | None = None,
        lenient: bool = False,
    ) -> None:
        self.root = Path(root)
        self.label_suffix = label_suffix
        self.label_map = resolve_label_map(label_map)
        self.lenient = lenient

    def list_subjects(self) -> list[str]:
        """Sorted file stems of the images (label files excluded); no image is opened."""
        stems = {
            nifti_stem(p) for p in self.root.iterdir() if p.is_file() and p.name.endswith(NIFTI_SUFFIXES)
        }
        return sorted(s for s in stems if not (self.label_suffix and s.endswith(self.label_suffix)))

    def read(self, subject_id: str) -> CardiacSubject:
        """Load one stack and its labels when a ``<name><label_suffix>`` file exists."""
        path = find_nifti(self.root, subject_id)
        if path is None:
            raise DataError(self.root / f"{subject_id}.nii.gz", "file not found (also looked for .nii)")
        volume = load_image(path)
        image = volume.array if volume.array.ndim == 4 else volume.array[..., None]
        meta: dict[str, Any] = {"dataset": "nifti_folder", "es_frame_known": image.shape[3] == 1}
        labels: np.ndarray | None = None
        labelled: tuple[int, ...] = ()
        es = 0
        label_path = find_nifti(self.root, f"{subject_id}{self.label_suffix}") if self.label_suffix else None
        if label_path is not None:
            raw = load_labels(label_path, volume.array.shape, self.label_map, f"label_map {self.label_map}")
            labels = raw if raw.ndim == 4 else raw[..., None]
            labelled = tuple(int(t) for t in np.flatnonzero(labels.any(axis=(0, 1, 2))))
            found = frame_of_min_lv_volume(labels, labelled)
            if found is not None and image.shape[3] > 1:
                es, meta["es_frame_known"] = found, True
            check_lv_inside_myocardium(labels, sorted({*labelled[:1], es} & set(labelled)), label_path)
        return CardiacSubject(
            subject_id=subject_id,
            image=image,
            spacing=volume.spacing,
            affine=volume.affine,
            ed_frame=0,
            es_frame=es,
            source=path,
            labels=labels,
            labelled_frames=labelled,
            frame_duration_ms=volume.frame_duration_ms,
            meta=meta,
        )
