"""Temporal-coherence metric (metrics/temporal.py) and the intensity-over-time plot (evaluation/)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from calid_lightning.evaluation.temporal import plot_intensity_over_time
from calid_lightning.metrics.temporal import (
    frame_differences,
    intensity_over_time,
    moving_region,
    temporal_coherence_error,
)


def beating_disc(frames: int = 12, size: int = 16) -> torch.Tensor:
    """A bright disc whose radius follows one cardiac-like cycle, (T, H, W) float64 in [0, 1]."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    dist = (coords[:, None] ** 2 + coords[None, :] ** 2).sqrt()
    radius = 4.0 + 2.0 * torch.cos(2 * torch.pi * torch.arange(frames) / frames)
    return 0.1 + 0.8 * torch.sigmoid(2.0 * (radius[:, None, None] - dist))


def test_zero_for_identical_and_offset_invariant() -> None:
    cine = beating_disc()
    assert temporal_coherence_error(cine, cine) == 0.0
    assert temporal_coherence_error(cine + 0.3, cine) == pytest.approx(0.0, abs=1e-12)
    assert temporal_coherence_error(cine + 0.3, cine, cyclic=True) == pytest.approx(0.0, abs=1e-12)
    # a static (per-pixel, time-constant) error is ignored too, a time-varying one is not
    static = cine + 0.2 * torch.rand(cine.shape[1:], generator=torch.Generator().manual_seed(0))
    assert temporal_coherence_error(static, cine) == pytest.approx(0.0, abs=1e-12)
    assert temporal_coherence_error(cine * 1.5, cine) > 0.0


def test_frame_shuffle_and_flicker_are_penalised() -> None:
    cine = beating_disc()
    shuffled = cine[torch.randperm(cine.shape[0], generator=torch.Generator().manual_seed(1))]
    flicker = cine + 0.05 * torch.tensor([(-1.0) ** t for t in range(cine.shape[0])])[:, None, None]
    shuffled_error = temporal_coherence_error(shuffled, cine)
    assert shuffled_error > 0.01
    assert temporal_coherence_error(flicker, cine) == pytest.approx(0.1, rel=1e-6)  # |+-0.05 - -+0.05|
    # a one-frame delay keeps the motion smooth: penalised less than a shuffle
    assert temporal_coherence_error(torch.roll(cine, 1, dims=0), cine) < shuffled_error


def test_cyclic_differences_and_batches() -> None:
    x = torch.arange(4, dtype=torch.float64).reshape(4, 1, 1).expand(4, 2, 2)
    assert torch.equal(frame_differences(x)[:, 0, 0], torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64))
    assert torch.equal(frame_differences(x, cyclic=True)[:, 0, 0], torch.tensor([1.0, 1, 1, -3]).double())
    batch = torch.stack([beating_disc(), beating_disc()])  # (..., T, H, W) with leading dims, numpy too
    assert temporal_coherence_error(batch.numpy(), batch.numpy()) == 0.0


def test_bad_shapes_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        temporal_coherence_error(torch.zeros(4, 8, 8), torch.zeros(5, 8, 8))
    with pytest.raises(ValueError, match="T >= 2"):
        temporal_coherence_error(torch.zeros(1, 8, 8), torch.zeros(1, 8, 8))


def test_intensity_curves_and_plot(tmp_path: Path) -> None:
    truth = beating_disc()
    pred = truth + 0.1
    region = moving_region(truth)
    assert 0 < int(region.sum()) < region.numel() and not bool(region[0, 0])  # the ring, not the corner
    generated, reference = intensity_over_time(pred, truth)
    np.testing.assert_allclose(generated - reference, 0.1, atol=1e-9)
    assert reference.std() > 0.05  # the moving region follows the beat
    _, t = intensity_over_time(pred, truth, point=(8, 8))
    np.testing.assert_allclose(t, truth[:, 8, 8].double().numpy())
    mask = np.zeros((16, 16), bool)
    mask[6:10, 6:10] = True
    _, t = intensity_over_time(pred, truth, mask=mask)
    assert np.allclose(t, truth[:, 6:10, 6:10].double().mean(dim=(1, 2)).numpy())
    with pytest.raises(ValueError, match="mask"):
        intensity_over_time(pred, truth, mask=np.zeros((16, 16), bool))
    out = plot_intensity_over_time(pred, truth, tmp_path / "fig" / "curve.png")
    assert out.is_file() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
