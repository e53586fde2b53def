"""Image-space baselines along the slice axis: nearest slice, linear and cubic interpolation.

Two shapes of the same methods:

* :class:`ImageLinear` and :class:`ImageNearest` are pairwise :class:`SliceInterpolator` s (identity
  representation), for held-out-slice evaluation from the two bracketing slices and for the autoregressive
  engine (linear through the engine equals direct linear interpolation, because a lerp of lerps is a lerp).
* :func:`nearest_upsample`, :func:`linear_upsample` and :func:`cubic_upsample` use the acquired slices
  directly (cubic needs all of them); :data:`IMAGE_BASELINES` wraps each as ``upsample(stack, factor)``.
  Nearest must be whole-stack: chained pairwise "nearest of two" is not the nearest acquired slice.

Stacks are ``(Z, ...)`` tensors, slice axis first; positions are in acquired-slice-index units. Acquired
positions (integers) are copied bit-exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.interpolate import CubicSpline
from torch import Tensor

from calid_lightning.inference.interpolator import ImageRepresentation
from calid_lightning.inference.upsample import factor_positions, split_positions
from calid_lightning.models.conditioning import expand_r, lerp


class ImageLinear(ImageRepresentation):
    """Linear blend of the two bracketing slices: ``(1 - r) * below + r * above``."""

    def interpolate(
        self,
        below: Tensor,
        above: Tensor,
        r: Tensor,
        num_steps: int | None = None,
        generator: torch.Generator | None = None,
        gap_mm: Tensor | None = None,
    ) -> Tensor:
        return lerp(below, above, r)


class ImageNearest(ImageRepresentation):
    """The nearer of the two bracketing slices (``below`` on a tie at ``r = 0.5``)."""

    def interpolate(
        self,
        below: Tensor,
        above: Tensor,
        r: Tensor,
        num_steps: int | None = None,
        generator: torch.Generator | None = None,
        gap_mm: Tensor | None = None,
    ) -> Tensor:
        return torch.where(expand_r(r, below) > 0.5, above, below)


def _check(stack: Tensor, positions: Sequence[float]) -> np.ndarray:
    """Positions as an array, checked to lie inside the stack."""
    z = int(stack.shape[0])
    pos = np.asarray(list(positions), dtype=np.float64)
    if z < 2:
        raise ValueError(f"need at least 2 acquired slices along axis 0, got {z}")
    if pos.size and (pos.min() < -1e-9 or pos.max() > z - 1 + 1e-9):
        raise ValueError(
            f"positions must lie in [0, {z - 1}] (slice-index units), got {pos.min()}..{pos.max()}"
        )
    return pos


def _copy_acquired(out: Tensor, stack: Tensor, positions: Sequence[float]) -> Tensor:
    """Overwrite the output at integer positions with the acquired slices, bit-exactly."""
    acquired, _ = split_positions(positions)
    for i, j in acquired.items():
        out[i] = stack[j]
    return out


def nearest_upsample(stack: Tensor, positions: Sequence[float]) -> Tensor:
    """The nearest acquired slice at each position (the lower one on a tie)."""
    pos = _check(stack, positions)
    index = torch.as_tensor(np.ceil(pos - 0.5).astype(np.int64), device=stack.device)
    return stack[index.clamp(0, stack.shape[0] - 1)].clone()


def linear_upsample(stack: Tensor, positions: Sequence[float]) -> Tensor:
    """Linear interpolation between the two acquired slices that bracket each position."""
    pos = _check(stack, positions)
    lo = np.clip(np.floor(pos).astype(np.int64), 0, stack.shape[0] - 2)
    r = torch.as_tensor(pos - lo, dtype=stack.dtype, device=stack.device)
    lo_t = torch.as_tensor(lo, device=stack.device)
    return _copy_acquired(lerp(stack[lo_t], stack[lo_t + 1], r), stack, positions)


def cubic_upsample(stack: Tensor, positions: Sequence[float]) -> Tensor:
    """Cubic spline through all acquired slices (scipy, not-a-knot ends), evaluated at each position.

    Not clipped: like any cubic it may overshoot the intensity range near sharp edges.
    """
    pos = _check(stack, positions)
    values = stack.detach().cpu().double().numpy().reshape(stack.shape[0], -1)
    spline = CubicSpline(np.arange(stack.shape[0], dtype=np.float64), values, axis=0)
    dense = torch.from_numpy(spline(pos)).reshape(len(pos), *stack.shape[1:])
    return _copy_acquired(dense.to(dtype=stack.dtype, device=stack.device), stack, positions)


@dataclass(frozen=True)
class ImageBaseline:
    """A whole-stack baseline with the same call shapes as the CaLID upsampler."""

    name: str
    fn: Callable[[Tensor, Sequence[float]], Tensor]

    def at(self, stack: Tensor, positions: Sequence[float], slice_spacing_mm: float | None = None) -> Tensor:
        """Slices at ``positions`` (slice-index units) of a ``(Z, ...)`` stack."""
        return self.fn(stack, positions)

    def upsample(self, stack: Tensor, factor: int) -> Tensor:
        """The ``(Z - 1) * factor + 1`` slices of a ``factor``-times denser stack."""
        return self.fn(stack, factor_positions(int(stack.shape[0]), factor))


IMAGE_BASELINES: dict[str, ImageBaseline] = {
    b.name: b
    for b in (
        ImageBaseline("nearest", nearest_upsample),
        ImageBaseline("linear", linear_upsample),
        ImageBaseline("cubic", cubic_upsample),
    )
}
