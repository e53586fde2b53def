"""Per-subject preprocessing, done once and cached: in-plane resampling, heart-centred crop, intensities.

The result, :class:`PreparedSubject`, stores arrays as ``(Z, T, H, W)`` with ``H, W`` the image's ``X, Y``,
so one slice at one frame is ``image[z, t]`` and one slice's cine is ``image[z]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from monai.transforms import Resize
from scipy import ndimage

from calid_lightning.data.subject import LV_CAVITY, RV_CAVITY, CardiacSubject

DEFAULT_PERCENTILES: tuple[float, float] = (1.0, 99.5)
"""Subject intensity percentiles mapped to 0 and 1: the default of ``data.intensity_percentiles``, and what
``calid upsample`` uses for a checkpoint that does not record its data module's."""


@dataclass
class PreparedSubject:
    """A subject ready for sampling: float32 intensities in [0, 1] of one stack (acquired or dense).

    ``crop_origin`` is the in-plane voxel of the (resampled) stack at the crop's ``[0, 0]`` (negative when
    padded); ``spacing`` is ``(dx, dy, dz)`` in mm after resampling.
    """

    subject_id: str
    image: np.ndarray
    spacing: tuple[float, float, float]
    crop_origin: tuple[int, int]
    ed_frame: int
    es_frame: int
    dense: bool
    labels: np.ndarray | None = None
    labelled_frames: tuple[int, ...] = ()
    meta: dict = field(default_factory=dict)

    @property
    def num_slices(self) -> int:
        return int(self.image.shape[0])

    @property
    def num_frames(self) -> int:
        return int(self.image.shape[1])


def resample_inplane(
    image: np.ndarray, labels: np.ndarray | None, spacing: tuple[float, float, float], pixel_spacing: float
) -> tuple[np.ndarray, np.ndarray | None, tuple[float, float, float]]:
    """Resample ``(X, Y, Z, T)`` arrays in-plane to ``pixel_spacing`` mm (Z and T unchanged).

    Intensities use bilinear interpolation with anti-aliasing, labels nearest neighbour.
    """
    nx, ny, nz, nt = image.shape
    size = (max(1, round(nx * spacing[0] / pixel_spacing)), max(1, round(ny * spacing[1] / pixel_spacing)))
    new_spacing = (nx * spacing[0] / size[0], ny * spacing[1] / size[1], spacing[2])
    if size == (nx, ny):
        return image, labels, new_spacing

    def resize(array: np.ndarray, mode: str, anti_aliasing: bool) -> np.ndarray:
        channels_first = np.moveaxis(array, (2, 3), (0, 1)).reshape(nz * nt, nx, ny)
        out = Resize(size, mode=mode, anti_aliasing=anti_aliasing)(channels_first.astype(np.float32))
        return np.moveaxis(np.asarray(out).reshape(nz, nt, *size), (0, 1), (2, 3))

    image = resize(image, "bilinear", True)
    if labels is not None:
        labels = resize(labels, "nearest", False).round().astype(labels.dtype)
    return image, labels, new_spacing


def label_center(labels: np.ndarray, frames: tuple[int, ...] = ()) -> tuple[float, float] | None:
    """In-plane centroid of the LV and RV cavities in ``(X, Y, Z, T)`` labels (``None``: no cavity)."""
    selected = labels if not frames else labels[..., list(frames)]
    counts = np.isin(selected, (LV_CAVITY, RV_CAVITY)).sum(axis=tuple(range(2, selected.ndim)))
    if counts.sum() == 0:
        return None
    xs, ys = np.indices(counts.shape)
    return float(np.average(xs, weights=counts)), float(np.average(ys, weights=counts))


