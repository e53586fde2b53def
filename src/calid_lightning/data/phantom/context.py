"""Static context around the phantom heart (all background label) and the image-formation effects.

Thorax with subcutaneous fat and skeletal muscle, dark lungs, a mediastinum around the heart, spine with
spinal canal and paraspinal muscles, descending aorta, liver under a domed diaphragm below the apex.
Without such context a network learns "bright = LV". Also here: the smooth multiplicative bias field and
Rician noise, both fixed to the scanner frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Context:
    """Body layout relative to the heart (mm, thorax frame: ``l`` to the patient's left, ``a`` anterior)."""

    anterior: float  # direction of "anterior" in the stack plane (rad)
    heart_la: np.ndarray  # LV axis position in the thorax frame
    half_axes: np.ndarray  # thorax half-widths (l, a)
    fat: float
    muscle: float
    spine_radius: float
    aorta_radius: float
    liver_top: float  # z of the liver dome above the LV apex
    intensity: dict[str, float]


def sample_context(rng: np.random.Generator, rv_direction: float) -> Context:
    """Draw a body around a heart whose RV points along ``rv_direction`` in the stack plane."""
    return Context(
        anterior=float(rv_direction - np.deg2rad(rng.uniform(30, 60))),
        heart_la=np.array([rng.uniform(25, 40), rng.uniform(20, 35)]),
        half_axes=np.array([rng.uniform(140, 170), rng.uniform(95, 120)]),
        fat=float(rng.uniform(8, 22)),
        muscle=float(rng.uniform(8, 15)),
        spine_radius=float(rng.uniform(15, 19)),
        aorta_radius=float(rng.uniform(10, 13)),
        liver_top=float(rng.uniform(5, 35)),
        intensity={
            "air": float(rng.uniform(0.0, 0.03)),
            "lung": float(rng.uniform(0.02, 0.1)),
            "fat": float(rng.uniform(0.9, 1.2)),
            "muscle": float(rng.uniform(0.25, 0.35)),
            "liver": float(rng.uniform(0.35, 0.5)),
            "mediastinum": float(rng.uniform(0.3, 0.5)),
            "marrow": float(rng.uniform(0.4, 0.6)),
            "csf": float(rng.uniform(0.7, 0.95)),
            "blood": float(rng.uniform(0.8, 1.0)),
            "abdomen": float(rng.uniform(0.25, 0.4)),
        },
    )


def render_context(
    ctx: Context, x: np.ndarray, y: np.ndarray, z: np.ndarray, mediastinum: np.ndarray
) -> np.ndarray:
    """Intensity of the static context at stack-frame points (mm from the LV axis; z from the apex).

    ``mediastinum`` marks points around the heart that hold soft tissue rather than lung.
    """
    shape = np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z))
    # The body does not change with height except for the liver: the in-plane terms are evaluated on the
    # broadcast of x and y only (the same values as on the full grid) and their masks broadcast over z.
    ea = np.array([np.cos(ctx.anterior), np.sin(ctx.anterior)])
    el = np.array([ea[1], -ea[0]])
    l = x * el[0] + y * el[1] + ctx.heart_la[0]  # noqa: E741
    a = x * ea[0] + y * ea[1] + ctx.heart_la[1]
    it = ctx.intensity
    hl, ha = ctx.half_axes
    img = np.full(shape, it["air"], np.float32)

    def inside(cl: float, ca: float, rl: float, ra: float) -> np.ndarray:
        return ((l - cl) / rl) ** 2 + ((a - ca) / ra) ** 2 < 1

    def paint(where: np.ndarray, value: float) -> None:
        np.copyto(img, np.float32(value), where=where)

    paint(inside(0, 0, hl, ha), it["fat"])
    paint(inside(0, 0, hl - ctx.fat, ha - ctx.fat), it["muscle"])
    cavity = inside(0, 0, hl - ctx.fat - ctx.muscle, ha - ctx.fat - ctx.muscle)
    paint(cavity, it["lung"])
    spine_a = -ha + ctx.fat + ctx.muscle + ctx.spine_radius + 18
    paint(inside(0, ctx.heart_la[1] - 5, 32, 60) & cavity, it["mediastinum"])
    paint(mediastinum & cavity, it["mediastinum"])
    paint(inside(0, spine_a - 18, 55, 30), it["muscle"])
    paint(inside(0, spine_a, ctx.spine_radius + 2.5, ctx.spine_radius + 2.5), 0.1)
    paint(inside(0, spine_a, ctx.spine_radius, ctx.spine_radius), it["marrow"])
    paint(inside(0, spine_a - ctx.spine_radius - 9, 7, 7), it["csf"])
    ao_l, ao_a = 0.9 * ctx.spine_radius + ctx.aorta_radius, spine_a + ctx.spine_radius * 0.8
    paint(inside(ao_l, ao_a, ctx.aorta_radius + 1.5, ctx.aorta_radius + 1.5), it["muscle"])
    paint(inside(ao_l, ao_a, ctx.aorta_radius, ctx.aorta_radius), it["blood"])
    dome = ctx.liver_top - ((l + 55) ** 2 + (a - 10) ** 2) / 260.0
    liver = cavity & (z < dome) & (l < 20)
    paint(cavity & (z < dome - 25) & (l >= 20), it["abdomen"])
    paint(liver, it["liver"])
    return img


def bias_field(
    rng: np.random.Generator, x: np.ndarray, y: np.ndarray, z: np.ndarray, amplitude: float
) -> np.ndarray:
    """Smooth multiplicative field ``1 + amplitude * f`` with ``f`` a low-frequency field in [-1, 1]."""
    x, y, z = np.broadcast_arrays(x, y, z)
    field = np.zeros(x.shape, np.float32)
    for _ in range(4):
        k = rng.normal(size=3) * 2 * np.pi / rng.uniform(250, 450)
        field += rng.uniform(0.5, 1.0) * np.cos(k[0] * x + k[1] * y + k[2] * z + rng.uniform(0, 2 * np.pi))
    field /= max(float(np.abs(field).max()), 1e-6)
    return (1 + amplitude * field).astype(np.float32)


def rician(image: np.ndarray, sigma: float, noise: np.ndarray) -> np.ndarray:
    """Magnitude of ``image`` plus complex Gaussian noise; ``noise`` holds two standard-normal fields."""
    return np.hypot(image + sigma * noise[0], sigma * noise[1]).astype(np.float32)
