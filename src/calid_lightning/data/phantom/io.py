"""Write a phantom subject in the ACDC layout, plus its dense ground truth and parameters.

Per subject (``patientNNN/``): ``Info.cfg``, ``patientNNN_4d.nii.gz`` (acquired sparse cine),
``patientNNN_frameYY[_gt].nii.gz`` for ED and ES (1-based frame numbers), ``patientNNN_dense_4d.nii.gz``,
``patientNNN_dense_gt_4d.nii.gz`` and ``patientNNN_params.json``. All ``_gt`` files use ACDC's labels
(1 RV cavity, 2 myocardium, 3 LV cavity), so the ACDC reader serves the phantom too.

Images are int16 with one ``scl_slope`` per subject (nibabel and every NIfTI reader apply it), so the sparse
file equals the dense file at the acquired positions exactly. The writer only writes into a folder it owns:
one marked by :data:`MANIFEST`, created when the folder is new or empty; a folder that holds anything else
is refused. Every file is written to a temporary file beside it and renamed into place.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from calid_lightning.data.phantom.config import PhantomSubject
from calid_lightning.data.subject import LV_CAVITY, MYOCARDIUM, RV_CAVITY, DataError
from calid_lightning.io_safety import atomic_path, atomic_write_text

ACDC_LABELS = {LV_CAVITY: 3, MYOCARDIUM: 2, RV_CAVITY: 1}
MANIFEST = ".calid_phantom.json"
"""Marks a folder the phantom writer owns; lists the subject folders it wrote."""
INT16_MAX = 32000


class PhantomFolderError(DataError):
    """A folder the phantom writer must not write into (it holds files the writer did not create)."""


def claim_folder(out_dir: Path) -> dict[str, Any]:
    """The manifest of ``out_dir``, created when the folder is new or empty; refuse any other folder."""
    out_dir = Path(out_dir)
    manifest = out_dir / MANIFEST
    if manifest.is_file():
        try:
            data = json.loads(manifest.read_text())
        except (OSError, ValueError) as err:
            raise PhantomFolderError(manifest, f"unreadable phantom manifest ({err})") from err
        data.setdefault("subjects", [])
        return data
    legacy = _legacy_subjects(out_dir)
    if legacy is None:
        raise PhantomFolderError(
            out_dir,
            f"not empty and not a phantom folder (no {MANIFEST}); the phantom is only written into a new or "
            "empty folder (to read the data here, drop the phantom settings: --data.init_args.phantom null)",
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {"writer": "calid_lightning.data.phantom", "subjects": legacy}
    atomic_write_text(manifest, json.dumps(data, indent=2) + "\n")
    return data


def _legacy_subjects(out_dir: Path) -> list[str] | None:
    """Subject names when ``out_dir`` is missing, empty or holds only phantom subjects written before the
    manifest existed (each ``patientNNN/`` with its params JSON naming a generator version); else None."""
    if not out_dir.exists():
        return []
    if not out_dir.is_dir():
        return None
    names = []
    for entry in out_dir.iterdir():
        params = read_params(entry) if entry.is_dir() and entry.name.startswith("patient") else None
        if not params or "generator_version" not in params:
            return None
        names.append(entry.name)
    return sorted(names)


def _record(out_dir: Path, manifest: dict[str, Any], name: str) -> None:
    if name not in manifest["subjects"]:
        manifest["subjects"] = sorted([*manifest["subjects"], name])
        atomic_write_text(Path(out_dir) / MANIFEST, json.dumps(manifest, indent=2) + "\n")


def to_acdc(labels: np.ndarray) -> np.ndarray:
    """Map internal labels (1 LV, 2 myo, 3 RV) to ACDC's (3 LV, 2 myo, 1 RV)."""
    lut = np.zeros(256, np.uint8)
    for internal, acdc in ACDC_LABELS.items():
        lut[internal] = acdc
    return lut[labels]


def patient_dir(out_dir: Path, index: int) -> Path:
    """``out_dir/patientNNN`` for a 1-based subject index."""
    return Path(out_dir) / f"patient{index:03d}"


def _nifti(
    data: np.ndarray, affine: np.ndarray, frame_ms: float | None, slope: float | None = None
) -> nib.Nifti1Image:
    """A NIfTI image; with ``slope`` the data are stored as int16 ``round(data / slope)`` with that slope."""
    if slope is not None:
        data = np.clip(np.round(data / slope), -32767, 32767).astype(np.int16)
    img = nib.Nifti1Image(data, affine)
    if slope is not None:
        img.header.set_slope_inter(slope, 0.0)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    zooms = tuple(float(z) for z in np.linalg.norm(affine[:3, :3], axis=0))
    if data.ndim == 4:
        img.header.set_zooms((*zooms, float(frame_ms or 1.0)))
        img.header.set_xyzt_units("mm", "msec")
    else:
        img.header.set_zooms(zooms)
        img.header.set_xyzt_units("mm")
    return img


def _json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_subject(subject: PhantomSubject, out_dir: Path, index: int) -> Path:
    """Write ``subject`` as ``out_dir/patientNNN`` (ACDC layout plus dense truth); return that folder.

    The params JSON is written last, so its presence marks a complete subject (used as the cache key).
    Raises :class:`PhantomFolderError` when ``out_dir`` is not the writer's own (see :func:`claim_folder`).
    """
    manifest = claim_folder(out_dir)
    folder = patient_dir(out_dir, index)
    if folder.exists() and folder.name not in manifest["subjects"]:
        raise PhantomFolderError(folder, f"exists but was not written by the phantom (not in {MANIFEST})")
    folder.mkdir(parents=True, exist_ok=True)
    _record(out_dir, manifest, folder.name)
    name = folder.name
    ms = subject.frame_duration_ms
    p = subject.params
    info = {
        "ED": subject.ed_frame + 1,
        "ES": subject.es_frame + 1,
        "Group": subject.pathology,
        "Height": p["height_cm"],
        "Weight": p["weight_kg"],
        "NbFrame": subject.image.shape[3],
    }
    (folder / f"{name}_params.json").unlink(missing_ok=True)  # written last: marks a complete subject
    atomic_write_text(folder / "Info.cfg", "".join(f"{k}: {v}\n" for k, v in info.items()))
    peak = max(float(np.abs(subject.image).max()), float(np.abs(subject.sparse_image).max()), 1e-6)
    slope = float(np.float32(peak / INT16_MAX))
    labels = to_acdc(subject.sparse_labels)
    files = [
        (f"{name}_4d.nii.gz", _nifti(subject.sparse_image, subject.sparse_affine, ms, slope)),
        (f"{name}_dense_4d.nii.gz", _nifti(subject.image, subject.affine, ms, slope)),
        (f"{name}_dense_gt_4d.nii.gz", _nifti(to_acdc(subject.labels), subject.affine, ms)),
    ]
    for frame in sorted({subject.ed_frame, subject.es_frame}):
        stem = f"{name}_frame{frame + 1:02d}"
        files.append(
            (f"{stem}.nii.gz", _nifti(subject.sparse_image[..., frame], subject.sparse_affine, None, slope))
        )
        files.append((f"{stem}_gt.nii.gz", _nifti(labels[..., frame], subject.sparse_affine, None)))
    for file_name, img in files:
        with atomic_path(folder / file_name) as temp:
            nib.save(img, temp)
    atomic_write_text(folder / f"{name}_params.json", json.dumps(_json_ready(p), indent=2) + "\n")
    return folder


def read_params(folder: Path) -> dict[str, Any] | None:
    """The params JSON of a written subject folder, or None when absent or unreadable."""
    path = Path(folder) / f"{Path(folder).name}_params.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
