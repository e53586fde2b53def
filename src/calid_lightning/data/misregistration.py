"""Breath-hold misregistration: a slice moved in plane by its own offset.

A cine SAX stack is acquired one breath-hold per slice, and the heart sits a few mm elsewhere in each. The
phantom generator moves its acquired slices this way and held-out evaluation moves the kept slices
(``calid evaluate --input-shift-mm``): offsets N(0, sigma) mm per axis, clipped at :data:`MAX_SHIFT_MM`,
applied by :func:`shift_in_plane`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

MAX_SHIFT_MM = 6.0
"""Breath-hold offsets are clipped to +- this many mm per axis (phantom and evaluation)."""


def shift_in_plane(x: Tensor, offsets_px: Tensor) -> Tensor:
    """Each item of ``x`` ``(N, ..., H, W)`` moved in plane by its ``(dh, dw)`` pixels (``offsets_px``
    ``(N, 2)``): ``out[h, w] = x[h - dh, w - dw]``, bilinear, edges repeated. All leading dims of an item
    (channels, frames) move together. The same resampling as ``scipy.ndimage.shift(order=1,
    mode="nearest")``, batched."""
    if offsets_px.shape != (x.shape[0], 2):
        raise ValueError(f"offsets_px must be (N, 2) = ({x.shape[0]}, 2), got {tuple(offsets_px.shape)}")
    h, w = x.shape[-2:]
    flat = x.reshape(x.shape[0], -1, h, w)
    theta = torch.zeros(x.shape[0], 2, 3, dtype=flat.dtype, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    offsets = offsets_px.to(device=x.device, dtype=flat.dtype)
    theta[:, 0, 2] = -2.0 * offsets[:, 1] / max(w - 1, 1)  # grid x is the width axis
    theta[:, 1, 2] = -2.0 * offsets[:, 0] / max(h - 1, 1)
    grid = F.affine_grid(theta, list(flat.shape), align_corners=True)
    moved = F.grid_sample(flat, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return moved.reshape(x.shape)
