"""Write tiny subjects in each real data-set layout (ACDC + phantom extras, M&Ms, UK Biobank, NIfTI folder).

Shared by the reader tests and any test that needs files on disk. Shapes are ``(X, Y, Z, T)``; the default
12 x 10 in-plane is non-square on purpose. Labels come from :func:`heart_labels` in the internal convention
(1 LV cavity, 2 myocardium, 3 RV cavity); writers convert them to each data set's convention.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

SHAPE = (12, 10, 4, 5)
SPACING = (1.37, 1.37, 10.0)
FRAME_S = 0.03
INTERNAL_TO_ACDC = np.array([0, 3, 2, 1], dtype=np.uint8)


def default_affine(spacing: Sequence[float]) -> np.ndarray:
    """Diagonal voxel-to-world matrix with the given spacing and a non-zero origin."""
    diagonal = [*map(float, spacing), 1.0, 1.0, 1.0][:3]
    affine = np.diag([*diagonal, 1.0])
    affine[:3, 3] = (-7.0, 3.5, 20.0)
    return affine


def write_nifti(
    path: str | Path,
    array: np.ndarray,
    zooms: Sequence[float] | None = None,
    affine: np.ndarray | None = None,
    time_unit: str = "sec",
) -> Path:
    """Save ``array`` with explicit header zooms (spacing, plus the frame duration for 4D) and affine."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    zooms = tuple(zooms) if zooms is not None else (1.0,) * array.ndim
    img = nib.Nifti1Image(array, default_affine(zooms[:3]) if affine is None else affine)
    img.header.set_zooms(zooms[: array.ndim])
    img.header.set_xyzt_units("mm", time_unit)
    nib.save(img, str(path))
    return path


def heart_labels(shape: Sequence[int] = SHAPE, es: int = 2, ed: int = 0) -> np.ndarray:
    """Internal labels: an LV disk in a myocardial ring with an RV crescent beside it, smallest LV at ``es``.

    The LV radius shrinks linearly from frame ``ed`` (0-based) to ``es`` and grows back after, so ES is the
    frame of minimal LV volume; the apical slice (last Z) is smaller.
    """
    nx, ny, nz, nt = shape
    x, y = np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij")
    cx, cy = 0.4 * nx - 0.3, 0.5 * ny - 0.4
    unit = min(nx, ny) / 10  # radii scale with the plane; the default 12 x 10 plane has unit 1
    labels = np.zeros(shape, dtype=np.uint8)
    for t in range(nt):
        phase, systole = (t - ed) % nt, (es - ed) % nt
        if phase <= systole:
            squeeze = phase / systole if systole else 1.0
        else:
            squeeze = (nt - phase) / (nt - systole) * 0.9
        for z in range(nz):
            scale = 0.7 if z == nz - 1 else 1.0
            r_lv = (2.3 - 1.3 * squeeze) * scale * unit
            r_epi = r_lv + 1.4 * unit
            d_lv = np.hypot(x - cx, y - cy)
            d_rv = np.hypot(x - (cx + r_epi + 1.8 * unit), y - cy)
            plane = np.zeros((nx, ny), dtype=np.uint8)
            plane[(d_rv < 2.6 * scale * unit) & (d_lv >= r_epi)] = 3
            plane[d_lv < r_epi] = 2
            plane[d_lv < r_lv] = 1
            labels[:, :, z, t] = plane
    return labels


