"""Safe NIfTI loading and validation shared by every reader.

Each check turns a problem that would otherwise crash deep inside a DataLoader worker (a truncated file, a
2D image, NaN voxels, unknown label values, ...) into a :class:`DataError` that names the file and the
problem. Spacing, affine and frame duration always come from the header, never from assumptions.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.openers import ImageOpener
from scipy import ndimage

from calid_lightning.data.subject import LV_CAVITY, MYOCARDIUM, RV_CAVITY, CardiacSubject, DataError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
PAIR_SUFFIXES = (".hdr", ".img", ".hdr.gz", ".img.gz")
"""A NIfTI pair: header and voxels in two files (read like a single-file NIfTI)."""
UNSUPPORTED_SUFFIXES = {
    ".mnc": "MINC",
    ".mnc.gz": "MINC",
    ".mgh": "MGH (FreeSurfer)",
    ".mgz": "MGH (FreeSurfer)",
    ".dcm": "DICOM",
    ".nrrd": "NRRD",
    ".nhdr": "NRRD",
    ".mha": "MetaImage",
    ".mhd": "MetaImage",
    ".par": "PAR/REC",
    ".rec": "PAR/REC",
}
INTERNAL_LABELS = frozenset({0, LV_CAVITY, MYOCARDIUM, RV_CAVITY})
ACDC_TO_INTERNAL: dict[int, int] = {0: 0, 1: RV_CAVITY, 2: MYOCARDIUM, 3: LV_CAVITY}
"""ACDC labels (1 RV cavity, 2 myocardium, 3 LV cavity) -> internal (1 LV, 2 myocardium, 3 RV cavity)."""

_READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, ImageFileError)
_TIME_UNIT_TO_MS = {"sec": 1000.0, "msec": 1.0, "usec": 1e-3}


@dataclass(frozen=True)
class Volume:
    """A validated image: voxel array ``(X, Y, Z[, T])`` plus its header geometry."""

    path: Path
    array: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    frame_duration_ms: float | None


def nifti_stem(path: Path) -> str:
    """File name without ``.nii`` / ``.nii.gz``."""
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def find_nifti(directory: Path, stem: str) -> Path | None:
    """``directory/stem.nii.gz`` or ``directory/stem.nii``, whichever exists (None when neither)."""
    for suffix in NIFTI_SUFFIXES:
        candidate = directory / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def require_nifti(directory: Path, stem: str) -> Path:
    """Like :func:`find_nifti` but a missing file is a :class:`DataError`."""
    path = find_nifti(directory, stem)
    if path is None:
        raise DataError(directory / f"{stem}.nii.gz", "file not found (also looked for .nii)")
    return path


def _unsupported(path: Path, kind: str) -> DataError:
    return DataError(path, f"unsupported format {kind}; expected NIfTI (.nii, .nii.gz or a .hdr/.img pair)")


def _open(path: Path) -> nib.Nifti1Pair:
    """A NIfTI-1/2 image, single file or ``.hdr``/``.img`` pair; any other format is a one-line DataError."""
    if not path.is_file():
        raise DataError(path, "file not found")
    name = path.name.lower()
    for suffix, kind in UNSUPPORTED_SUFFIXES.items():
        if name.endswith(suffix):
            raise _unsupported(path, kind)
    try:
        img = nib.load(str(path))
    except _READ_ERRORS as exc:
        raise DataError(path, f"not a readable NIfTI file ({type(exc).__name__}: {exc})") from exc
    except ImportError as exc:  # nibabel needs an optional package (h5py for MINC2, pydicom, ...)
        raise _unsupported(path, f"(nibabel would need {exc.name or 'an optional package'})") from None
    if not isinstance(img, nib.Nifti1Pair):
        if isinstance(img, nib.AnalyzeImage):
            raise DataError(
                path, "an Analyze 7.5 header, not NIfTI: no reliable orientation; convert to NIfTI"
            )
        raise _unsupported(path, type(img).__name__.removesuffix("Image"))
    return img


def _read_array(img: nib.Nifti1Image, path: Path, dtype: type | None) -> np.ndarray:
    try:
        if dtype is None:
            return np.asanyarray(img.dataobj)
        with np.errstate(over="ignore"):  # values beyond float32 become inf and are reported by load_image
            return img.get_fdata(dtype=dtype, caching="unchanged")
    except _READ_ERRORS as exc:
        raise DataError(path, f"cannot read the voxel data, truncated or corrupt file ({exc})") from exc


def _squeeze_trailing(array: np.ndarray) -> np.ndarray:
    """Drop singleton axes after the fourth (some converters write ``(X, Y, Z, T, 1)``)."""
    while array.ndim > 4 and array.shape[-1] == 1:
        array = array[..., 0]
    return array


def _raw_spacing(img: nib.Nifti1Image, path: Path) -> tuple[float, ...]:
    """pixdim[1:4] as stored: nibabel silently turns a zero spacing into 1 mm when it loads a header."""
    holder = img.file_map.get("header") or img.file_map["image"]
    header_file = holder.filename or str(path)
    with ImageOpener(str(header_file)) as handle:
        header = img.header_class.from_fileobj(handle, check=False)
    return tuple(float(abs(z)) for z in header["pixdim"][1:4])


def _frame_duration_ms(img: nib.Nifti1Image, unknown_time_unit: str | None) -> float | None:
    """pixdim[4] in ms, converted from the header's time unit (``unknown_time_unit`` when it says unknown).

    None when the time unit stays unknown or pixdim[4] is unset.
    """
    header = img.header
    if len(header.get_data_shape()) < 4:
        return None
    value = float(header["pixdim"][4])
    if not np.isfinite(value) or value <= 0:
        return None
    unit = header.get_xyzt_units()[1]
    if unit == "unknown" and unknown_time_unit is not None:
        unit = unknown_time_unit
    if unit in _TIME_UNIT_TO_MS:
        return value * _TIME_UNIT_TO_MS[unit]
    return None


def load_image(
    path: str | Path, ndims: Iterable[int] = (3, 4), unknown_time_unit: str | None = None
) -> Volume:
    """Load and validate an image: dimensionality, finite non-zero voxels, at least 2 slices, positive zooms.

    The array is float32 ``(X, Y, Z)`` or ``(X, Y, Z, T)`` in the file's own voxel order; the affine tells
    the slice order, so nothing is flipped here. ``unknown_time_unit`` (``"sec"``, ``"msec"``) reads
    pixdim[4] of a header whose time unit is unset, for data sets whose convention is known (UK Biobank).
    """
    path = Path(path)
    img = _open(path)
    array = _squeeze_trailing(_read_array(img, path, np.float32))
    allowed = tuple(ndims)
    if array.ndim == 4 and array.shape[3] == 1 and 4 not in allowed:
        array = array[..., 0]  # a single frame saved as (X, Y, Z, 1)
    if array.ndim not in allowed:
        wanted = " or ".join(f"{n}D" for n in allowed)
        raise DataError(
            path, f"expected a {wanted} image (X, Y, Z[, T]), got {array.ndim}D shape {array.shape}"
        )
    if array.shape[2] < 2:
        raise DataError(path, f"only {array.shape[2]} slice(s) along Z; a short-axis stack needs at least 2")
    finite = np.isfinite(array)
    if not finite.all():
        raw_values = np.asanyarray(img.dataobj)
        if np.isfinite(raw_values).all():
            peak = float(np.abs(raw_values).max())
            raise DataError(
                path, f"values out of float32 range (largest magnitude {peak:.3g}; float32 max 3.4e38)"
            )
        raise DataError(path, f"{int((~finite).sum())} NaN/Inf voxels of {array.size}")
    if not array.any():
        raise DataError(path, "all voxels are zero (empty volume)")
    if array.min() == array.max():
        raise DataError(
            path, f"constant intensity {float(array.flat[0])}: nothing to normalise or interpolate"
        )
    raw = _raw_spacing(img, path)
    if not all(np.isfinite(z) and z > 0 for z in raw):
        raise DataError(path, f"header pixdim (voxel spacing) must be positive, got {raw}")
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    affine = np.asarray(img.affine, dtype=np.float64)
    return Volume(path, array, zooms, affine, _frame_duration_ms(img, unknown_time_unit))


SHEAR_TOLERANCE = 1e-3
"""Largest |cosine| between two voxel axes of the affine still taken as perpendicular (about 0.06 degrees)."""


def check_affine(path: str | Path, affine: np.ndarray) -> None:
    """Refuse a voxel-to-world affine that cannot be inverted or written faithfully.

    A zero (or NaN) column makes the geometry singular; a sheared matrix (axes not perpendicular) cannot be
    stored in the NIfTI qform, so viewers that read the qform (SimpleITK, ITK-SNAP) would show the output
    rotated against the input.
    """
    matrix = np.asarray(affine, dtype=np.float64)[:3, :3]
    axes = ("X (in-plane)", "Y (in-plane)", "Z (slice)")
    if not np.isfinite(matrix).all():
        raise DataError(path, "affine (sform/qform) holds NaN/Inf values")
    norms = np.linalg.norm(matrix, axis=0)
    for axis, norm in zip(axes, norms, strict=True):
        if norm < 1e-9:
            raise DataError(path, f"affine is not invertible: its {axis} column is zero")
    if abs(np.linalg.det(matrix)) < 1e-9 * float(np.prod(norms)):
        raise DataError(path, "affine is not invertible (its voxel axes are parallel)")
    cosines = (matrix / norms).T @ (matrix / norms)
    worst = float(np.abs(cosines - np.eye(3)).max())
    if worst > SHEAR_TOLERANCE:
        degrees = float(np.degrees(np.arcsin(min(worst, 1.0))))
        raise DataError(
            path,
            f"sheared affine (voxel axes {degrees:.2f} degrees from perpendicular): the output's qform could "
            "not hold it and viewers would show it rotated; resample the input to a non-sheared grid first",
        )


def load_labels(
    path: str | Path,
    expected_shape: tuple[int, ...],
    mapping: Mapping[int, int] | None = None,
    convention: str = "internal: 1 LV cavity, 2 myocardium, 3 RV cavity",
) -> np.ndarray:
    """Load a label map, check its shape and values, and remap it to the internal convention (uint8).

    ``mapping`` maps file values to internal ones (its keys are the allowed values); without it the file
    must already use the internal values 0-3. ``convention`` only words the error message.
    """
    path = Path(path)
    img = _open(path)
    array = _squeeze_trailing(_read_array(img, path, None))
    if array.ndim == len(expected_shape) + 1 and array.shape[-1] == 1:
        array = array[..., 0]  # a single frame saved as (X, Y, Z, 1)
    if tuple(array.shape) != tuple(expected_shape):
        raise DataError(
            path, f"label shape {tuple(array.shape)} differs from the image shape {tuple(expected_shape)}"
        )
    lut_map = dict(mapping) if mapping is not None else {v: v for v in INTERNAL_LABELS}
    allowed = sorted(lut_map)
    if not np.issubdtype(array.dtype, np.integer):
        if not np.isfinite(array).all():
            raise DataError(path, "labels contain NaN/Inf values")
        if not np.array_equal(array, np.round(array)):
            raise DataError(
                path, f"labels must be integers, found fractional values; expected {allowed} ({convention})"
            )
    if array.size and (array.min() < 0 or array.max() > max(allowed) or len(allowed) != max(allowed) + 1):
        unknown = sorted(set(np.unique(array).astype(np.int64).tolist()) - set(allowed))
        if unknown:
            raise DataError(path, f"unknown label values {unknown}; expected {allowed} ({convention})")
    array = array.astype(np.uint8, copy=False)
    if all(source == target for source, target in lut_map.items()):
        return array
    lut = np.zeros(256, dtype=np.uint8)
    for source, target in lut_map.items():
        lut[source] = target
    return lut[array]


def check_frame(value: int, num_frames: int, path: Path, name: str, one_based: bool) -> int:
    """Validate an ED/ES frame number against the cine length; returns the 0-based index."""
    low = 1 if one_based else 0
    high = num_frames if one_based else num_frames - 1
    if not low <= value <= high:
        base = "1-based" if one_based else "0-based"
        raise DataError(
            path, f"{name} {value} out of range {low}..{high} ({base}; the cine has {num_frames} frames)"
        )
    return value - low


def lv_volume_per_frame(labels: np.ndarray) -> np.ndarray:
    """Number of LV-cavity voxels in each frame of a ``(X, Y, Z, T)`` label map."""
    return (labels == LV_CAVITY).sum(axis=(0, 1, 2))


def frame_of_min_lv_volume(labels: np.ndarray, frames: Iterable[int]) -> int | None:
    """The frame (among ``frames``) with the smallest non-zero LV cavity, i.e. end-systole; None if no LV."""
    volumes = lv_volume_per_frame(labels)
    candidates = [t for t in frames if volumes[t] > 0]
    return min(candidates, key=lambda t: (volumes[t], t)) if candidates else None


def _myocardium_fraction_around(labels: np.ndarray, label: int) -> tuple[float, int, int]:
    """Share of myocardium, and counts of myocardium / RV, on the in-plane border of ``label``'s region."""
    mask = labels == label
    in_plane = ndimage.generate_binary_structure(2, 1)
    structure = in_plane.reshape(3, 3, *([1] * (labels.ndim - 2)))
    border = ndimage.binary_dilation(mask, structure=structure) & ~mask
    values = labels[border]
    if values.size == 0:
        return float("nan"), 0, 0
    myo = int((values == MYOCARDIUM).sum())
    return myo / values.size, myo, int((values == RV_CAVITY).sum())


