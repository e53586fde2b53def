"""Write a phantom subject in the ACDC layout, plus its dense ground truth and parameters.

Per subject (``patientNNN/``): ``Info.cfg``, ``patientNNN_4d.nii.gz`` (acquired sparse cine),
``patientNNN_frameYY[_gt].nii.gz`` for ED and ES (1-based frame numbers), ``patientNNN_dense_4d.nii.gz``,
``patientNNN_dense_gt_4d.nii.gz`` and ``patientNNN_params.json``. All ``_gt`` files use ACDC's labels
(1 RV cavity, 2 myocardium, 3 LV cavity), so the ACDC reader serves the phantom too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from calid_lightning.data.phantom.config import PhantomSubject
from calid_lightning.data.subject import LV_CAVITY, MYOCARDIUM, RV_CAVITY

ACDC_LABELS = {LV_CAVITY: 3, MYOCARDIUM: 2, RV_CAVITY: 1}


def to_acdc(labels: np.ndarray) -> np.ndarray:
    """Map internal labels (1 LV, 2 myo, 3 RV) to ACDC's (3 LV, 2 myo, 1 RV)."""
    lut = np.zeros(256, np.uint8)
    for internal, acdc in ACDC_LABELS.items():
        lut[internal] = acdc
    return lut[labels]


def patient_dir(out_dir: Path, index: int) -> Path:
    """``out_dir/patientNNN`` for a 1-based subject index."""
    return Path(out_dir) / f"patient{index:03d}"


def _nifti(data: np.ndarray, affine: np.ndarray, frame_ms: float | None) -> nib.Nifti1Image:
    img = nib.Nifti1Image(data, affine)
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
    """
    folder = patient_dir(out_dir, index)
    folder.mkdir(parents=True, exist_ok=True)
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
    (folder / "Info.cfg").write_text("".join(f"{k}: {v}\n" for k, v in info.items()))
    image = subject.sparse_image.astype(np.float32)
    labels = to_acdc(subject.sparse_labels)
    nib.save(_nifti(image, subject.sparse_affine, ms), folder / f"{name}_4d.nii.gz")
    for frame in sorted({subject.ed_frame, subject.es_frame}):
        stem = folder / f"{name}_frame{frame + 1:02d}"
        nib.save(_nifti(image[..., frame], subject.sparse_affine, None), f"{stem}.nii.gz")
        nib.save(_nifti(labels[..., frame], subject.sparse_affine, None), f"{stem}_gt.nii.gz")
    nib.save(_nifti(subject.image.astype(np.float32), subject.affine, ms), folder / f"{name}_dense_4d.nii.gz")
    nib.save(_nifti(to_acdc(subject.labels), subject.affine, ms), folder / f"{name}_dense_gt_4d.nii.gz")
    (folder / f"{name}_params.json").write_text(json.dumps(_json_ready(p), indent=2) + "\n")
    return folder


def read_params(folder: Path) -> dict[str, Any] | None:
    """The params JSON of a written subject folder, or None when absent or unreadable."""
    path = Path(folder) / f"{Path(folder).name}_params.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
