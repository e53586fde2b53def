"""The embedded procedural 3D+t cardiac phantom: a labelled short-axis cine fully determined by its seed.

``generate_subject(seed, config)`` renders the dense ground truth (fine slices) and the acquired sparse
stack (every ``sparse_factor``-th dense slice); ``write_dataset`` writes subjects in the ACDC layout and
skips those already on disk with the same parameters. Anatomy lives in :mod:`.anatomy`, motion in
:mod:`.motion`, the body around the heart and image formation in :mod:`.context`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from calid_lightning.data.misregistration import MAX_SHIFT_MM
from calid_lightning.data.phantom.acquisition import (
    acquire_planes,
    lowpass_matrix,
    majority_of_packed,
    noisy_magnitude,
    pack_labels,
    slab_weights,
)
from calid_lightning.data.phantom.anatomy import Heart, HeartGrid, heart_grid, render_heart, sample_heart
from calid_lightning.data.phantom.config import PhantomConfig, PhantomSubject
from calid_lightning.data.phantom.context import Context, bias_field, render_context, sample_context
from calid_lightning.data.phantom.io import claim_folder, patient_dir, read_params, write_subject
from calid_lightning.data.phantom.motion import contraction, sample_cycle
from calid_lightning.data.subject import LV_CAVITY, MYOCARDIUM, RV_CAVITY

GENERATOR_VERSION = 2


def subject_seed(seed: int, index: int) -> int:
    """Seed of subject ``index`` of a data set made with ``seed``: distinct per (seed, index) pair."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


SENTINEL = np.float32(-9.0)
"""Marks points the heart does not draw in the one-sample-per-pixel pass (no tissue has this value)."""


@dataclass
class Scene:
    """The subject's static set-up for the acquisition: grids, candidate heart points, context, operators.

    ``x, y`` are the target pixel centres (mm), ``zf`` the sub-slice centres; the fine grid has
    ``s x s`` samples per pixel; ``weights`` maps sub-slices to the dense slabs, ``ax``/``ay`` are the
    in-plane k-space truncations (:func:`~.acquisition.lowpass_matrix`).

    Frame-independent work of :func:`_render_frame`, done once: ``box`` bounds (in ``(X, Y, Zf)`` pixels)
    the pixels that can be an edge in some frame - the candidates and their in-plane neighbours, "reach";
    ``box_candidates`` are the candidates' flat indices in the box, ``slot`` (box-shaped) numbers the reach
    pixels (-1 elsewhere), and ``reach_grid`` / ``reach_fine`` hold the heart-frame coordinates and the flat
    indices in the fine box (``fine_box`` of the fine volume) of their ``s * s`` fine samples, one row per
    reach pixel. A frame only changes the fine box: ``context_box`` is the context there (flat) and
    ``acquired_context`` the noise-free acquisition ``(Z, X, Y)`` of the context alone, so a frame is
    acquired as that plus the acquisition of its heart-minus-context difference in the box (linearity).
    """

    heart: Heart
    s: int
    n_sub: int
    margin: int
    x: np.ndarray
    y: np.ndarray
    zf: np.ndarray
    offsets: np.ndarray
    candidates: np.ndarray
    grid: HeartGrid
    context: np.ndarray
    weights: np.ndarray
    ax: np.ndarray
    ay: np.ndarray
    box: tuple[slice, slice, slice]
    box_candidates: np.ndarray
    slot: np.ndarray
    reach_grid: HeartGrid
    reach_fine: np.ndarray
    fine_box: tuple[slice, slice, slice]
    context_box: np.ndarray
    acquired_context: np.ndarray


# The in-plane neighbour pairs compared to find edges: (a, b) index the two sides of each offset.
NEIGHBOURS = (
    ((slice(1, None),), (slice(None, -1),)),
    ((slice(None), slice(1, None)), (slice(None), slice(None, -1))),
    ((slice(1, None), slice(1, None)), (slice(None, -1), slice(None, -1))),
    ((slice(1, None), slice(None, -1)), (slice(None, -1), slice(1, None))),
)


