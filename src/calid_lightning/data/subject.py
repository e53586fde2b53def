"""The one subject record every data source becomes before any sampling.

Readers (ACDC, M&Ms, UK Biobank, a NIfTI folder; the phantom through the ACDC reader) all return a
:class:`CardiacSubject`, so samplers, DataModules and evaluation never see a data-set layout.

Internal label convention (the M&Ms / UK Biobank one; ACDC is remapped by its reader):
``0`` background, ``1`` LV cavity, ``2`` LV myocardium, ``3`` RV cavity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Re-exported: defined at the bottom layer (checkpoint_file raises it too), imported from here by most code.
from calid_lightning.errors import DataError as DataError

BACKGROUND, LV_CAVITY, MYOCARDIUM, RV_CAVITY = 0, 1, 2, 3
CLASS_KEYS: dict[int, str] = {LV_CAVITY: "lv", MYOCARDIUM: "myo", RV_CAVITY: "rv"}
"""Short name of each heart label, as in the metric fields (``dice_lv``, ``hd95_myo``, ...)."""
NUM_CLASSES = 4
"""Label classes including background."""


@dataclass
class CardiacSubject:
    """A short-axis cine stack with optional labels, in the internal conventions.

    Arrays are indexed ``(X, Y, Z, T)``: X, Y in-plane, Z the slice axis of the short-axis stack, T the
    cardiac frames. ``affine`` is the voxel-to-world (RAS, mm) matrix of the NIfTI header; ``spacing`` is
    ``(dx, dy, dz)`` in mm read from the header zooms. ``labels`` holds the internal label convention
    and is only meaningful at ``labelled_frames`` (ACDC and M&Ms label ED and ES only).
    ``dense_*`` carry the phantom's dense ground truth (same X, Y, T; finer Z) when present.
    """

    subject_id: str
    image: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    ed_frame: int
    es_frame: int
    source: Path
    labels: np.ndarray | None = None
    labelled_frames: tuple[int, ...] = ()
    frame_duration_ms: float | None = None
    dense_image: np.ndarray | None = None
    dense_labels: np.ndarray | None = None
    dense_spacing: tuple[float, float, float] | None = None
    dense_affine: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(X, Y, Z, T)`` of the acquired stack."""
        return tuple(self.image.shape)  # type: ignore[return-value]

    @property
    def num_slices(self) -> int:
        return int(self.image.shape[2])

    @property
    def num_frames(self) -> int:
        return int(self.image.shape[3])

    def stack(self, dense: bool) -> tuple[np.ndarray, np.ndarray | None, tuple[float, float, float]]:
        """Return ``(image, labels, spacing)`` of the acquired stack, or of the dense truth when asked.

        Raises :class:`DataError` when the dense stack is asked for but the subject has none.
        """
        if not dense:
            return self.image, self.labels, self.spacing
        if self.dense_image is None or self.dense_spacing is None:
            raise DataError(self.source, "no dense ground truth (only phantom subjects carry one)")
        return self.dense_image, self.dense_labels, self.dense_spacing
