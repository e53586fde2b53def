"""Heart anatomy of the phantom: per-subject shape parameters and the per-frame render.

Implicit surfaces in a heart frame whose axis ``w`` runs from the LV apex (0) to the base. The frame is
bent (curved long axis), rotates with height (the RV insertion moves slice to slice), twists with
contraction and is warped by a smooth random displacement field, so shapes change non-linearly between
slices. Labels follow the internal convention (1 LV cavity, 2 myocardium, 3 RV cavity); papillary muscles
and trabeculae carry myocardium intensity but the LV-cavity label, as in ACDC's ground truth; the RV free
wall, atria, outflow tract and aortic root carry the background label.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from calid_lightning.data.phantom.motion import LVFrame, cap_volume, lv_frame
from calid_lightning.data.subject import LV_CAVITY, MYOCARDIUM, RV_CAVITY

# Per-pathology ranges: LV EDV (mL), LV EF, mid-wall thickness (mm), apical wall (mm), cavity length (mm),
# RV size factor, RV EF, septal wall excess (fraction of the wall thickness).
PRESETS: dict[str, dict[str, tuple[float, float]]] = {
    "NOR": dict(edv=(118, 152), ef=(0.57, 0.63), wall=(7.5, 10.0), apex=(4.5, 6.5), length=(76, 90),
                rv=(1.0, 1.1), rv_ef=(0.5, 0.6), septal=(0.0, 0.08)),
    "DCM": dict(edv=(210, 280), ef=(0.24, 0.38), wall=(6.0, 8.0), apex=(3.5, 5.0), length=(88, 102),
                rv=(1.05, 1.2), rv_ef=(0.3, 0.45), septal=(0.0, 0.05)),
    "HCM": dict(edv=(100, 135), ef=(0.67, 0.77), wall=(15.5, 20.0), apex=(6.0, 9.0), length=(74, 86),
                rv=(0.9, 1.0), rv_ef=(0.45, 0.55), septal=(0.2, 0.35)),
    "MINF": dict(edv=(160, 220), ef=(0.3, 0.44), wall=(7.0, 9.5), apex=(3.5, 5.0), length=(84, 98),
                 rv=(1.0, 1.1), rv_ef=(0.4, 0.55), septal=(0.0, 0.08)),
    "ARV": dict(edv=(105, 140), ef=(0.5, 0.6), wall=(7.0, 9.5), apex=(4.5, 6.5), length=(74, 88),
                rv=(1.35, 1.65), rv_ef=(0.2, 0.38), septal=(0.0, 0.08)),
}  # fmt: skip


@dataclass
class Heart:
    """Shape, motion and intensity parameters of one subject's heart (lengths in mm, angles in rad)."""

    pathology: str
    edv: float
    esv: float
    height: float
    beta: float
    wall: float
    apex_wall: float
    wall_volume: float
    wall_frac: float  # mean wall over epicardial radius at ED
    descent: float
    endo_ellipticity: float
    endo_phase: float
    endo_drift: float
    epi_harmonics: np.ndarray  # (3, 3): amplitude, phase, phase drift over the height of cos(k*angle - phase)
    infarct: tuple[float, float, float]  # depth (fraction), centre angle, width
    endo_shape: float
    epi_shape: float
    angle0: float
    angle_gradient: float
    twist_apex: float
    twist_base: float
    bend: np.ndarray  # apex deviation vector (mm)
    tilt: np.ndarray  # axis tilt (mm per mm of height)
    base_tilt: float
    base_tilt_dir: float
    rv_centre: float
    rv_axes: tuple[float, float]
    rv_apex: float
    rv_shrink: float
    rv_wall: float
    papillary: np.ndarray  # (2, 4): angle, radial fraction, centre height fraction, half-height fraction
    papillary_radius: float
    trabeculae: np.ndarray  # (6,): n1, phase1, wavelength, phase2, n2, phase3
    trabecula_depth: float
    outflow: tuple[float, float, float]  # angle, half-width, depth below base
    atria: np.ndarray  # (2, 4): in-plane offset, radius a, radius b, height radius
    fat: np.ndarray  # (4,): base thickness, bump thickness, harmonic, phase
    displacement: np.ndarray  # (3, K, 5): per component: amplitude, kx, ky, kz, phase
    centre: np.ndarray  # LV axis position in the stack plane (mm from the image centre)
    blood: float
    myocardium: float
    fat_intensity: float
    blobs: (
        np.ndarray
    )  # (N, 5): angle, radial fraction of r_en, centre height fraction, half-height, radius mm
    flow: np.ndarray  # (K, 5): weight, kx, ky, kz (rad/mm), phase of the blood-signal field
    flow_amplitude: float = 0.0

    def frame(self, c: float) -> LVFrame:
        """LV geometry at contraction ``c``."""
        return lv_frame(
            c,
            edv=self.edv,
            esv=self.esv,
            height=self.height,
            beta=self.beta,
            apex_wall=self.apex_wall,
            wall_volume=self.wall_volume,
            descent=self.descent,
            endo_shape=self.endo_shape,
            epi_shape=self.epi_shape,
        )


