"""Temporal coherence of a generated cine slice: a metric and an intensity-over-time plot.

A generated slice can score well frame by frame and still flicker over the cardiac cycle. The metric compares
how the image *changes* from frame to frame with how the truth changes: the mean absolute error of the
frame-to-frame differences, ``mean |(pred[t+1] - pred[t]) - (truth[t+1] - truth[t])|``. It is 0 when the
prediction moves exactly like the truth (even with a constant intensity offset), grows with flicker, and
ignores a static error. By default the differences are not cyclic (T - 1 of them, which also suits a cine
that covers only part of the cycle); ``cyclic=True`` adds the step from the last frame back to the first,
for cines that cover the whole periodic cycle.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from calid_lightning.io_safety import atomic_save

ArrayLike = Tensor | np.ndarray


def _as_tensor(x: ArrayLike) -> Tensor:
    return torch.as_tensor(x).detach().to("cpu", torch.float64)


def frame_differences(x: ArrayLike, cyclic: bool = False) -> Tensor:
    """``x[t+1] - x[t]`` along the time axis of ``(..., T, H, W)`` (plus ``x[0] - x[T-1]`` when cyclic)."""
    x = _as_tensor(x)
    following = torch.roll(x, shifts=-1, dims=-3) if cyclic else x[..., 1:, :, :]
    return following - (x if cyclic else x[..., :-1, :, :])


def temporal_coherence_error(pred: ArrayLike, truth: ArrayLike, cyclic: bool = False) -> float:
    """Mean absolute error of frame-to-frame differences of ``pred`` vs ``truth``, both ``(..., T, H, W)``.

    Same units as the intensities (e.g. [0, 1]); lower is better; 0 for identical sequences and invariant to a
    constant intensity offset. Raises ``ValueError`` for mismatched shapes or fewer than 2 frames.
    """
    pred, truth = _as_tensor(pred), _as_tensor(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"pred and truth differ in shape: {tuple(pred.shape)} vs {tuple(truth.shape)}")
    if pred.ndim < 3 or pred.shape[-3] < 2:
        raise ValueError(f"need (..., T, H, W) with T >= 2 frames, got shape {tuple(pred.shape)}")
    return float((frame_differences(pred, cyclic) - frame_differences(truth, cyclic)).abs().mean())


def moving_region(truth: ArrayLike, fraction: float = 0.1) -> Tensor:
    """The pixels of a ``(T, H, W)`` cine whose intensity varies most over time (top ``fraction`` by std).

    In a cardiac cine the context is nearly static and the heart moves, so this is a label-free stand-in for
    the heart region.
    """
    std = _as_tensor(truth).std(dim=0)
    threshold = torch.quantile(std.flatten(), 1.0 - fraction)
    return std >= threshold


def intensity_over_time(
    pred: ArrayLike,
    truth: ArrayLike,
    point: tuple[int, int] | None = None,
    mask: ArrayLike | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Intensity curves ``(T,)`` of a ``(T, H, W)`` prediction and its truth.

    At pixel ``point`` (row, column) if given; else the mean over ``mask`` (``(H, W)`` bool, e.g. the dilated
    heart labels); else the mean over :func:`moving_region` of the truth.
    """
    pred, truth = _as_tensor(pred), _as_tensor(truth)
    if pred.shape != truth.shape or pred.ndim != 3:
        raise ValueError(
            f"need pred and truth of the same shape (T, H, W), got {tuple(pred.shape)} and "
            f"{tuple(truth.shape)}"
        )
    if point is not None:
        row, col = point
        return pred[:, row, col].numpy(), truth[:, row, col].numpy()
    region = moving_region(truth) if mask is None else _as_tensor(mask).bool()
    if region.shape != truth.shape[1:] or not region.any():
        raise ValueError(f"mask must be a non-empty (H, W) = {tuple(truth.shape[1:])} bool array")
    return pred[:, region].mean(dim=1).numpy(), truth[:, region].mean(dim=1).numpy()


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
    x = np.arange(_as_tensor(truth).shape[0]) if frames is None else np.asarray(frames)
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