def _scene(
    heart: Heart, ctx: Context, x: np.ndarray, y: np.ndarray, z: np.ndarray, dx: float, config: PhantomConfig
) -> Scene:
    """Grids, heart candidates, the static context rendered finely once and the acquisition operators."""
    s, dz = config.supersample, config.dense_spacing
    n_sub = max(1, round(dz / config.subslice_mm))
    step = dz / n_sub
    thick_truth = config.truth == "acquired" and config.slice_profile
    thickness = float(config.slice_profile) if thick_truth else dz
    margin = max(0, math.ceil((max(thickness, float(config.slice_profile or dz)) / 2 - dz / 2) / step))
    zf = (z[0] - dz / 2 + step / 2 + step * (np.arange(len(z) * n_sub + 2 * margin) - margin)).astype(
        np.float32
    )
    coarse = heart_grid(heart, x[:, None, None], y[None, :, None], zf[None, None, :])
    epi = heart.frame(0.0).epi_radius
    ra, rb = heart.rv_axes
    reach = max(
        heart.rv_centre + max(ra, rb) + heart.rv_wall,
        1.3 * epi,
        heart.rv_centre + 0.3 * ra + 30,
        0.3 * epi + 30,
    )
    top = heart.height + heart.base_tilt * reach + 50
    near = (
        (np.hypot(coarse.u0, coarse.v0) < reach + 15) & (coarse.w > -heart.apex_wall - 20) & (coarse.w < top)
    )
    loose = np.flatnonzero(near)
    grid = HeartGrid(coarse.u0.flat[loose], coarse.v0.flat[loose], coarse.w.flat[loose])
    scratch_img, scratch_lab = np.zeros(loose.size, np.float32), np.zeros(loose.size, np.uint8)
    mediastinum = np.zeros(near.shape, bool)
    mediastinum.flat[loose] = render_heart(heart, grid, 0.0, scratch_img, scratch_lab, envelope_margin=5.0)
    # Every frame draws inside the union of the end-diastolic and end-systolic envelopes (with a margin).
    inside = render_heart(heart, grid, 0.0, scratch_img, scratch_lab, envelope_margin=10.0)
    inside |= render_heart(heart, grid, 1.0, scratch_img, scratch_lab, envelope_margin=10.0)
    candidates = loose[inside]
    grid = HeartGrid(grid.u0[inside], grid.v0[inside], grid.w[inside])
    offsets = ((np.arange(s) - (s - 1) / 2) * dx / s).astype(np.float32)
    xs = (x[:, None] + offsets).reshape(-1, 1, 1)
    ys = (y[:, None] + offsets).reshape(1, -1, 1)
    fine_mediastinum = np.repeat(np.repeat(mediastinum, s, axis=0), s, axis=1)
    context = render_context(
        ctx, xs - heart.centre[0], ys - heart.centre[1], zf[None, None, :], fine_mediastinum
    )
    weights = slab_weights(z.astype(np.float64), thickness, zf.astype(np.float64), step)
    blur = config.respiratory_blur_mm
    ax = lowpass_matrix(len(x), s, config.kspace_filter)
    ay = lowpass_matrix(len(y), s, config.kspace_filter, blur_mm=blur, pixel_mm=dx)
    reach = _reach(heart, x, y, zf, offsets, candidates, near.shape)
    static = (heart, s, n_sub, margin, x, y, zf, offsets, candidates, grid, context, weights, ax, ay)
    box = reach[0]
    fine_box = (slice(box[0].start * s, box[0].stop * s), slice(box[1].start * s, box[1].stop * s), box[2])
    context_box = context[fine_box].ravel()
    return Scene(*static, *reach, fine_box, context_box, acquire_planes(context, weights, ax, ay))