def check_lv_inside_myocardium(labels: np.ndarray, frames: Iterable[int], path: Path) -> None:
    """Reject a label map whose LV/RV classes are swapped: the myocardium must surround class 1, not class 3.

    Checked on the labelled frames (one frame is enough, two keep it robust). A file in the ACDC convention
    read as internal has its LV cavity labelled 3, and that is the class the myocardium encloses.
    """
    frames = list(frames)
    if not frames:
        return
    sub = labels[..., frames]
    lv_myo_share, lv_myo, lv_rv = _myocardium_fraction_around(sub, LV_CAVITY)
    rv_myo_share, _, _ = _myocardium_fraction_around(sub, RV_CAVITY)
    swapped = lv_rv > lv_myo or (np.isfinite(rv_myo_share) and rv_myo_share > max(lv_myo_share, 0.5))
    if np.isfinite(lv_myo_share) and swapped:
        raise DataError(
            path,
            "labels look swapped: the myocardium (2) surrounds class 3, not class 1 "
            f"(myocardium share on the border: class 1 {lv_myo_share:.2f}, class 3 {rv_myo_share:.2f}); "
            "expected 1 LV cavity, 2 myocardium, 3 RV cavity (ACDC files use 1 RV, 3 LV)",
        )


def subject_from_cine(
    subject_id: str,
    cine: Volume,
    ed: int,
    es: int,
    source: Path,
    labels: np.ndarray | None,
    labelled: tuple[int, ...],
    meta: dict,
) -> CardiacSubject:
    """The subject record of a cine read by :func:`load_image`: image, spacing, affine and timing from it."""
    return CardiacSubject(
        subject_id=subject_id,
        image=cine.array,
        spacing=cine.spacing,
        affine=cine.affine,
        ed_frame=ed,
        es_frame=es,
        source=source,
        labels=labels,
        labelled_frames=labelled,
        frame_duration_ms=cine.frame_duration_ms,
        meta=meta,
    )
