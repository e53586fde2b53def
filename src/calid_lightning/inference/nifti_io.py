"""NIfTI in, NIfTI out: a sparse short-axis stack for the upsampler, the dense result with correct geometry.

Reading reuses the readers' validation (:func:`calid_lightning.data.readers.nifti.load_image`) and the
training intensity normalisation (:func:`calid_lightning.data.preprocess.intensity_range`: subject
percentiles -> [0, 1], clipped) with the percentiles the model's checkpoint records
(:func:`trained_preprocessing`), keeping the two intensity values so generated slices can be mapped back to
the input's intensity scale. Writing keeps orientation and origin: the slice (third) column of the affine is
scaled by ``new_dz / dz``, so output slice 0 lies where input slice 0 lay and output slice ``K * j`` where
input slice ``j`` lay. Voxels of acquired slices are the input values exactly (float32 output).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from torch import Tensor

from calid_lightning.checkpoint_file import read_checkpoint
from calid_lightning.data.preprocess import (
    DEFAULT_PERCENTILES,
    check_percentiles,
    intensity_range,
    scale_intensity,
)
from calid_lightning.data.readers.nifti import check_affine, load_image
from calid_lightning.data.subject import DataError
from calid_lightning.inference.upsample import split_positions
from calid_lightning.io_safety import atomic_save

DATAMODULE_HPARAMS = "datamodule_hyper_parameters"
"""Where Lightning saves the data module's ``save_hyperparameters`` in every checkpoint a Trainer writes."""
SPACING_TOLERANCE = 0.1
"""Relative in-plane spacing difference from the model's ``data.pixel_spacing`` that ``calid upsample``
warns about (it does not resample in-plane, so the anatomy would be at another scale than in training)."""


@dataclass
class SparseStack:
    """An acquired stack: its input voxel values, the normalised slices for the engine and its geometry.

    ``values`` is float32 ``(X, Y, Z, T)`` (``T = 1`` for a 3D file); ``stack`` is ``(Z, T, 1, X, Y)`` in
    [0, 1] (frames are independent items: 4D input is upsampled frame by frame by a 2D interpolator);
    ``cine_stack`` is the same data as ``(Z, 1, 1, T, X, Y)`` (each slice's whole cine is one item, for a
    2D+T interpolator; :func:`frames_from_cine` turns its output back).
    """

    path: Path
    values: np.ndarray
    stack: Tensor
    low: float
    high: float
    spacing: tuple[float, float, float]
    affine: np.ndarray
    header: nib.Nifti1Header
    is_4d: bool

    @property
    def num_slices(self) -> int:
        return int(self.values.shape[2])

    @property
    def cine_stack(self) -> Tensor:
        """``(Z, 1, 1, T, X, Y)``: one item per slice, its whole cine (the 2D+T model's input)."""
        return self.stack.transpose(1, 2).unsqueeze(1)

    def to_intensity(self, normalised: np.ndarray) -> np.ndarray:
        """Invert the percentile scaling (float32)."""
        return (self.low + normalised.astype(np.float64) * (self.high - self.low)).astype(np.float32)


@dataclass(frozen=True)
class TrainedPreprocessing:
    """What of a model's training preprocessing the input must match, read from its checkpoint.

    ``percentiles`` normalise the input (``data.intensity_percentiles`` of the data module the model was
    trained with); ``pixel_spacing`` is the in-plane spacing the training data were resampled to (None: kept
    as acquired). ``recorded`` is False for a checkpoint without its data module's hyperparameters (saved
    outside a Trainer): the defaults then apply, and :meth:`warnings` says so.
    """

    percentiles: tuple[float, float] = DEFAULT_PERCENTILES
    pixel_spacing: float | None = None
    recorded: bool = False
    checkpoint: Path | None = None

    def warnings(self, sparse: SparseStack) -> list[str]:
        """One line per disagreement of the input or the checkpoint with the training data (may be empty)."""
        notes = []
        if self.checkpoint is not None and not self.recorded:
            notes.append(
                f"{self.checkpoint}: records no {DATAMODULE_HPARAMS}.intensity_percentiles (saved "
                f"without its data module); normalising with the default {list(self.percentiles)}"
            )
        spacing = self.pixel_spacing
        if spacing is not None and any(abs(d / spacing - 1) > SPACING_TOLERANCE for d in sparse.spacing[:2]):
            dx, dy = sparse.spacing[:2]
            notes.append(
                f"{sparse.path}: in-plane spacing {dx:g} x {dy:g} mm, but the model was trained on "
                f"{spacing:g} mm pixels (data.pixel_spacing) and calid upsample does not resample in-plane; "
                f"resample the input to {spacing:g} mm for results like the training data's"
            )
        return notes


