"""Temporal coherence of a generated cine slice: intensity-over-time plots.

The metric and the curves are pure functions in :mod:`calid_lightning.metrics.temporal` (models import it
there); they are re-exported here for the evaluation tools that import them from this module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from calid_lightning.io_safety import atomic_save
from calid_lightning.metrics.temporal import (
    ArrayLike,
    frame_differences,
    intensity_over_time,
    moving_region,
    temporal_coherence_error,
)

__all__ = [
    "frame_differences",
    "intensity_over_time",
    "moving_region",
    "plot_intensity_over_time",
    "plot_methods_over_time",
    "temporal_coherence_error",
]


def plot_intensity_over_time(
    pred: ArrayLike,
    truth: ArrayLike,
    path: str | Path,
    point: tuple[int, int] | None = None,
    mask: ArrayLike | None = None,
    title: str | None = None,
) -> Path:
    """Plot a generated slice's intensity over the cardiac cycle against the truth; write ``path`` (PNG/PDF).

    The region is chosen as in :func:`intensity_over_time`; the title reports the temporal-coherence error.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    generated, reference = intensity_over_time(pred, truth, point, mask)
    error = temporal_coherence_error(pred, truth)
    where = (
        f"pixel {tuple(point)}" if point is not None else ("mask" if mask is not None else "moving region")
    )
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    frames = np.arange(len(reference))
    ax.plot(frames, reference, "k-o", ms=3, label="truth")
    ax.plot(frames, generated, "C3--s", ms=3, label="generated")
    ax.set_xlabel("frame")
    ax.set_ylabel(f"mean intensity ({where})" if point is None else "intensity")
    ax.set_title(title or f"intensity over time (temporal error {error:.4f})")
    ax.legend(frameon=False)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(path, fig.savefig)
    plt.close(fig)
    return path


def plot_methods_over_time(
    preds: Mapping[str, ArrayLike],
    truth: ArrayLike,
    path: str | Path,
    mask: ArrayLike | None = None,
    frames: Sequence[int] | None = None,
    cyclic: bool = False,
    title: str | None = None,
    region: str | None = None,
) -> Path:
    """Plot several methods' ``(T, H, W)`` cines of one slice over time against the truth; write ``path``.

    Each curve is the mean intensity over ``mask`` (else the truth's :func:`moving_region`); the legend gives
    each method's temporal-coherence error (``cyclic`` as in :func:`temporal_coherence_error`). ``frames``
    labels the x axis with the cine's frame indices (default ``0 .. T-1``); ``region`` names the mask on the
    y axis (e.g. "heart box").
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not preds:
        raise ValueError("need at least one method's prediction to plot")
    x = np.arange(len(truth)) if frames is None else np.asarray(frames)
    fig, ax = plt.subplots(figsize=(5.5, 3.4), dpi=120)
    for i, (name, pred) in enumerate(preds.items()):
        generated, reference = intensity_over_time(pred, truth, mask=mask)
        error = temporal_coherence_error(pred, truth, cyclic)
        ax.plot(x, generated, f"C{i}--s", ms=3, label=f"{name} ({error:.4f})")
    ax.plot(x, reference, "k-o", ms=3, label="truth")
    ax.set_xlabel("frame")
    region = region or ("mask" if mask is not None else "moving region")
    ax.set_ylabel(f"mean intensity ({region})")
    ax.set_title(title or "intensity over time", fontsize=9)
    ax.legend(frameon=False, fontsize=7, title="method (temporal error)", title_fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(path, fig.savefig)
    plt.close(fig)
    return path
