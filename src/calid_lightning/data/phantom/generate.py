"""The embedded procedural 3D+t cardiac phantom: a labelled short-axis cine fully determined by its seed.

``generate_subject(seed, config)`` renders the dense ground truth (fine slices) and the acquired sparse
stack (every ``sparse_factor``-th dense slice); ``write_dataset`` writes subjects in the ACDC layout and
skips those already on disk with the same parameters. Anatomy lives in :mod:`.anatomy`, motion in
:mod:`.motion`, the body around the heart and image formation in :mod:`.context`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.spatial.transform import Rotation

from calid_lightning.data.phantom.anatomy import Heart, HeartGrid, heart_grid, render_heart, sample_heart
from calid_lightning.data.phantom.config import PhantomConfig, PhantomSubject
from calid_lightning.data.phantom.context import Context, bias_field, render_context, rician, sample_context
from calid_lightning.data.phantom.io import patient_dir, read_params, write_subject
from calid_lightning.data.phantom.motion import contraction, sample_cycle
from calid_lightning.data.subject import LV_CAVITY, MYOCARDIUM, RV_CAVITY

GENERATOR_VERSION = 1


def subject_seed(seed: int, index: int) -> int:
    """Seed of subject ``index`` of a data set made with ``seed``: distinct per (seed, index) pair."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def _render(
    heart: Heart,
    ctx: Context,
    contractions: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    blur_px: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free image and labels ``(X, Y, Z, T)`` at stack points ``x, y, z`` (broadcast to X, Y, Z)."""
    full = heart_grid(heart, x, y, z)
    shape = full.w.shape
    box = _heart_box(heart, full)
    grid = HeartGrid(full.u0[box], full.v0[box], full.w[box])
    mediastinum = np.zeros(shape, bool)
    scratch_img, scratch_lab = np.zeros(grid.w.shape, np.float32), np.zeros(grid.w.shape, np.uint8)
    mediastinum[box] = render_heart(heart, grid, 0.0, scratch_img, scratch_lab, envelope_margin=5.0)
    background = render_context(ctx, x - heart.centre[0], y - heart.centre[1], z, mediastinum)
    image = np.empty((*shape, len(contractions)), np.float32)
    labels = np.zeros((*shape, len(contractions)), np.uint8)
    for t, c in enumerate(contractions):
        image[..., t] = background
        render_heart(heart, grid, float(c), image[..., t][box], labels[..., t][box])
    if blur_px > 0:
        image = gaussian_filter(image, sigma=(blur_px, blur_px, 0, 0), mode="nearest")
    return image, labels


def _heart_box(heart: Heart, grid: HeartGrid) -> tuple[slice, slice, slice]:
    """In-plane bounding box of everything the heart can draw (ventricles, atria, fat, envelope margin)."""
    epi = heart.frame(0.0).epi_radius
    ra, rb = heart.rv_axes
    reach = max(
        heart.rv_centre + max(ra, rb) + heart.rv_wall,
        1.3 * epi,
        heart.rv_centre + 0.3 * ra + 30,
        0.3 * epi + 30,
    )
    inside = (np.hypot(grid.u0, grid.v0) < reach + 20).any(axis=2)
    rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    if rows.size == 0:
        return slice(0, 0), slice(0, 0), slice(None)
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1), slice(None)


def _wall_thickness(labels: np.ndarray, dx: float, dy: float) -> float:
    """Mean LV wall thickness (mm) of one slice from the areas of the cavity and of cavity + myocardium."""
    lv = np.count_nonzero(labels == LV_CAVITY) * dx * dy
    myo = np.count_nonzero(labels == MYOCARDIUM) * dx * dy
    return float(np.sqrt((lv + myo) / np.pi) - np.sqrt(lv / np.pi)) if myo > 0 else 0.0


def _affines(rng: np.random.Generator, spacing: tuple[float, float, float], factor: int, offset: int):
    """An oblique short-axis orientation: (dense affine, sparse affine), sharing rotation and slice planes."""
    angles = [rng.uniform(-60, -20), rng.uniform(20, 50), rng.uniform(-180, 180)]
    rot = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
    dx, dy, dz = spacing
    dense = np.eye(4)
    dense[:3, :3] = rot * np.array([dx, dy, dz])
    dense[:3, 3] = rng.uniform(-120, 120, 3)
    sparse = dense.copy()
    sparse[:3, 2] = dense[:3, 2] * factor
    sparse[:3, 3] = dense[:3, 3] + offset * dense[:3, 2]
    return dense, sparse


def generate_subject(seed: int, config: PhantomConfig | None = None) -> PhantomSubject:
    """Render one subject; the same ``(seed, config)`` always gives identical arrays."""
    config = config or PhantomConfig()
    rng = np.random.default_rng(seed)
    pathology = str(rng.choice(config.pathologies))
    nx, ny = config.size
    dx = config.pixel_spacing or float(rng.uniform(1.25, 1.8) * max(1.0, 128 / min(nx, ny)))
    dz, k, frames = config.dense_spacing, config.sparse_factor, config.frames
    cycle, es_frame = sample_cycle(rng, frames)
    heart = sample_heart(rng, pathology)
    ctx = sample_context(rng, heart.angle0 + 0.5 * heart.angle_gradient)
    below, above = rng.uniform(5, 12), rng.uniform(12, 25)
    bottom, top = -heart.apex_wall - below, heart.height + above
    nz = config.dense_slices or math.ceil((top - bottom) / dz) + 1
    z0 = (bottom + top) / 2 - (nz - 1) * dz / 2
    offset = int(config.sparse_offset if config.sparse_offset is not None else rng.integers(k))
    n_sparse = (nz - 1 - offset) // k + 1
    if n_sparse < 2:
        raise ValueError(f"PhantomConfig: dense_slices={nz} with sparse_factor={k} keeps fewer than 2 slices")
    snr = float(rng.uniform(*config.snr)) if config.snr else None
    bias_amp = float(rng.uniform(*config.bias))
    rr_ms = float(rng.uniform(700, 1100))
    height_cm, weight_kg = round(float(rng.uniform(150, 195))), round(float(rng.uniform(50, 110)))
    shifts = np.clip(rng.normal(0, config.breath_hold_shift_mm, (2, n_sparse)), -6, 6)
    dense_affine, sparse_affine = _affines(rng, (dx, dx, dz), k, offset)
    noise_rng = np.random.default_rng(rng.integers(2**62))
    bias_rng = np.random.default_rng(rng.integers(2**62))

    x = ((np.arange(nx) - (nx - 1) / 2) * dx).astype(np.float32)[:, None, None]
    y = ((np.arange(ny) - (ny - 1) / 2) * dx).astype(np.float32)[None, :, None]
    z = (z0 + np.arange(nz) * dz).astype(np.float32)[None, None, :]
    c = contraction(np.arange(frames) / frames, cycle)
    image, labels = _render(heart, ctx, c, x, y, z, config.blur_px)
    bias = bias_field(bias_rng, x, y, z, bias_amp)
    kept = offset + k * np.arange(n_sparse)
    if config.slice_profile or config.breath_hold_shift_mm > 0:
        sparse_image, sparse_labels = _acquire(heart, ctx, c, x, y, z[..., kept], shifts, config)
    else:
        sparse_image, sparse_labels = image[:, :, kept].copy(), labels[:, :, kept].copy()
    image *= bias[..., None]
    sparse_image *= bias[:, :, kept, None]
    if snr is not None:
        noise = noise_rng.standard_normal((2, *image.shape), dtype=np.float32)
        sigma = heart.blood / snr
        image = rician(image, sigma, noise)
        sparse_image = rician(sparse_image, sigma, noise[:, :, :, kept])

    voxel_ml = dx * dx * dz / 1000.0
    lv = np.count_nonzero(labels == LV_CAVITY, axis=(0, 1, 2)) * voxel_ml
    rv = np.count_nonzero(labels == RV_CAVITY, axis=(0, 1, 2)) * voxel_ml
    mid = int(np.clip(round((heart.height / 2 - z0) / dz), 0, nz - 1))
    params: dict[str, Any] = {
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "pathology": pathology,
        "ed_frame": 0,
        "es_frame": es_frame,
        "es_fraction": cycle.es_fraction,
        "edv_ml": float(lv[0]),
        "esv_ml": float(lv[es_frame]),
        "ef_percent": float(100 * (lv[0] - lv[es_frame]) / lv[0]) if lv[0] > 0 else 0.0,
        "rv_edv_ml": float(rv[0]),
        "rv_esv_ml": float(rv[es_frame]),
        "lv_volume_curve_ml": lv.tolist(),
        "target_edv_ml": heart.edv,
        "target_esv_ml": heart.esv,
        "wall_thickness_mid_mm": heart.wall,
        "wall_thickness_apex_mm": heart.apex_wall,
        "wall_thickness_mid_measured_mm": _wall_thickness(labels[:, :, mid, 0], dx, dx),
        "mid_slice": mid,
        "base_descent_mm": heart.descent,
        "twist_apex_deg": float(np.rad2deg(heart.twist_apex)),
        "twist_base_deg": float(np.rad2deg(heart.twist_base)),
        "sparse_factor": k,
        "sparse_offset": offset,
        "dense_spacing": dz,
        "sparse_spacing": dz * k,
        "pixel_spacing": dx,
        "dense_slices": nz,
        "sparse_slices": n_sparse,
        "snr": snr,
        "bias_amplitude": bias_amp,
        "breath_hold_shifts_mm": shifts.T.tolist(),
        "frame_duration_ms": rr_ms / frames,
        "height_cm": height_cm,
        "weight_kg": weight_kg,
        "config": config.to_dict(),
    }
    return PhantomSubject(
        seed=int(seed),
        image=image,
        labels=labels,
        sparse_image=sparse_image,
        sparse_labels=sparse_labels,
        spacing=(dx, dx, dz * k),
        dense_spacing=(dx, dx, dz),
        affine=dense_affine,
        sparse_affine=sparse_affine,
        sparse_offset=offset,
        sparse_factor=k,
        ed_frame=0,
        es_frame=es_frame,
        frame_duration_ms=rr_ms / frames,
        pathology=pathology,
        params=params,
    )


def _acquire(
    heart: Heart,
    ctx: Context,
    c: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    shifts: np.ndarray,
    config: PhantomConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """Render the acquired slices at ``z`` with per-slice in-plane shifts and a slice profile of finite width.

    The profile is a box of ``slice_profile`` mm, integrated with sub-slices 1 mm apart; labels are taken at
    the slice centre.
    """
    xs, ys = x + shifts[0][None, None, :], y + shifts[1][None, None, :]
    image, labels = _render(heart, ctx, c, xs, ys, z, config.blur_px)
    if config.slice_profile:
        n = max(3, math.ceil(config.slice_profile)) | 1
        for delta in np.linspace(-config.slice_profile / 2, config.slice_profile / 2, n):
            if delta != 0:
                image += _render(heart, ctx, c, xs, ys, z + np.float32(delta), config.blur_px)[0]
        image /= n
    return image, labels


def _is_cached(folder: Path, seed: int, config: PhantomConfig) -> bool:
    params = read_params(folder)
    return bool(
        params
        and params.get("seed") == seed
        and params.get("generator_version") == GENERATOR_VERSION
        and params.get("config") == config.to_dict()
        and (folder / f"{folder.name}_4d.nii.gz").exists()
    )


def write_dataset(
    out: Path,
    subjects: int,
    seed: int,
    config: PhantomConfig | None = None,
    start_index: int = 1,
    progress: Callable[[int], None] | None = None,
) -> list[Path]:
    """Write ``subjects`` subjects as ``out/patientNNN`` (index from ``start_index``); return their folders.

    Subject ``i`` uses ``subject_seed(seed, i)``; a folder already holding that seed and config is kept.
    ``progress`` is called with 1 after each subject (e.g. ``tqdm.update``).
    """
    config = config or PhantomConfig()
    out = Path(out)
    folders = []
    for index in range(start_index, start_index + subjects):
        s = subject_seed(seed, index)
        folder = patient_dir(out, index)
        if not _is_cached(folder, s, config):
            folder = write_subject(generate_subject(s, config), out, index)
        folders.append(folder)
        if progress is not None:
            progress(1)
    return folders
