"""misregistration.py: the in-plane shift that the phantom and evaluation share."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import shift as nd_shift

from calid_lightning.data.misregistration import shift_in_plane


def test_shift_matches_scipy_bilinear_with_edges_repeated() -> None:
    """Fractional and whole-pixel offsets, edges included, per item; every frame of an item moves alike."""
    x = torch.rand(3, 1, 2, 9, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    offsets = torch.tensor([[0.0, 0.0], [1.5, -2.25], [-3.0, 0.4]], dtype=torch.float64)
    got = shift_in_plane(x, offsets)
    for i, (dh, dw) in enumerate(offsets.tolist()):
        want = nd_shift(x[i].numpy(), (0, 0, dh, dw), order=1, mode="nearest")
        np.testing.assert_allclose(got[i].numpy(), want, atol=1e-10)
    torch.testing.assert_close(got[0], x[0], atol=1e-12, rtol=0)  # a zero offset is the identity


def test_a_ramp_moves_by_the_offset_in_the_right_direction() -> None:
    h = torch.arange(10.0).reshape(10, 1)
    ramp = (h + 100 * h.T)[None, None]  # value = h + 100 w
    moved = shift_in_plane(ramp, torch.tensor([[2.0, -1.0]]))
    # out[h, w] = ramp[h - 2, w + 1]: the content moves down by 2 rows and left by 1 column
    torch.testing.assert_close(moved[0, 0, 3:-3, 3:-3], ramp[0, 0, 3:-3, 3:-3] - 2 + 100)


def test_offsets_must_be_one_pair_per_item() -> None:
    with pytest.raises(ValueError, match=r"offsets_px must be \(N, 2\)"):
        shift_in_plane(torch.zeros(2, 1, 4, 4), torch.zeros(3, 2))