def motion_center(image: np.ndarray, sigma: float = 2.0) -> tuple[float, float]:
    """In-plane centre of the temporal standard-deviation map of an ``(X, Y, Z, T)`` cine.

    The heart moves and the context is static, so the smoothed std map peaks over the heart; the centre is
    the centroid of the map above half its range. Only the middle half of the slices counts (the base
    holds moving atria off the ventricles' axis). Falls back to the image centre for a single frame.
    """
    nx, ny, nz = image.shape[:3]
    if image.shape[3] < 2:
        return (nx - 1) / 2, (ny - 1) / 2
    middle = image[:, :, nz // 4 : max(nz // 4 + 1, (3 * nz + 3) // 4)]
    std_map = ndimage.gaussian_filter(middle.std(axis=3).mean(axis=2), sigma)
    floor = np.median(std_map)
    weights = np.clip(std_map - (floor + 0.5 * (std_map.max() - floor)), 0, None)
    if weights.sum() <= 0:
        return (nx - 1) / 2, (ny - 1) / 2
    xs, ys = np.indices(std_map.shape)
    return float(np.average(xs, weights=weights)), float(np.average(ys, weights=weights))


def crop_origin(center: tuple[float, float], size: int) -> tuple[int, int]:
    """The in-plane corner of a ``size`` square whose centre pixel ``size // 2`` lands on ``center``."""
    return round(center[0]) - size // 2, round(center[1]) - size // 2


def crop_or_pad(array: np.ndarray, origin: tuple[int, int], size: int, fill: float = 0) -> np.ndarray:
    """The ``size``-square in-plane window of ``(X, Y, ...)`` at ``origin``, ``fill`` outside the array."""
    out = np.full((size, size, *array.shape[2:]), fill, dtype=array.dtype)
    src = [(max(0, o), min(n, o + size)) for o, n in zip(origin, array.shape[:2], strict=True)]
    dst = [(lo - o, hi - o) for (lo, hi), o in zip(src, origin, strict=True)]
    if all(hi > lo for lo, hi in src):
        (sx0, sx1), (sy0, sy1) = src
        (dx0, dx1), (dy0, dy1) = dst
        out[dx0:dx1, dy0:dy1] = array[sx0:sx1, sy0:sy1]
    return out


def check_percentiles(
    percentiles: Sequence[float], name: str = "data.intensity_percentiles"
) -> tuple[float, float]:
    """``percentiles`` as a float pair ``(low, high)``; a ValueError naming ``name`` unless
    0 <= low < high <= 100 (a bad config fails at start-up, not as a degenerate normalisation)."""
    try:
        low, high = (float(p) for p in percentiles)
    except (TypeError, ValueError):
        low = high = float("nan")
    if not 0.0 <= low < high <= 100.0:
        raise ValueError(
            f"{name} must be two percentiles 0 <= low < high <= 100, e.g. [1.0, 99.5]; got {percentiles!r}"
        )
    return low, high


def intensity_range(
    image: np.ndarray, percentiles: tuple[float, float] = DEFAULT_PERCENTILES
) -> tuple[float, float]:
    """The intensities mapped to 0 and 1: the image's ``percentiles`` over all voxels (min and max where they
    coincide; equal only for a constant image).

    The one normalisation of the project: training (:func:`prepare_subject`) and ``calid upsample``
    (``inference.nifti_io.read_sparse_stack``) both call it, with the percentiles the model was trained with.
    numpy rather than MONAI's ``ScaleIntensityRangePercentiles``: that one calls ``torch.quantile``, which is
    ~50x slower here and refuses inputs over 16M voxels (a 256x256x10x30 cine has 19.7M).
    """
    flat = image.ravel(order="K")  # a view for the Fortran-ordered arrays nibabel returns (2x faster)
    low, high = (float(v) for v in np.percentile(flat, percentiles))
    if high <= low:
        low, high = float(flat.min()), float(flat.max())
    return low, high


def scale_intensity(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map ``[low, high]`` to [0, 1] and clip (float32)."""
    scaled = (image.astype(np.float32) - np.float32(low)) / np.float32(max(high - low, 1e-8))
    return np.clip(scaled, 0.0, 1.0, out=scaled)


def normalise_intensity(
    image: np.ndarray, percentiles: tuple[float, float] = DEFAULT_PERCENTILES
) -> np.ndarray:
    """Map the image's own ``percentiles`` to [0, 1] and clip (float32)."""
    return scale_intensity(image, *intensity_range(image, percentiles))


def prepare_subject(
    subject: CardiacSubject,
    dense: bool,
    crop_size: int,
    pixel_spacing: float | None = None,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
) -> PreparedSubject:
    """Resample, centre on the heart, crop/pad to ``crop_size`` and normalise one stack of ``subject``.

    The heart centre is the LV+RV label centroid when labels exist, otherwise the temporal-std centre
    (which sits on the LV, the strongest motion). Percentiles come from the whole field of view.
    """
    image, labels, spacing = subject.stack(dense)
    if pixel_spacing is not None:
        image, labels, spacing = resample_inplane(image, labels, spacing, pixel_spacing)
    center = label_center(labels, subject.labelled_frames) if labels is not None else None
    center = center or motion_center(image)
    origin = crop_origin(center, crop_size)
    low, high = intensity_range(image, percentiles)
    cropped = scale_intensity(crop_or_pad(image, origin, crop_size, fill=low), low, high)
    labels_out = None if labels is None else crop_or_pad(labels.astype(np.uint8), origin, crop_size)
    return PreparedSubject(
        subject_id=subject.subject_id,
        image=np.ascontiguousarray(cropped.transpose(2, 3, 0, 1)),
        spacing=tuple(float(s) for s in spacing),
        crop_origin=origin,
        ed_frame=subject.ed_frame,
        es_frame=subject.es_frame,
        dense=dense,
        labels=None if labels_out is None else np.ascontiguousarray(labels_out.transpose(2, 3, 0, 1)),
        labelled_frames=tuple(subject.labelled_frames),
        meta={"center": center, "source": str(subject.source)},
    )
