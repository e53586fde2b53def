"""Per-slice image metrics of reconstructed slices: PSNR and SSIM, whole slice and inside the heart box.

Images are ``(N, 1, H, W)`` tensors in [0, 1] (``data_range = 1``). SSIM uses torchmetrics' Gaussian window
(sigma 1.5, 11 x 11, population covariance); the whole-slice SSIM averages the SSIM map over the pixels whose
window lies inside the image, the convention of Wang et al. and scikit-image, so the numbers match
``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``
to 1e-5. The SSIM map is filtered in float32: torch's float64 conv2d on CPU takes a slow path (~40x
slower, measured: 18 s against 0.45 s for 280 slices of 64 x 64 on one thread) and was most of
``calid evaluate-cine``'s time; the map moves by at most 1e-5.
The heart box is the bounding box of the LV cavity, myocardium and RV cavity labels grown by ``margin``
pixels; heart PSNR is the PSNR of the box (its MSE), heart SSIM the SSIM map averaged over the box.
``hf_ratio`` is the sharpness beside them: the high-frequency (Laplacian) energy of the reconstruction over
that of the true slice. 1 is as sharp as the truth, below 1 blurred, so the perception-distortion trade-off
shows next to PSNR/SSIM. On noisy data the truth's high-frequency energy is mostly noise, which VAE-decoded
slices do not carry: there every latent method scores far below 1 (docs/ablations.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from calid_lightning.data.subject import LV_CAVITY, MYOCARDIUM, RV_CAVITY

HEART_LABELS = (LV_CAVITY, MYOCARDIUM, RV_CAVITY)
SSIM_SIGMA = 1.5
SSIM_RADIUS = int(3.5 * SSIM_SIGMA + 0.5)  # the Gaussian window's half width, as torchmetrics and skimage
METRICS = ("psnr", "ssim", "psnr_heart", "ssim_heart", "hf_ratio")
LAPLACIAN = ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0))

Box = tuple[slice, slice]


def heart_box(labels: np.ndarray, margin: int = 4) -> Box | None:
    """Rows and columns of the heart box of ``labels`` ``(..., H, W)`` (leading axes are merged).

    The box bounds every LV cavity, myocardium or RV cavity pixel, grown by ``margin`` pixels on each side
    and clipped to the image: the bounding box of the heart mask dilated by a ``(2 margin + 1)`` square.
    ``None`` when no heart label is present.
    """
    heart = np.isin(np.asarray(labels), HEART_LABELS)
    heart = heart.reshape(-1, *heart.shape[-2:]).any(axis=0)
    if not heart.any():
        return None
    rows, cols = np.flatnonzero(heart.any(axis=1)), np.flatnonzero(heart.any(axis=0))
    h, w = heart.shape
    return (
        slice(max(0, rows[0] - margin), min(h, rows[-1] + margin + 1)),
        slice(max(0, cols[0] - margin), min(w, cols[-1] + margin + 1)),
    )


def slice_heart_boxes(
    true_labels: np.ndarray | None, subject_labels: np.ndarray | None, margin: int = 4
) -> list[Box | None]:
    """One heart box per true slice ``(N, H, W)``: the slice's own, else that of all ``subject_labels``.

    Slices without heart labels (outside the heart, or a frame that was never labelled) use the box of the
    subject's labels over all slices and frames; with no labels at all it returns ``[None]``
    (one box for every slice, as :func:`slice_metrics` accepts).
    """
    fallback = heart_box(subject_labels, margin) if subject_labels is not None else None
    if true_labels is None:
        return [fallback]
    return [heart_box(slice_labels, margin) or fallback for slice_labels in true_labels]


def _check(pred: Tensor, true: Tensor) -> None:
    if pred.shape != true.shape or pred.ndim != 4 or pred.shape[1] != 1:
        raise ValueError(
            f"pred and true must both be (N, 1, H, W), got {tuple(pred.shape)} and {tuple(true.shape)}"
        )
    if min(pred.shape[-2:]) <= 2 * SSIM_RADIUS:
        raise ValueError(
            f"slices must be larger than {2 * SSIM_RADIUS} pixels for SSIM, got {pred.shape[-2:]}"
        )


def high_frequency_ratio(pred: Tensor, true: Tensor) -> Tensor:
    """Per-slice Laplacian energy of ``pred`` over that of ``true`` (``(N, 1, H, W)`` -> ``(N,)``, float64).

    NaN where the true slice has no high-frequency content (a constant slice).
    """
    kernel = torch.tensor(LAPLACIAN, dtype=torch.float64).reshape(1, 1, 3, 3)
    energy = [torch.nn.functional.conv2d(x.double(), kernel).pow(2).flatten(1).sum(1) for x in (pred, true)]
    return torch.where(energy[1] > 0, energy[0] / energy[1], torch.full_like(energy[1], float("nan")))


def slice_metrics(pred: Tensor, true: Tensor, boxes: Sequence[Box | None] | None = None) -> dict[str, Tensor]:
    """Per-slice ``psnr``, ``ssim``, ``psnr_heart``, ``ssim_heart`` and ``hf_ratio`` (each ``(N,)``, float64).

    ``boxes`` holds one heart box per slice (or one for all); heart metrics are NaN where it is ``None``.
    A perfect slice has PSNR ``inf``.
    """
    _check(pred, true)
    pred, true = pred.detach().double().cpu(), true.detach().double().cpu()
    n = pred.shape[0]
    psnr = peak_signal_noise_ratio(pred, true, data_range=1.0, reduction="none", dim=(1, 2, 3))
    _, ssim_map = structural_similarity_index_measure(
        pred.float(), true.float(), sigma=SSIM_SIGMA, data_range=1.0, reduction="none", return_full_image=True
    )
    ssim_map = ssim_map.double()
    inner = ssim_map[..., SSIM_RADIUS:-SSIM_RADIUS, SSIM_RADIUS:-SSIM_RADIUS]
    ssim = inner.reshape(n, -1).mean(dim=1)
    boxes = list(boxes) if boxes is not None else [None]
    if len(boxes) == 1:
        boxes = boxes * n
    if len(boxes) != n:
        raise ValueError(f"need one heart box per slice ({n}) or one for all, got {len(boxes)}")
    psnr_heart = torch.full((n,), float("nan"), dtype=torch.float64)
    ssim_heart = psnr_heart.clone()
    for i, box in enumerate(boxes):
        if box is None:
            continue
        rows, cols = box
        psnr_heart[i] = peak_signal_noise_ratio(
            pred[i, :, rows, cols], true[i, :, rows, cols], data_range=1.0
        )
        ssim_heart[i] = ssim_map[i, :, rows, cols].mean()
    return {
        "psnr": psnr,
        "ssim": ssim,
        "psnr_heart": psnr_heart,
        "ssim_heart": ssim_heart,
        "hf_ratio": high_frequency_ratio(pred, true),
    }
