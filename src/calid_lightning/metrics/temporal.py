"""Temporal coherence of a generated cine slice: the metric and the intensity-over-time curves.

A generated slice can score well frame by frame and still flicker over the cardiac cycle. The metric compares
how the image *changes* from frame to frame with how the truth changes: the mean absolute error of the
frame-to-frame differences, ``mean |(pred[t+1] - pred[t]) - (truth[t+1] - truth[t])|``. It is 0 when the
prediction moves exactly like the truth (even with a constant intensity offset), grows with flicker, and
ignores a static error. By default the differences are not cyclic (T - 1 of them, which also suits a cine
that covers only part of the cycle); ``cyclic=True`` adds the step from the last frame back to the first,
for cines that cover the whole periodic cycle.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

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