def _reach(
    heart: Heart,
    x: np.ndarray,
    y: np.ndarray,
    zf: np.ndarray,
    offsets: np.ndarray,
    candidates: np.ndarray,
    shape: tuple[int, int, int],
) -> tuple[tuple[slice, slice, slice], np.ndarray, np.ndarray, HeartGrid, np.ndarray]:
    """The :class:`Scene` fields that let a frame render its edge pixels without recomputing their grid.

    An edge pixel differs from an in-plane neighbour; outside the candidates every pixel is empty, so edges
    lie among the candidates and their neighbours. Their fine samples' coordinates are computed here once,
    with the same expression as a per-frame :func:`heart_grid` of those samples, so the values are the same.
    """
    s = len(offsets)
    inside = np.zeros(shape, bool)
    inside.flat[candidates] = True
    reach = inside.copy()
    for sl_a, sl_b in NEIGHBOURS:
        reach[sl_a] |= inside[sl_b]
        reach[sl_b] |= inside[sl_a]
    rx, ry, rz = np.nonzero(reach)
    if rx.size == 0:
        box = (slice(0, 0), slice(0, 0), slice(0, 0))
    else:
        box = tuple(slice(int(a.min()), int(a.max()) + 1) for a in (rx, ry, rz))
    slot = np.full(reach[box].shape, -1, np.int32)
    slot[rx - box[0].start, ry - box[1].start, rz - box[2].start] = np.arange(rx.size, dtype=np.int32)
    cx, cy, cz = np.unravel_index(candidates, shape)
    box_candidates = np.ravel_multi_index(
        (cx - box[0].start, cy - box[1].start, cz - box[2].start), slot.shape
    )
    px = (x[rx][:, None, None] + offsets[None, :, None]).astype(np.float32)
    py = (y[ry][:, None, None] + offsets[None, None, :]).astype(np.float32)
    pz = np.broadcast_to(zf[rz][:, None, None], (rx.size, s, s))
    sub = heart_grid(heart, px, py, pz)
    grid = HeartGrid(*(a.reshape(rx.size, s * s) for a in (sub.u0, sub.v0, sub.w)))
    fine_x = ((rx - box[0].start)[:, None] * s + np.arange(s))[:, :, None]
    fine_y = ((ry - box[1].start)[:, None] * s + np.arange(s))[:, None, :]
    fine = (fine_x * (slot.shape[1] * s) + fine_y) * slot.shape[2] + (rz - box[2].start)[:, None, None]
    return box, box_candidates, slot, grid, fine.reshape(rx.size, s * s).astype(np.intp)


