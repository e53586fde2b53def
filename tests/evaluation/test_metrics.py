"""Per-slice PSNR / SSIM against scikit-image, and the heart box."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from calid_lightning.data.subject import LV_CAVITY, MYOCARDIUM, RV_CAVITY
from calid_lightning.evaluation.metrics import heart_box, slice_heart_boxes, slice_metrics

SKIMAGE_SSIM = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False, "data_range": 1.0}


def image_pair(seed: int, size: tuple[int, int] = (40, 36)) -> tuple[np.ndarray, np.ndarray]:
    """A smooth structured image and a noisy, shifted, contrast-changed version of it, both in [0, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: size[0], : size[1]]
    true = 0.5 + 0.4 * np.sin(xx / 4.0 + seed) * np.cos(yy / 6.0)
    pred = 0.9 * np.roll(true, 1, axis=1) + 0.05 + rng.normal(0, 0.05, size)
    return np.clip(pred, 0, 1), np.clip(true, 0, 1)


def as_batch(*images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)[:, None])


def test_psnr_and_ssim_match_skimage_per_slice() -> None:
    pairs = [image_pair(seed) for seed in range(3)]
    scores = slice_metrics(as_batch(*(p for p, _ in pairs)), as_batch(*(t for _, t in pairs)))
    for i, (pred, true) in enumerate(pairs):
        assert scores["psnr"][i].item() == pytest.approx(peak_signal_noise_ratio(true, pred, data_range=1.0))
        assert scores["ssim"][i].item() == pytest.approx(
            structural_similarity(true, pred, **SKIMAGE_SSIM), abs=1e-5
        )
    assert len(set(scores["ssim"].tolist())) == 3, "each slice has its own score"
    assert torch.isnan(scores["psnr_heart"]).all(), "no heart box given: heart metrics are NaN"


def test_heart_metrics_are_those_of_the_box() -> None:
    pred, true = image_pair(7)
    box = (slice(10, 30), slice(8, 26))
    scores = slice_metrics(as_batch(pred), as_batch(true), [box])
    expected_psnr = peak_signal_noise_ratio(true[box], pred[box], data_range=1.0)
    _, ssim_map = structural_similarity(true, pred, full=True, **SKIMAGE_SSIM)
    assert scores["psnr_heart"].item() == pytest.approx(expected_psnr)
    assert scores["ssim_heart"].item() == pytest.approx(ssim_map[box].mean(), abs=1e-5)
    clean = pred.copy()
    clean[box] = true[box]
    perfect_heart = slice_metrics(as_batch(clean), as_batch(true), [box])
    assert perfect_heart["ssim_heart"].item() > scores["ssim_heart"].item()
    assert perfect_heart["psnr_heart"].item() == float("inf")
    assert perfect_heart["psnr"].item() < float("inf")


def test_heart_box_is_the_grown_bounding_box_of_heart_labels() -> None:
    labels = np.zeros((32, 32), dtype=np.uint8)
    labels[10:14, 12:15] = LV_CAVITY
    labels[9, 12] = MYOCARDIUM
    labels[15, 20] = RV_CAVITY
    labels[0:3, 0:3] = 9  # not a heart label
    assert heart_box(labels, margin=0) == (slice(9, 16), slice(12, 21))
    assert heart_box(labels, margin=3) == (slice(6, 19), slice(9, 24))
    edge = np.zeros((32, 32), dtype=np.uint8)
    edge[30, 1] = LV_CAVITY
    assert heart_box(edge, margin=4) == (slice(26, 32), slice(0, 6)), "clipped to the image"
    assert heart_box(np.zeros((32, 32), dtype=np.uint8)) is None


def test_slices_without_labels_use_the_subject_box() -> None:
    subject = np.zeros((3, 2, 24, 24), dtype=np.uint8)
    subject[0, 0, 5:8, 5:8] = LV_CAVITY
    subject[2, 1, 15:18, 16:19] = RV_CAVITY
    boxes = slice_heart_boxes(subject[:, 0], subject, margin=1)
    assert boxes[0] == (slice(4, 9), slice(4, 9)), "own labels first"
    assert boxes[1] == boxes[2] == (slice(4, 19), slice(4, 20)), "else all slices and frames of the subject"
    assert slice_heart_boxes(None, None) == [None]


def test_bad_shapes_are_rejected() -> None:
    x = torch.rand(2, 1, 16, 16)
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        slice_metrics(x, x[:1])
    with pytest.raises(ValueError, match="larger than 10"):
        slice_metrics(x[..., :8, :8], x[..., :8, :8])
    with pytest.raises(ValueError, match="one heart box per slice"):
        slice_metrics(x, x, [None, None, None])


def test_high_frequency_ratio_by_hand() -> None:
    from calid_lightning.evaluation.metrics import high_frequency_ratio

    true = torch.zeros(2, 1, 5, 5, dtype=torch.float64)
    true[:, :, 2, 2] = 1.0  # the Laplacian of a single dot: -4 at it, 1 at its 4 neighbours -> energy 20
    pred = 0.5 * true  # energy 5
    pred[1] = 0.0
    ratio = high_frequency_ratio(pred, true)
    assert ratio.dtype == torch.float64 and ratio.tolist() == [0.25, 0.0]
    assert high_frequency_ratio(true, 3 * true).tolist() == pytest.approx([1 / 9, 1 / 9])
    flat = high_frequency_ratio(true, torch.full_like(true, 0.5))  # no high frequencies in the truth
    assert torch.isnan(flat).all()


def test_heart_metrics_are_nan_only_where_the_box_is_none() -> None:
    pred_np, true_np = image_pair(3)
    pred, true = as_batch(pred_np, pred_np, pred_np), as_batch(true_np, true_np, true_np)
    box = (slice(4, 20), slice(6, 30))
    metrics = slice_metrics(pred, true, [None, box, box])
    assert set(metrics) == {"psnr", "ssim", "psnr_heart", "ssim_heart", "hf_ratio"}
    assert all(v.dtype == torch.float64 and v.shape == (3,) for v in metrics.values())
    assert torch.isnan(metrics["psnr_heart"][0]) and torch.isnan(metrics["ssim_heart"][0])
    assert (
        not torch.isnan(metrics["psnr_heart"][1:]).any() and not torch.isnan(metrics["ssim_heart"][1:]).any()
    )
    expected = peak_signal_noise_ratio(true_np[box], pred_np[box], data_range=1.0)
    assert metrics["psnr_heart"][2].item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match=r"need one heart box per slice \(3\) or one for all, got 2"):
        slice_metrics(pred, true, [box, box])


def test_heart_box_margin_is_clipped_at_the_image_edge() -> None:
    labels = np.zeros((2, 10, 12), dtype=np.int64)
    labels[0, 0, 3] = LV_CAVITY  # touches the top edge
    labels[1, 5, 11] = RV_CAVITY  # touches the right edge, on another frame: leading axes merge
    assert heart_box(labels, margin=2) == (slice(0, 8), slice(1, 12))
    assert heart_box(labels[0], margin=0) == (slice(0, 1), slice(3, 4))