def _u(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    return float(rng.uniform(*lo_hi))


def _wrap(angle: np.ndarray) -> np.ndarray:
    """Angles wrapped to [-pi, pi)."""
    return (angle + np.pi) % (2 * np.pi) - np.pi


def _wall_modulation(
    angle: np.ndarray,
    harmonics: np.ndarray,
    infarct: tuple[float, float, float],
    hf: np.ndarray | float = 0.0,
) -> np.ndarray:
    """Circumferential wall-thickness factor (1 = mean wall); harmonic phases drift with the height ``hf``."""
    g = np.ones_like(angle)
    for k, (amp, phase, drift) in enumerate(harmonics, start=1):
        term = np.cos(k * angle - (drift * hf + phase))
        term *= amp
        g += term
    depth, centre, width = infarct
    if depth > 0:
        d = _wrap(angle - centre)
        g = g - depth * np.exp(-0.5 * (d / width) ** 2)
    return g


def sample_heart(rng: np.random.Generator, pathology: str) -> Heart:
    """Draw one heart of the given pathology preset."""
    p = PRESETS[pathology]
    edv, ef = _u(rng, p["edv"]), _u(rng, p["ef"])
    height, wall, apex_wall = _u(rng, p["length"]), _u(rng, p["wall"]), _u(rng, p["apex"])
    beta = float(rng.uniform(0.1, 0.3) if pathology != "DCM" else rng.uniform(0.25, 0.4))
    endo_ell, endo_phase = float(rng.uniform(0.03, 0.09)), float(rng.uniform(0, np.pi))
    harmonics = np.stack(
        [rng.uniform(0.06, 0.14, 3), rng.uniform(0, 2 * np.pi, 3), rng.uniform(-4.0, 4.0, 3)], axis=1
    )
    harmonics[0] = (harmonics[0, 0] + _u(rng, p["septal"]), rng.uniform(-0.3, 0.3), rng.uniform(-0.5, 0.5))
    angles = np.linspace(0, 2 * np.pi, 360, endpoint=False)
    g_en = 1 + endo_ell * np.cos(2 * (angles - endo_phase))
    endo_shape = float(np.mean(g_en**2))
    endo_length = height / (1 + beta)
    top = height - endo_length
    endo_radius = np.sqrt(edv * 1000.0 / cap_volume(1.0, endo_length, top, endo_shape))
    epi_radius = endo_radius + wall
    infarct = (0.0, 0.0, 1.0)
    if pathology == "MINF":
        infarct = (float(1 - rng.uniform(5.0, 6.0) / wall), float(rng.uniform(1.5, 4.5)), 0.45)
    wall_frac = float(wall / epi_radius)
    epi_shape = float(
        np.mean((g_en * (1 + wall_frac * (_wall_modulation(angles, harmonics, infarct) - 1))) ** 2)
    )
    epi_length = endo_length + apex_wall
    wall_volume = cap_volume(epi_radius, epi_length, top, epi_shape) - edv * 1000.0
    n_disp = 4
    k_mag = 2 * np.pi / rng.uniform(20, 45, (3, n_disp))
    directions = rng.normal(size=(3, n_disp, 3))
    directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
    amplitudes = rng.dirichlet(np.ones(n_disp), 3) * rng.uniform(1.5, 3.0, (3, 1))  # peak 1.5-3 mm
    displacement = np.concatenate(
        [
            amplitudes[..., None],
            directions * k_mag[..., None],
            rng.uniform(0, 2 * np.pi, (3, n_disp, 1)),
        ],
        axis=-1,
    )
    bend_dir, tilt_dir = rng.uniform(0, 2 * np.pi, 2)
    rv_scale = _u(rng, p["rv"])
    papillary = np.array(
        [
            [
                np.pi - rng.uniform(0.5, 0.9),
                rng.uniform(0.5, 0.62),
                rng.uniform(0.3, 0.42),
                rng.uniform(0.15, 0.22),
            ],
            [
                np.pi + rng.uniform(0.6, 1.0),
                rng.uniform(0.5, 0.62),
                rng.uniform(0.26, 0.4),
                rng.uniform(0.13, 0.2),
            ],
        ]
    )
    blobs, flow = _sample_detail(np.random.default_rng(rng.integers(2**62)), pathology, height, papillary)
    return Heart(
        blobs=blobs,
        flow=flow,
        pathology=pathology,
        edv=edv,
        esv=edv * (1 - ef),
        height=height,
        beta=beta,
        wall=wall,
        apex_wall=apex_wall,
        wall_volume=float(wall_volume),
        wall_frac=wall_frac,
        descent=float(rng.uniform(10, 16) * np.clip(ef / 0.6, 0.35, 1.15)),
        endo_ellipticity=endo_ell,
        endo_phase=endo_phase,
        endo_drift=float(rng.uniform(-2.0, 2.0)),
        epi_harmonics=harmonics,
        infarct=infarct,
        endo_shape=endo_shape,
        epi_shape=epi_shape,
        angle0=float(rng.uniform(-0.5, 0.5)),
        angle_gradient=float(rng.choice([-1, 1]) * rng.uniform(0.35, 0.7)),
        twist_apex=float(np.deg2rad(rng.uniform(8, 15)) * np.clip(ef / 0.6, 0.3, 1.2)),
        twist_base=float(-np.deg2rad(rng.uniform(3, 5)) * np.clip(ef / 0.6, 0.3, 1.2)),
        bend=rng.uniform(3, 8) * np.array([np.cos(bend_dir), np.sin(bend_dir)]),
        tilt=np.tan(np.deg2rad(rng.uniform(2, 12))) * np.array([np.cos(tilt_dir), np.sin(tilt_dir)]),
        base_tilt=float(np.tan(np.deg2rad(rng.uniform(5, 20)))),
        base_tilt_dir=float(rng.uniform(0, 2 * np.pi)),
        rv_centre=float(epi_radius * rng.uniform(0.5, 0.65)),
        rv_axes=(
            float(epi_radius * rv_scale * rng.uniform(0.8, 0.95)),
            float(epi_radius * rv_scale * rng.uniform(1.35, 1.55)),
        ),
        rv_apex=float(height * rng.uniform(0.1, 0.25)),
        rv_shrink=float(0.8 * (1 - np.sqrt(1 - _u(rng, p["rv_ef"])))),
        rv_wall=float(rng.uniform(2.5, 4.0)),
        papillary=papillary,
        papillary_radius=float(rng.uniform(3.0, 5.0) * (1.3 if pathology == "HCM" else 1.0)),
        trabeculae=np.array(
            [
                rng.integers(9, 16),
                rng.uniform(0, 6.3),
                rng.uniform(7, 12),
                rng.uniform(0, 6.3),
                rng.integers(2, 5),
                rng.uniform(0, 6.3),
            ]
        ),
        trabecula_depth=float(rng.uniform(2.0, 4.0)),
        outflow=(float(rng.uniform(0.4, 0.9)), float(rng.uniform(0.4, 0.65)), float(rng.uniform(6, 12))),
        atria=np.array([[-0.25, 22, 26, 22], [0.0, 20, 24, 22]]) * rng.uniform(0.9, 1.1, (2, 4)),
        fat=np.array([rng.uniform(0.5, 2.0), rng.uniform(2, 5), rng.integers(2, 5), rng.uniform(0, 6.3)]),
        displacement=displacement,
        centre=rng.uniform(-8, 8, 2),
        blood=1.0,
        myocardium=float(rng.uniform(0.25, 0.4)),
        fat_intensity=float(rng.uniform(0.9, 1.2)),
    )


def _sample_detail(
    rng: np.random.Generator, pathology: str, height: float, papillary: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Discrete trabeculae and papillary heads (``Heart.blobs``) and the blood-flow field (``Heart.flow``).

    Trabeculae: 25-45 short columns on the endocardium, mostly apical and mid-ventricular, radii
    log-normal around 1 mm (0.4-2.5), lengths log-normal around 8 mm (3-30): most span one or two dense
    slices and vanish before the next acquired one. Each papillary muscle splits into 2-3 heads (1-2 mm)
    above its trunk.
    """
    n = int(rng.integers(25, 46) * (1.3 if pathology in ("HCM", "DCM") else 1.0))
    half_mm = np.clip(rng.lognormal(np.log(4.0), 0.5, n), 1.5, 15.0)
    trabeculae = np.stack(
        [
            rng.uniform(0, 2 * np.pi, n),
            rng.uniform(0.9, 1.0, n),
            0.02 + 0.8 * rng.beta(1.3, 2.0, n),
            half_mm / height,
            np.clip(rng.lognormal(np.log(1.0), 0.4, n), 0.4, 2.5),
        ],
        axis=1,
    )
    heads = []
    for p_ang, p_rad, p_h, p_half in papillary:
        for _ in range(int(rng.integers(2, 4))):
            heads.append(
                [
                    p_ang + rng.normal(0, 0.12),
                    p_rad + rng.normal(0, 0.05),
                    p_h + p_half * rng.uniform(0.6, 1.0),
                    rng.uniform(0.06, 0.12),
                    rng.uniform(1.0, 2.0),
                ]
            )
    k = 2 * np.pi / rng.uniform(25, 60, 3)
    directions = rng.normal(size=(3, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    flow = np.concatenate(
        [rng.dirichlet(np.ones(3))[:, None], directions * k[:, None], rng.uniform(0, 2 * np.pi, (3, 1))],
        axis=1,
    )
    return np.concatenate([trabeculae, np.array(heads)]), flow


BLOB_BINS = 128
"""Height buckets of :func:`_draw_blobs`."""


def _draw_blobs(heart: Heart, u: np.ndarray, v: np.ndarray, hf: np.ndarray, r_en: np.ndarray) -> np.ndarray:
    """Which points (all inside the cavity) fall in a trabecula or papillary head of ``heart.blobs``.

    The points are bucketed by height (``hf`` in [0, 1.4]) once, so each blob only visits its own range.
    """
    hit = np.zeros(u.shape, bool)
    scale = (BLOB_BINS - 1) / 1.4
    bins = np.clip(hf * scale, 0, BLOB_BINS - 1).astype(np.uint8)
    order = np.argsort(bins, kind="stable")  # a radix sort for uint8 keys
    starts = np.concatenate([[0], np.cumsum(np.bincount(bins, minlength=BLOB_BINS))])
    for ang, frac, h, half, radius in heart.blobs.tolist():
        lo = min(max(int((h - half) * scale) - 1, 0), BLOB_BINS - 1)
        hi = min(max(int((h + half) * scale) + 1, 0), BLOB_BINS - 1)
        span = order[starts[lo] : starts[hi + 1]]
        near = span[np.abs(hf[span] - h) < half]
        if near.size == 0:
            continue
        level = 1 - ((hf[near] - h) / half) ** 2
        centre = frac * r_en[near]
        du, dv = u[near] - centre * math.cos(ang), v[near] - centre * math.sin(ang)
        hit[near[du * du + dv * dv < radius * radius * level]] = True
    return hit


@dataclass
class HeartGrid:
    """Static (frame-independent) heart-frame coordinates of a set of sample points."""

    u0: np.ndarray
    v0: np.ndarray
    w: np.ndarray


def heart_grid(heart: Heart, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> HeartGrid:
    """Map stack-frame points (mm, broadcastable) into the warped, bent heart frame."""
    x, y, z = np.broadcast_arrays(x, y, z)
    pts = (x, y, z)
    moved = []
    arg = np.empty(x.shape, np.float32)
    for comp in heart.displacement:
        d = np.zeros(x.shape, np.float32)
        for amp, kx, ky, kz, phase in comp:
            np.multiply(x, kx, out=arg)
            arg += ky * y
            arg += kz * z
            arg += phase
            np.sin(arg, out=arg)
            arg *= amp
            d += arg
        moved.append(d)
    xd, yd, zd = (p + d for p, d in zip(pts, moved, strict=True))
    s = np.clip(1 - zd / heart.height, 0, 1.3) ** 2
    off_x = heart.centre[0] + heart.bend[0] * s + heart.tilt[0] * (zd - heart.height / 2)
    off_y = heart.centre[1] + heart.bend[1] * s + heart.tilt[1] * (zd - heart.height / 2)
    return HeartGrid((xd - off_x).astype(np.float32), (yd - off_y).astype(np.float32), zd.astype(np.float32))


def _ellipsoid_level(w: np.ndarray, centre: float, half_length: float) -> np.ndarray:
    return np.sqrt(np.maximum(1 - ((w - centre) / half_length) ** 2, 0))


def render_heart(
    heart: Heart,
    grid: HeartGrid,
    c: float,
    image: np.ndarray,
    labels: np.ndarray,
    envelope_margin: float = 0.0,
    gain: np.ndarray | None = None,
) -> np.ndarray:
    """Draw the heart at contraction ``c`` into ``image`` / ``labels`` in place; return its envelope.

    ``envelope_margin`` (mm) widens the returned envelope (used to place mediastinal tissue in the context).
    ``gain`` (image-shaped, ones) receives the blood-flow signal factor instead of ``image``: the image then
    holds the piecewise-constant tissue values and ``image * gain`` is the drawn signal.
    """
    f = heart.frame(c)
    u0, v0, w = grid.u0, grid.v0, grid.w
    wm = np.clip(w * (heart.height / f.height), 0, 1.4 * heart.height)  # material height
    hf = wm / heart.height
    # angle0 + angle_gradient * hf + c * (twist_apex * (1 - hf) + twist_base * hf), collected in hf
    slope = heart.angle_gradient + c * (heart.twist_base - heart.twist_apex)
    theta = hf * slope + (heart.angle0 + c * heart.twist_apex)
    ct, st = np.cos(theta), np.sin(theta)
    u, v = ct * u0 + st * v0, -st * u0 + ct * v0
    rho = np.hypot(u, v)
    ang = np.arctan2(v, u)
    base = f.height + heart.base_tilt * (np.cos(heart.base_tilt_dir) * u0 + np.sin(heart.base_tilt_dir) * v0)
    below = w < base

    g_en = 1 + heart.endo_ellipticity * np.cos(2 * (ang - heart.endo_phase) - heart.endo_drift * hf)
    r_en = f.endo_radius * g_en * _ellipsoid_level(w, f.centre, f.endo_length)
    wall_mod = _wall_modulation(ang, heart.epi_harmonics, heart.infarct, hf) - 1
    r_ep = (
        f.epi_radius * g_en * (1 + heart.wall_frac * wall_mod) * _ellipsoid_level(w, f.centre, f.epi_length)
    )
    cavity = (rho < r_en) & below
    epi = (rho < r_ep) & below

    rv_scale = 1 - heart.rv_shrink * c
    ra, rb = heart.rv_axes[0] * rv_scale, heart.rv_axes[1] * rv_scale
    rv_level = np.maximum(1 - ((wm - heart.height) / (heart.height - heart.rv_apex)) ** 2, 0) * (
        wm < heart.height
    )
    du = u - heart.rv_centre
    rv_q = (du / ra) ** 2 + (v / rb) ** 2
    rv_in = (rv_q < rv_level) & below & ~epi
    t = heart.rv_wall
    rv_out = ((du / (ra + t)) ** 2 + (v / (rb + t)) ** 2 < rv_level) & (below | (w < base + t)) & ~epi

    fat0, fat1, fat_k, fat_phase = heart.fat
    fat_thick = fat0 + fat1 * np.maximum(np.cos(fat_k * ang + (wm / 15 + fat_phase)), 0) + 6 * (hf * hf) ** 2
    apex_floor = f.centre - f.epi_length - 2

    def dilated(margin: np.ndarray | float) -> np.ndarray:
        lv = (rho < r_ep + margin) & (w < base + 4 + margin)
        rv = ((du / (ra + t + margin)) ** 2 + (v / (rb + t + margin)) ** 2 < rv_level) & (w < base + 4)
        return (lv | rv) & (w > apex_floor - margin)

    fat = dilated(fat_thick)

    above = (w >= base) & (w < base + 40)
    ot_angle, ot_half, ot_depth = heart.outflow
    ot_dir = np.array([np.cos(ot_angle), np.sin(ot_angle)])
    # The outflow tract and the aortic root lie in a band around the base: evaluated there only.
    band = np.flatnonzero((w > base - ot_depth) & (w < base + 40))
    ub, vb, pool_b = np.take(u, band), np.take(v, band), np.take(cavity, band)
    near_ot = np.abs(_wrap(np.take(ang, band) - ot_angle)) < ot_half
    outflow = band[np.take(epi, band) & ~pool_b & near_ot]
    ao_centre = ot_dir * 0.55 * heart.rv_centre
    pool_b |= np.take(rv_in, band)
    aorta = band[(np.hypot(ub - ao_centre[0], vb - ao_centre[1]) < 11.5) & ~pool_b]

    image[fat] = heart.fat_intensity
    labels[fat] = 0
    image[rv_out] = heart.myocardium
    image[rv_in] = 0.95 * heart.blood
    labels[rv_in] = RV_CAVITY
    image[epi] = heart.myocardium
    labels[epi] = MYOCARDIUM
    image[cavity] = heart.blood
    labels[cavity] = LV_CAVITY
    if heart.flow_amplitude > 0:
        pool = np.flatnonzero(cavity | rv_in)
        field = np.zeros(pool.size, np.float32)
        pu, pv, pw = np.take(u, pool), np.take(v, pool), np.take(wm, pool)
        for weight, kx, ky, kz, phase in heart.flow:
            arg = kx * pu + ky * pv + kz * pw + phase + 2 * np.pi * c
            field += weight * np.cos(arg)
        slow = (1 - hf.flat[pool]) ** 2  # slow apical flow gives less signal in bSSFP
        (image if gain is None else gain).flat[pool] *= 1 + heart.flow_amplitude * (field - 0.5 * slow)

    # Papillary muscles and trabeculae only show inside the cavity: evaluated at its points only.
    inside = np.flatnonzero(cavity)
    uc, vc, hfc, angc, wmc, rhoc, r_enc = (np.take(a, inside) for a in (u, v, hf, ang, wm, rho, r_en))
    detail = np.zeros(inside.shape, bool)
    pr = heart.papillary_radius * (1 + 0.4 * c)
    for p_ang, p_rad, p_h, p_half in heart.papillary:
        pc = p_rad * f.endo_radius * np.array([np.cos(p_ang), np.sin(p_ang)])
        level = np.maximum(1 - ((hfc - p_h) / p_half) ** 2, 0)
        detail |= (uc - pc[0]) ** 2 + (vc - pc[1]) ** 2 < pr**2 * level
    n1, ph1, lam, ph2, n2, ph3 = heart.trabeculae
    pattern = np.cos(n1 * angc + ph1 + wmc / 20) * np.cos(
        2 * np.pi * wmc / lam + ph2 + 0.9 * np.sin(n2 * angc + ph3)
    )
    depth = heart.trabecula_depth * (1 - 0.7 * hfc) * np.clip((pattern - 0.3) / 0.7, 0, 1)
    detail |= (rhoc > r_enc - depth) & (depth > 0)
    if len(heart.blobs):
        inner = np.flatnonzero(rhoc > 0.3 * r_enc)
        detail[inner] |= _draw_blobs(heart, uc[inner], vc[inner], hfc[inner], r_enc[inner])
    image.flat[inside[detail]] = heart.myocardium
    if gain is not None:
        gain.flat[inside[detail]] = 1  # the later tissues never overlap the blood pool

    image.flat[outflow] = heart.blood
    labels.flat[outflow] = 0
    atrial = np.flatnonzero(above)  # the atria are drawn above the base only: evaluated there
    ua, va, wa, ba = (np.take(a, atrial) for a in (u, v, w, base))
    for k, (offset, a, b, hr) in enumerate(heart.atria):
        cu = offset * f.epi_radius if k == 0 else heart.rv_centre + 0.3 * heart.rv_axes[0]
        q = ((ua - cu) / a) ** 2 + (va / b) ** 2 + ((wa - ba - hr) / hr) ** 2
        wall = atrial[q < (1 + 2.0 / a) ** 2]
        image.flat[wall] = heart.myocardium
        labels.flat[wall] = 0
        image.flat[atrial[q < 1]] = 0.9 * heart.blood
    image.flat[aorta] = heart.blood
    labels.flat[aorta[np.take(labels, aorta) == MYOCARDIUM]] = 0
    if envelope_margin <= 0:
        return fat
    return dilated(fat_thick + envelope_margin) | (above & (rho < f.epi_radius + 25))