def trained_preprocessing(path: str | Path) -> TrainedPreprocessing:
    """The preprocessing recorded in the checkpoint at ``path`` by its Trainer (its data module's settings).

    For a CaLID model that is the interpolator's data module, not the embedded VAE's: the interpolator was
    trained on (and its VAE encoded) images normalised that way. A checkpoint without the record gets the
    defaults (``recorded`` False). Raises :class:`DataError` naming the file and field for an invalid record.
    """
    path = Path(path)
    data = read_checkpoint(path).get(DATAMODULE_HPARAMS)
    if data is None:
        return TrainedPreprocessing(checkpoint=path)
    if not isinstance(data, Mapping):
        raise DataError(
            path,
            f"{DATAMODULE_HPARAMS} is a {type(data).__name__}, expected the data module's settings (a dict)",
        )
    field = f"{DATAMODULE_HPARAMS}.intensity_percentiles"
    try:
        percentiles = check_percentiles(data.get("intensity_percentiles", DEFAULT_PERCENTILES), field)
    except ValueError as error:
        raise DataError(path, str(error)) from None
    spacing = data.get("pixel_spacing")
    if spacing is not None and (not isinstance(spacing, int | float) or spacing <= 0):
        raise DataError(
            path,
            f"{DATAMODULE_HPARAMS}.pixel_spacing must be a positive number of mm or null; got {spacing!r}",
        )
    return TrainedPreprocessing(
        percentiles=percentiles,
        pixel_spacing=None if spacing is None else float(spacing),
        recorded="intensity_percentiles" in data,
        checkpoint=path,
    )


def read_sparse_stack(
    path: str | Path, percentiles: tuple[float, float] = DEFAULT_PERCENTILES
) -> SparseStack:
    """Read a 3D ``(X, Y, Z)`` or 4D ``(X, Y, Z, T)`` NIfTI stack and normalise it like the training data
    (``percentiles``: those the model was trained with, :attr:`TrainedPreprocessing.percentiles`).

    Raises :class:`DataError` naming the file for non-NIfTI input, 2D/5D images, fewer than 2 slices,
    NaN/Inf voxels, all-zero or constant volumes, and a singular or sheared affine (checked before any
    model runs, since the output must be written with it).
    """
    volume = load_image(path, ndims=(3, 4))
    check_affine(volume.path, volume.affine)
    values = volume.array if volume.array.ndim == 4 else volume.array[..., None]
    low, high = intensity_range(values, percentiles)
    if high <= low:
        raise DataError(volume.path, f"constant intensity {low}: nothing to normalise or interpolate")
    normalised = scale_intensity(values, low, high)
    stack = torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 3, 0, 1)))[:, :, None]
    header = nib.load(str(volume.path)).header.copy()
    return SparseStack(
        path=volume.path,
        values=np.ascontiguousarray(values, dtype=np.float32),
        stack=stack,
        low=low,
        high=high,
        spacing=volume.spacing,
        affine=volume.affine,
        header=header,
        is_4d=volume.array.ndim == 4,
    )


