"""Settings of the procedural cardiac phantom and the record one generated subject becomes.

Kept apart from the generator so the writer (:mod:`.io`) and the generator (:mod:`.generate`) can both
use them without importing each other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from calid_lightning.data.phantom.acquisition import FILTERS

PATHOLOGIES: tuple[str, ...] = ("NOR", "DCM", "HCM", "MINF", "ARV")


@dataclass
class PhantomConfig:
    """What to generate. Sizes in voxels, lengths in mm; the defaults give a "full" subject.

    ``pixel_spacing=None`` samples the in-plane pixel per subject in 1.25-1.8 mm at 128 pixels and scales
    it by ``128 / size`` at other sizes, so a small test subject still holds the whole heart.
    ``dense_slices=None`` covers the heart from below the apex to the atria (about 12 acquired slices).
    ``snr=None`` gives noise-free images; ``sparse_offset=None`` samples the first kept dense slice.

    Acquisition (``docs/phantom.md``): anatomy is rendered ``supersample`` times finer in plane (edge pixels
    only; uniform areas are exact at one sample) and in sub-slices of about ``subslice_mm`` through plane;
    each slice integrates a box profile of ``slice_profile`` mm (None: one dense spacing), is truncated in
    k-space to the matrix with ``kspace_filter`` ("none", "tukey", "hann"), gets complex noise and is stored
    as a magnitude. ``truth="acquired"``: the dense truth is the same acquisition at the dense positions
    (overlapping slabs), so the sparse stack is an exact subsample of it; ``truth="thin"``: dense slabs one
    dense spacing thick (the sparse stack keeps ``slice_profile`` and then differs from the dense truth).
    ``breath_hold_shift_mm`` (in-plane offset per acquired slice) also makes the sparse stack differ.
    Texture: ``trabeculae`` (discrete trabeculae and papillary heads), ``flow`` (blood-pool signal
    variation, 0 = off), ``chemical_shift`` (fat opposed in phase: a dark line at fat/water borders),
    ``respiratory_blur_mm`` (in-plane motion blur along the phase-encoding axis, 0 = off).
    """

    size: tuple[int, int] = (128, 128)
    pixel_spacing: float | None = None
    dense_spacing: float = 2.5
    sparse_factor: int = 4
    frames: int = 25
    pathologies: tuple[str, ...] = ("NOR",)
    slice_profile: float | None = 8.0
    truth: str = "acquired"
    supersample: int = 2
    subslice_mm: float = 1.25
    kspace_filter: str = "tukey"
    trabeculae: bool = True
    flow: float = 0.12
    chemical_shift: bool = True
    respiratory_blur_mm: float = 0.0
    breath_hold_shift_mm: float = 0.0
    dense_slices: int | None = None
    sparse_offset: int | None = None
    snr: tuple[float, float] | None = (15.0, 60.0)
    bias: tuple[float, float] = (0.15, 0.4)

    def __post_init__(self) -> None:
        self.size = (int(self.size[0]), int(self.size[1]))
        self.pathologies = tuple(str(p).upper() for p in self.pathologies)
        if self.snr is not None:
            self.snr = (float(self.snr[0]), float(self.snr[1]))
        self.bias = (float(self.bias[0]), float(self.bias[1]))
        problems = []
        if min(self.size) < 16:
            problems.append(f"size must be >= 16 voxels per side, got {self.size}")
        if self.pixel_spacing is not None and self.pixel_spacing <= 0:
            problems.append(f"pixel_spacing must be > 0 mm, got {self.pixel_spacing}")
        if self.dense_spacing <= 0:
            problems.append(f"dense_spacing must be > 0 mm, got {self.dense_spacing}")
        if self.sparse_factor < 1:
            problems.append(f"sparse_factor must be >= 1, got {self.sparse_factor}")
        if self.frames < 1:
            problems.append(f"frames must be >= 1, got {self.frames}")
        unknown = sorted(set(self.pathologies) - set(PATHOLOGIES))
        if not self.pathologies or unknown:
            problems.append(
                f"pathologies must be a non-empty subset of {PATHOLOGIES}, got {self.pathologies}"
            )
        if self.slice_profile is not None and self.slice_profile <= 0:
            problems.append(f"slice_profile must be > 0 mm or None, got {self.slice_profile}")
        if self.truth not in ("acquired", "thin"):
            problems.append(f"truth must be 'acquired' or 'thin', got {self.truth!r}")
        if self.supersample < 1:
            problems.append(f"supersample must be >= 1, got {self.supersample}")
        if self.subslice_mm <= 0:
            problems.append(f"subslice_mm must be > 0 mm, got {self.subslice_mm}")
        if self.kspace_filter not in FILTERS:
            problems.append(f"kspace_filter must be one of {FILTERS}, got {self.kspace_filter!r}")
        if not 0 <= self.flow < 1:
            problems.append(f"flow must be in [0, 1), got {self.flow}")
        if self.respiratory_blur_mm < 0:
            problems.append(f"respiratory_blur_mm must be >= 0, got {self.respiratory_blur_mm}")
        if self.breath_hold_shift_mm < 0:
            problems.append(f"breath_hold_shift_mm must be >= 0, got {self.breath_hold_shift_mm}")
        if self.dense_slices is not None and self.dense_slices < self.sparse_factor + 1:
            problems.append(
                f"dense_slices must be > sparse_factor ({self.sparse_factor}), got {self.dense_slices}"
            )
        if self.sparse_offset is not None and not 0 <= self.sparse_offset < self.sparse_factor:
            problems.append(f"sparse_offset must be in [0, {self.sparse_factor}), got {self.sparse_offset}")
        if self.snr is not None and not 0 < self.snr[0] <= self.snr[1]:
            problems.append(f"snr must be (low, high) with 0 < low <= high, got {self.snr}")
        if problems:
            raise ValueError("PhantomConfig: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy (tuples become lists), stored in each subject's params file."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass
class PhantomSubject:
    """One generated subject: dense truth, acquired (sparse) stack and the generator's parameters.

    Arrays are ``(X, Y, Z, T)``. ``labels`` / ``sparse_labels`` use the package's internal convention
    (0 background, 1 LV cavity, 2 myocardium, 3 RV cavity); files on disk use ACDC's (see :mod:`.io`).
    Sparse slice ``j`` is dense slice ``sparse_offset + sparse_factor * j``. ``spacing`` and
    ``dense_spacing`` are ``(dx, dy, dz)`` in mm; the affines map voxel indices to world mm (RAS).
    """

    seed: int
    image: np.ndarray
    labels: np.ndarray
    sparse_image: np.ndarray
    sparse_labels: np.ndarray
    spacing: tuple[float, float, float]
    dense_spacing: tuple[float, float, float]
    affine: np.ndarray
    sparse_affine: np.ndarray
    sparse_offset: int
    sparse_factor: int
    ed_frame: int
    es_frame: int
    frame_duration_ms: float
    pathology: str
    params: dict[str, Any] = field(default_factory=dict)