def heart_image(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Float32 cine from labels: bright blood, darker myocardium, dim background, a little noise."""
    intensity = np.array([0.1, 1.0, 0.3, 0.9], dtype=np.float32)
    noise = np.random.default_rng(seed).normal(0, 0.02, labels.shape).astype(np.float32)
    return intensity[labels] + noise


def _dense(array: np.ndarray, factor: int, labels: bool) -> np.ndarray:
    """Dense stack along Z whose every ``factor``-th slice is the sparse one (linear; nearest for labels)."""
    nz = array.shape[2]
    z = np.arange((nz - 1) * factor + 1) / factor
    low = np.minimum(np.floor(z).astype(int), nz - 1)
    high = np.minimum(low + 1, nz - 1)
    w = (z - low)[None, None, :, None]
    if labels:
        return np.where(w < 0.5, array[:, :, low], array[:, :, high]).astype(array.dtype)
    return ((1 - w) * array[:, :, low] + w * array[:, :, high]).astype(array.dtype)


def write_acdc_subject(
    root: str | Path,
    idx: int,
    shape: Sequence[int] = SHAPE,
    spacing: Sequence[float] = SPACING,
    ed: int = 1,
    es: int = 3,
    labels: bool = True,
    dense_factor: int | None = None,
    affine: np.ndarray | None = None,
    params: Mapping | None = None,
    info: Mapping[str, object] | None = None,
) -> Path:
    """``root/patientNNN/`` in ACDC layout; ``ed``/``es`` are 1-based as in Info.cfg.

    ``info`` overrides Info.cfg lines (a value None drops the line). ``dense_factor`` adds the phantom's dense
    truth (every ``dense_factor``-th dense slice equals the sparse one) and ``params`` its JSON.
    """
    sid = f"patient{idx:03d}"
    directory = Path(root) / sid
    directory.mkdir(parents=True, exist_ok=True)
    internal = heart_labels(shape, es=es - 1, ed=ed - 1)
    image = heart_image(internal, seed=idx)
    acdc = INTERNAL_TO_ACDC[internal]
    lines = {"ED": ed, "ES": es, "Group": "NOR", "Height": 180.0, "NbFrame": shape[3], "Weight": 75.0}
    lines.update(info or {})
    (directory / "Info.cfg").write_text("".join(f"{k}: {v}\n" for k, v in lines.items() if v is not None))
    affine = default_affine(spacing) if affine is None else affine
    zooms = (*spacing, FRAME_S)
    write_nifti(directory / f"{sid}_4d.nii.gz", image, zooms, affine)
    for frame in dict.fromkeys((ed, es)):
        if not 1 <= frame <= shape[3]:
            continue
        write_nifti(directory / f"{sid}_frame{frame:02d}.nii.gz", image[..., frame - 1], spacing, affine)
        if labels:
            write_nifti(
                directory / f"{sid}_frame{frame:02d}_gt.nii.gz", acdc[..., frame - 1], spacing, affine
            )
    if dense_factor:
        dense_zooms = (spacing[0], spacing[1], spacing[2] / dense_factor, FRAME_S)
        dense_affine = affine @ np.diag([1.0, 1.0, 1.0 / dense_factor, 1.0])
        write_nifti(
            directory / f"{sid}_dense_4d.nii.gz",
            _dense(image, dense_factor, False),
            dense_zooms,
            dense_affine,
        )
        write_nifti(
            directory / f"{sid}_dense_gt_4d.nii.gz",
            _dense(acdc, dense_factor, True),
            dense_zooms,
            dense_affine,
        )
    if params is not None:
        (directory / f"{sid}_params.json").write_text(json.dumps(dict(params)))
    return directory


def write_mnms_subject(
    root: str | Path,
    code: str,
    shape: Sequence[int] = SHAPE,
    spacing: Sequence[float] = SPACING,
    ed: int = 0,
    es: int = 2,
    labels: bool = True,
    split: str = "Training/Labeled",
    acdc_order: bool = False,
) -> Path:
    """``root/<split>/<code>/<code>_sa[_gt].nii.gz``; labels only at ED and ES (0-based).

    ``acdc_order`` writes the labels in the ACDC order (1 RV, 3 LV), the swap the reader must reject.
    """
    directory = Path(root) / split / code
    internal = heart_labels(shape, es=es, ed=ed)
    write_nifti(directory / f"{code}_sa.nii.gz", heart_image(internal), (*spacing, FRAME_S))
    if labels:
        gt = np.zeros_like(internal)
        for frame in (ed, es):
            gt[..., frame] = internal[..., frame]
        if acdc_order:
            gt = INTERNAL_TO_ACDC[gt]
        write_nifti(directory / f"{code}_sa_gt.nii.gz", gt, (*spacing, FRAME_S))
    return directory


def write_mnms_csv(path: str | Path, rows: Mapping[str, tuple[object, object]], vendor: str = "A") -> Path:
    """The M&Ms information CSV with the real file's columns; ``rows`` maps code -> (ED, ES), 0-based."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["", "External code", "VendorName", "Vendor", "Centre", "ED", "ES", "Pathology"])
        for number, (code, (ed, es)) in enumerate(rows.items()):
            writer.writerow([number, code, "Siemens", vendor, 1, ed, es, "NOR"])
    return path


def write_ukbb_subject(
    root: str | Path,
    eid: str,
    shape: Sequence[int] = SHAPE,
    spacing: Sequence[float] = (1.8, 1.8, 10.0),
    es: int = 2,
    seg: str | None = "4d",
    es_image: bool = True,
) -> Path:
    """``root/<eid>/sa.nii.gz`` plus ``seg_sa.nii.gz`` (``seg="4d"``), ``seg_sa_ED/ES`` (``"ed_es"``) or none.

    ``es_image`` also writes ``sa_ES.nii.gz`` (the converter's ES frame, used to place ``seg_sa_ES``).
    """
    directory = Path(root) / eid
    internal = heart_labels(shape, es=es)
    image = heart_image(internal, seed=int(eid) % 1000 if eid.isdigit() else 0)
    write_nifti(directory / "sa.nii.gz", image, (*spacing, FRAME_S))
    if seg == "4d":
        write_nifti(directory / "seg_sa.nii.gz", internal, (*spacing, FRAME_S))
    elif seg == "ed_es":
        write_nifti(directory / "seg_sa_ED.nii.gz", internal[..., 0], spacing)
        write_nifti(directory / "seg_sa_ES.nii.gz", internal[..., es], spacing)
        if es_image:
            write_nifti(directory / "sa_ES.nii.gz", image[..., es], spacing)
    return directory


def write_folder_subject(
    root: str | Path,
    name: str,
    shape: Sequence[int] = SHAPE,
    spacing: Sequence[float] = SPACING,
    es: int = 2,
    labels: bool = True,
    label_suffix: str = "_gt",
    acdc_order: bool = False,
) -> Path:
    """``root/<name>.nii.gz`` (3D when ``shape`` has 3 entries) and ``root/<name><label_suffix>.nii.gz``."""
    full = (*shape, 1) if len(shape) == 3 else tuple(shape)
    internal = heart_labels(full, es=min(es, full[3] - 1))
    image = heart_image(internal)
    zooms = (*spacing, FRAME_S)
    if len(shape) == 3:
        internal, image = internal[..., 0], image[..., 0]
    path = write_nifti(Path(root) / f"{name}.nii.gz", image, zooms)
    if labels:
        write_nifti(
            Path(root) / f"{name}{label_suffix}.nii.gz",
            INTERNAL_TO_ACDC[internal] if acdc_order else internal,
            zooms,
        )
    return path
