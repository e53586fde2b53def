"""Cardiac motion of the phantom: the LV volume curve and the per-frame ventricular geometry.

The volume curve is non-sinusoidal (isovolumic contraction, fast ejection to ES, rapid early filling,
diastasis, atrial kick), built as a monotone PCHIP through jittered knots. Each frame's LV is a pair of
truncated prolate ellipsoids (endo- and epicardium) whose sizes follow from the frame's cavity volume and
from keeping the wall volume constant (incompressible myocardium: the wall thickens as the cavity empties).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.interpolate import PchipInterpolator


@dataclass(frozen=True)
class Cycle:
    """Knots of the contraction curve c(tau): 0 at end-diastole, 1 at end-systole."""

    es_fraction: float
    knots_tau: tuple[float, ...]
    knots_c: tuple[float, ...]


def sample_cycle(rng: np.random.Generator, frames: int) -> tuple[Cycle, int]:
    """Sample a cycle whose end-systole falls on a frame at 32-42 % of the cycle; return it and that frame."""
    candidates = [k for k in range(1, frames) if 0.32 <= k / frames <= 0.42]
    if candidates:
        es_frame = int(rng.choice(candidates))
    else:
        es_frame = min(max(round(0.37 * frames), 1 if frames > 1 else 0), frames - 1)
    es = es_frame / frames if frames > 1 else float(rng.uniform(0.32, 0.42))
    ivc = rng.uniform(0.03, 0.05)
    rapid_end = es + rng.uniform(0.13, 0.18)
    kick_start = rng.uniform(0.78, 0.84)
    knots_tau = (0.0, ivc, es, rapid_end, kick_start, 0.95, 1.0)
    knots_c = (0.0, rng.uniform(0.01, 0.04), 1.0, rng.uniform(0.22, 0.32), rng.uniform(0.13, 0.2), 0.0, 0.0)
    return Cycle(float(es), tuple(map(float, knots_tau)), tuple(map(float, knots_c))), es_frame


def contraction(tau: np.ndarray | float, cycle: Cycle) -> np.ndarray:
    """Contraction c in [0, 1] at cycle fractions ``tau`` (periodic, 0 = ED)."""
    curve = PchipInterpolator(cycle.knots_tau, cycle.knots_c)
    return np.clip(curve(np.mod(tau, 1.0)), 0.0, 1.0)


def cap_volume(radius: float, half_length: float, top: float, shape: float = 1.0) -> float:
    """Volume (mm^3) of a prolate ellipsoid (radii r, r, L) from its bottom pole to ``top`` above its centre.

    ``shape`` is the mean of the squared circumferential radius modulation (1 for a circular section).
    """
    beta = top / half_length
    return float(np.pi * radius**2 * shape * half_length * ((1 + beta) - (1 + beta**3) / 3))


@dataclass(frozen=True)
class LVFrame:
    """LV geometry of one frame in the heart frame (w from the apex, mm)."""

    height: float
    centre: float
    endo_radius: float
    endo_length: float
    epi_radius: float
    epi_length: float
    descent: float


def lv_frame(
    c: float,
    *,
    edv: float,
    esv: float,
    height: float,
    beta: float,
    apex_wall: float,
    wall_volume: float,
    descent: float,
    endo_shape: float,
    epi_shape: float,
) -> LVFrame:
    """Solve the frame's endo/epicardial radii from its cavity volume and the constant wall volume.

    The apex stays put; the base descends by ``descent * c``; the cavity keeps its proportions
    (``beta`` = base height above the ellipsoid centre over the half-length).
    """
    volume = (edv - (edv - esv) * c) * 1000.0
    h = height - descent * c
    endo_length = h / (1 + beta)
    top = h - endo_length
    endo_radius = np.sqrt(volume / cap_volume(1.0, endo_length, top, endo_shape))
    epi_length = endo_length + apex_wall * (1 + 0.4 * c)
    epi_radius = np.sqrt((volume + wall_volume) / cap_volume(1.0, epi_length, top, epi_shape))
    return LVFrame(
        h, endo_length, float(endo_radius), endo_length, float(epi_radius), epi_length, descent * c
    )