def frames_from_cine(dense: Tensor) -> Tensor:
    """A 2D+T upsampler's ``(Znew, 1, 1, T, X, Y)`` output -> the ``(Znew, T, 1, X, Y)`` layout of writing."""
    if dense.ndim != 6 or dense.shape[1] != 1 or dense.shape[2] != 1:
        raise ValueError(f"expected a cine stack (Znew, 1, 1, T, X, Y), got shape {tuple(dense.shape)}")
    return dense[:, 0].transpose(1, 2)


def dense_affine(affine: np.ndarray, dz: float, new_dz: float) -> np.ndarray:
    """The input affine with its slice column scaled by ``new_dz / dz`` (same orientation and origin)."""
    out = np.array(affine, dtype=np.float64, copy=True)
    out[:3, 2] *= new_dz / dz
    return out


def _to_volume(sparse: SparseStack, dense: Tensor) -> np.ndarray:
    """``(Znew, T, 1, X, Y)`` -> float32 ``(X, Y, Znew, T)``."""
    array = dense.detach().to("cpu", torch.float32)[:, :, 0].numpy()
    return np.ascontiguousarray(array.transpose(2, 3, 0, 1))


def _save(path: str | Path, sparse: SparseStack, volume: np.ndarray, new_dz: float) -> Path:
    """Write ``(X, Y, Znew, T)`` float32 with the dense geometry, header fields kept from the input."""
    path = Path(path)
    if not path.name.endswith((".nii", ".nii.gz")):
        raise DataError(path, "output must be a NIfTI file name ending in .nii or .nii.gz")
    data = volume if sparse.is_4d else volume[..., 0]
    affine = dense_affine(sparse.affine, sparse.spacing[2], new_dz)
    header = sparse.header.copy()
    qcode, scode = int(header["qform_code"]), int(header["sform_code"])
    image = nib.Nifti1Image(data.astype(np.float32), affine, header=header)
    out = image.header
    out.set_data_dtype(np.float32)
    zooms = (*sparse.spacing[:2], float(new_dz))
    if sparse.is_4d:
        zooms = (*zooms, float(sparse.header.get_zooms()[3]) if len(sparse.header.get_zooms()) > 3 else 1.0)
    out.set_zooms(zooms)
    out.set_qform(affine, code=qcode or scode or 1)
    out.set_sform(affine, code=scode or qcode or 1)
    out.set_xyzt_units(*sparse.header.get_xyzt_units())
    for field in ("slice_code", "slice_start", "slice_end", "slice_duration"):
        out[field] = 0
    return atomic_save(path, lambda temp: nib.save(image, str(temp)))


def write_dense_stack(
    path: str | Path, sparse: SparseStack, dense: Tensor, positions: Sequence[float], new_dz: float
) -> Path:
    """Write the upsampler's ``(Znew, T, 1, X, Y)`` output (in [0, 1]) in the input's intensity scale.

    Acquired positions get the input voxel values exactly; generated slices go through the inverse scaling.
    """
    volume = sparse.to_intensity(_to_volume(sparse, dense))
    acquired, _ = split_positions(positions)
    for i, j in acquired.items():
        volume[:, :, i] = sparse.values[:, :, j]
    return _save(path, sparse, volume, new_dz)


def write_std_map(
    path: str | Path, sparse: SparseStack, std: Tensor, positions: Sequence[float], new_dz: float
) -> Path:
    """Write the per-voxel standard deviation over samples in input intensity units (0 at acquired slices)."""
    volume = (_to_volume(sparse, std).astype(np.float64) * (sparse.high - sparse.low)).astype(np.float32)
    acquired, _ = split_positions(positions)
    for i in acquired:
        volume[:, :, i] = 0.0
    return _save(path, sparse, volume, new_dz)


def std_path(output: str | Path) -> Path:
    """``DENSE.nii.gz`` -> ``DENSE_std.nii.gz`` (same folder)."""
    output = Path(output)
    for suffix in (".nii.gz", ".nii"):
        if output.name.endswith(suffix):
            return output.with_name(output.name[: -len(suffix)] + "_std" + suffix)
    return output.with_name(output.name + "_std.nii.gz")