def _render_frame(scene: Scene, c: float, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fine heart-minus-context difference in the fine box of one frame at contraction ``c``, its labels.

    The difference is shaped like ``scene.context[scene.fine_box]``, the labels ``(X, Y, Z)``. One sample
    per pixel first; pixels whose 3x3 neighbourhood (in plane) holds the same tissue keep that sample in
    all ``s x s`` fine samples, the others (edges) are rendered at every fine sample. Tissue is compared
    before the smooth blood-flow factor, which a uniform pixel takes at its centre. The labels are the
    majority class of each voxel's fine samples (:func:`~.acquisition.majority_labels` of the fine labels,
    counted per pixel: a uniform pixel counts ``s * s`` of its class). ``out`` (box-shaped) is reused.
    """
    heart, s, slot, at = scene.heart, scene.s, scene.slot, scene.box_candidates
    values, labels = np.full(at.size, SENTINEL), np.zeros(at.size, np.uint8)
    gain = np.ones(at.size, np.float32)
    render_heart(heart, scene.grid, c, values, labels, gain=gain)
    coarse = np.full(slot.shape, SENTINEL)
    coarse.flat[at] = values
    coarse_labels = np.zeros(slot.shape, np.uint8)
    coarse_labels.flat[at] = labels
    edge = np.zeros(slot.shape, bool)
    for sl_a, sl_b in NEIGHBOURS:
        differ = (coarse[sl_a] != coarse[sl_b]) | (coarse_labels[sl_a] != coarse_labels[sl_b])
        edge[sl_a] |= differ
        edge[sl_b] |= differ
    shape = (slot.shape[0] * s, slot.shape[1] * s, slot.shape[2])
    delta = np.zeros(shape, np.float32) if out is None else out
    delta.fill(0)
    flat, context = delta.reshape(-1), scene.context_box
    uniform = (values != SENTINEL) & ~edge.flat[at]
    index = scene.reach_fine[slot.flat[at[uniform]]]
    flat[index] = (values[uniform] * gain[uniform])[:, None] - context[index]
    edges = np.flatnonzero(edge)
    rows = slot.flat[edges]
    lab_e = np.zeros((rows.size, s * s), np.uint8)
    if rows.size:
        index = scene.reach_fine[rows]
        img_e = context[index]
        g = scene.reach_grid
        render_heart(heart, HeartGrid(g.u0[rows], g.v0[rows], g.w[rows]), c, img_e, lab_e)
        flat[index] = img_e - context[index]
    # Packed class counts (pack_labels) of each pixel's s x s fine samples; empty pixels hold background.
    drawn_labels = np.where(coarse != SENTINEL, coarse_labels, 0).astype(np.uint32)
    box_counts = np.left_shift(np.uint32(s * s), 6 * drawn_labels)
    box_counts.flat[edges] = pack_labels(lab_e).sum(axis=1, dtype=np.uint32)
    counts = np.full((*slot.shape[:2], len(scene.zf)), s * s, np.uint32)
    counts[:, :, scene.box[2]] = box_counts
    nz, n_sub, m = scene.weights.shape[0], scene.n_sub, scene.margin
    summed = counts[:, :, m : m + nz * n_sub : n_sub].copy()
    for j in range(1, n_sub):
        summed += counts[:, :, m + j : m + nz * n_sub : n_sub]
    frame_labels = np.zeros((len(scene.x), len(scene.y), nz), np.uint8)
    frame_labels[scene.box[:2]] = majority_of_packed(summed)
    return delta, frame_labels


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
    shifts = np.clip(rng.normal(0, config.breath_hold_shift_mm, (2, n_sparse)), -MAX_SHIFT_MM, MAX_SHIFT_MM)
    dense_affine, sparse_affine = _affines(rng, (dx, dx, dz), k, offset)
    noise_rng = np.random.default_rng(rng.integers(2**62))
    bias_rng = np.random.default_rng(rng.integers(2**62))

    x = ((np.arange(nx) - (nx - 1) / 2) * dx).astype(np.float32)[:, None, None]
    y = ((np.arange(ny) - (ny - 1) / 2) * dx).astype(np.float32)[None, :, None]
    z = (z0 + np.arange(nz) * dz).astype(np.float32)[None, None, :]
    c = contraction(np.arange(frames) / frames, cycle)
    heart.flow_amplitude = config.flow
    if not config.trabeculae:
        heart.blobs = heart.blobs[:0]
    if config.chemical_shift:  # fat opposed in phase to water: partial-volume voxels cancel at the border
        heart.fat_intensity = -heart.fat_intensity
        ctx.intensity["fat"] = -ctx.intensity["fat"]
    kept = offset + k * np.arange(n_sparse)
    image, labels, sparse_image, sparse_labels = _acquire(
        _scene(heart, ctx, x.ravel(), y.ravel(), z.ravel(), dx, config), c, kept, shifts / dx, config
    )
    bias = bias_field(bias_rng, x, y, z, bias_amp)
    image *= bias[..., None]
    sigma = heart.blood / snr if snr is not None else None
    stacks = [(image, slice(None))]
    if sparse_image is not None:
        sparse_image *= bias[:, :, kept, None]
        stacks.append((sparse_image, kept))
    if sigma is None:
        for stack, _ in stacks:
            np.abs(stack, out=stack)
    else:
        noisy_magnitude(stacks, sigma, noise_rng, config.kspace_filter)
    if sparse_image is None:
        sparse_image, sparse_labels = image[:, :, kept].copy(), labels[:, :, kept].copy()

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
        "noise_sigma": sigma,
        "slice_thickness_mm": config.slice_profile,
        "truth": config.truth,
        "kspace_filter": config.kspace_filter,
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
    scene: Scene, contractions: np.ndarray, kept: np.ndarray, shifts_px: np.ndarray, config: PhantomConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Noise-free signed dense stack and labels ``(X, Y, Z, T)``; the sparse stack when it differs from it.

    The sparse stack is the dense stack at ``kept`` (returned as None) unless the truth is thin with a
    thicker acquired profile or slices have breath-hold offsets; then each acquired slice integrates its own
    slab, shifted in plane by ``shifts_px`` (2, n) through its k-space operator, and its labels are the
    dense labels moved by the nearest whole pixel.
    """
    nx, ny, nz, frames = len(scene.x), len(scene.y), scene.weights.shape[0], len(contractions)
    s, n_sub, m = scene.s, scene.n_sub, scene.margin
    separate = bool(np.any(shifts_px)) or (config.truth == "thin" and bool(config.slice_profile))
    image = np.empty((nx, ny, nz, frames), np.float32)
    labels = np.empty((nx, ny, nz, frames), np.uint8)
    sparse_image = np.empty((nx, ny, len(kept), frames), np.float32) if separate else None
    if separate:
        step = config.dense_spacing / n_sub
        centres = (scene.zf[m + n_sub * kept] + scene.zf[m + n_sub * kept + n_sub - 1]) / 2
        thickness = float(config.slice_profile or config.dense_spacing)
        sparse_weights = slab_weights(
            centres.astype(np.float64), thickness, scene.zf.astype(np.float64), step
        )
        blur = config.respiratory_blur_mm
        ops = [
            (
                lowpass_matrix(nx, s, config.kspace_filter, shift=float(sx)),
                lowpass_matrix(ny, s, config.kspace_filter, blur, float(scene.x[1] - scene.x[0]), float(sy)),
            )
            for sx, sy in shifts_px.T
        ]
        sparse_context = _slab_products(scene.context, sparse_weights, ops)
        box_sparse = [(ax[:, scene.fine_box[0]], ay[:, scene.fine_box[1]]) for ax, ay in ops]
    fx, fy, fz = scene.fine_box
    box_ops = (np.ascontiguousarray(scene.weights[:, fz]), scene.ax[:, fx].copy(), scene.ay[:, fy].copy())
    delta = None
    for t, c in enumerate(contractions):
        delta, labels[..., t] = _render_frame(scene, float(c), delta)
        frame = acquire_planes(delta, *box_ops) if delta.size else np.zeros_like(scene.acquired_context)
        frame += scene.acquired_context
        image[..., t] = frame.transpose(1, 2, 0)
        if separate:
            sparse_image[..., t] = sparse_context
            if delta.size:
                sparse_image[..., t] += _slab_products(delta, sparse_weights[:, fz], box_sparse)
    if not separate:
        return image, labels, None, None
    sparse_labels = np.stack(
        [
            np.roll(labels[:, :, z], (round(float(sx)), round(float(sy))), axis=(0, 1))
            for z, (sx, sy) in zip(kept, shifts_px.T, strict=True)
        ],
        axis=2,
    )
    return image, labels, sparse_image, sparse_labels


def _slab_products(
    fine: np.ndarray, weights: np.ndarray, ops: list[tuple[np.ndarray, np.ndarray]]
) -> np.ndarray:
    """Slices ``(X, Y, n)``: slab ``j`` of ``fine`` (``weights`` row ``j``) through its own ``ops[j]``."""
    slabs = (fine.reshape(-1, fine.shape[2]) @ weights.T).reshape(*fine.shape[:2], -1)
    return np.stack([ax @ slabs[:, :, j] @ ay.T for j, (ax, ay) in enumerate(ops)], axis=2)


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
    ``out`` must be new, empty or the writer's own (its manifest); anything else raises
    :class:`~.io.PhantomFolderError` before any subject is generated.
    ``progress`` is called with 1 after each subject (e.g. ``tqdm.update``).
    """
    config = config or PhantomConfig()
    out = Path(out)
    claim_folder(out)  # refuse a folder the writer does not own before generating anything
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
