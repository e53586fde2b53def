"""MR acquisition of the phantom: in-plane k-space truncation, slice-profile integration and complex noise.

The anatomy is rendered ``s`` times finer in plane and in sub-slices through plane. An acquired slice is the
profile-weighted mean of the sub-slices inside its slab (:func:`slab_weights`), low-passed in plane by
truncating its spectrum to the target matrix with an optional window (:func:`lowpass_matrix`, a real matrix
so the whole operation is two matrix products per slice), plus complex Gaussian noise formed in k-space with
the same window, reported as a magnitude (:func:`magnitude_with_noise`): Rician statistics.
"""

from __future__ import annotations

import numpy as np
from scipy import fft

TUKEY_ALPHA = 0.3
"""Taper of the Tukey window: the outer 30 % of k-space rolls off, a mild filter that keeps some Gibbs."""

FILTERS: tuple[str, ...] = ("none", "tukey", "hann")


def kspace_window(n: int, kind: str) -> np.ndarray:
    """Window over the ``n`` target frequencies in FFT order (``fft.fftfreq(n) * n``), 1 at the centre."""
    k = np.abs(fft.fftfreq(n) * n) / (n / 2)  # 0 at DC, 1 at Nyquist
    if kind == "none":
        return np.ones(n)
    if kind == "hann":
        return 0.5 * (1 + np.cos(np.pi * k))
    if kind == "tukey":
        edge = 1 - TUKEY_ALPHA
        taper = 0.5 * (1 + np.cos(np.pi * (k - edge) / TUKEY_ALPHA))
        return np.where(k <= edge, 1.0, taper)
    raise ValueError(f"k-space filter must be one of {FILTERS}, got {kind!r}")


def lowpass_matrix(
    n: int, s: int, kind: str = "none", blur_mm: float = 0.0, pixel_mm: float = 1.0, shift: float = 0.0
) -> np.ndarray:
    """Real ``(n, n*s)`` matrix: a profile sampled ``s`` times finer -> its ``n``-point k-space truncation.

    Fine sample ``i`` sits at ``(i - (n*s - 1)/2) / s`` pixels from the centre, target pixel ``j`` at
    ``j - (n - 1)/2``, so a block of ``s`` fine samples is centred on its target pixel. The Nyquist bin of an
    even ``n`` is shared half/half between +-n/2 so the result stays real. ``blur_mm`` averages the profile
    over shifts uniform in ``[-blur_mm, blur_mm]`` (respiratory motion during the acquisition); ``shift``
    (target pixels) moves the object by that much (a breath-hold offset). Rows sum to the DC weight 1, so
    the mean of a slice is kept exactly.
    """
    m = n * s
    xf = (np.arange(m) - (m - 1) / 2) / s
    xt = np.arange(n) - (n - 1) / 2 - shift
    freqs = np.arange(-(n // 2), n // 2 + 1)
    weight = np.ones(freqs.size)
    if n % 2 == 0:
        weight[[0, -1]] = 0.5
    window = kspace_window(n, kind)
    weight = weight * window[np.round(freqs).astype(int) % n]
    if blur_mm > 0:
        weight = weight * np.sinc(2 * freqs * (blur_mm / pixel_mm) / n)
    # cos(a - b) = cos a cos b + sin a sin b: two (n, F) @ (F, n*s) products instead of an (n, n*s, F) cosine.
    at, af = 2 * np.pi * np.outer(xt, freqs) / n, 2 * np.pi * np.outer(xf, freqs) / n
    matrix = (np.cos(at) * weight) @ np.cos(af).T + (np.sin(at) * weight) @ np.sin(af).T
    return (matrix / m).astype(np.float32)


def slab_weights(centres: np.ndarray, thickness: float, fine_z: np.ndarray, fine_step: float) -> np.ndarray:
    """``(len(centres), len(fine_z))`` weights of a box slice profile of ``thickness`` mm.

    Sub-slice ``i`` covers ``fine_z[i] +- fine_step / 2``; its weight is the length of its overlap with the
    slab over ``thickness``, so each row sums to 1 when the slab lies within the sub-slices.
    """
    lo = np.maximum(centres[:, None] - thickness / 2, fine_z[None, :] - fine_step / 2)
    hi = np.minimum(centres[:, None] + thickness / 2, fine_z[None, :] + fine_step / 2)
    return (np.clip(hi - lo, 0, None) / thickness).astype(np.float32)


def acquire_planes(fine: np.ndarray, weights: np.ndarray, ax: np.ndarray, ay: np.ndarray) -> np.ndarray:
    """Noise-free acquisition: ``fine (X*s, Y*s, Zf)`` -> slices ``(n, X, Y)`` (signed, real).

    Slab integration first (it commutes with the in-plane truncation and leaves fewer slices to truncate).
    """
    xs, ys, zf = fine.shape
    slabs = (weights @ fine.reshape(-1, zf).T).reshape(-1, xs, ys)
    return (ax @ slabs) @ ay.T


def complex_noise(shape: tuple[int, ...], rng: np.random.Generator, kind: str = "none") -> np.ndarray:
    """Complex Gaussian noise ``(X, Y, ...)`` drawn in k-space and shaped by the same window as the signal.

    White complex noise in k-space, windowed and transformed (orthonormal FFT) to the image; the window's
    energy is normalised away, so each real component has unit variance in the image.
    """
    white = rng.standard_normal((2, *shape), dtype=np.float32)
    k = white[0] + 1j * white[1]
    if kind == "none":
        return k
    return fft.ifft2(k * _noise_window(shape, kind), axes=(0, 1), norm="ortho")


def _noise_window(shape: tuple[int, ...], kind: str) -> np.ndarray:
    """The k-space window of :func:`complex_noise`, energy-normalised, shaped ``(X, Y, 1, ...)``."""
    w2 = np.outer(kspace_window(shape[0], kind), kspace_window(shape[1], kind))
    return (w2 / np.sqrt(np.mean(w2**2))).astype(np.float32).reshape(*shape[:2], *([1] * (len(shape) - 2)))


NOISE_CHUNK = 1 << 19
"""Complex samples per chunk of :func:`noisy_magnitude` (4 MiB of complex64)."""


def noisy_magnitude(
    images: list[tuple[np.ndarray, np.ndarray | slice]], sigma: float, rng: np.random.Generator, kind: str
) -> None:
    """In place ``image = |image + sigma * noise[:, :, at]|`` for each ``(image, at)``, one noise draw.

    The noise has the statistics of :func:`complex_noise` of the first image's shape (``(X, Y, Z, T)``):
    white complex Gaussian k-space samples, drawn straight into a complex64 buffer a few slices (all
    frames) at a time, windowed (``sigma`` folded into the window) and transformed, so no full-size
    temporary is made. ``at`` (ascending slice indices, or ``slice(None)``) picks the slices an image uses.
    """
    shape = images[0][0].shape
    nx, ny, nz, rest = shape[0], shape[1], shape[2], shape[3:]
    window = np.ones((nx, ny)) if kind == "none" else _noise_window((nx, ny), kind)
    window = (window * sigma).astype(np.float32).reshape(nx, ny, *([1] * (len(shape) - 2)))
    positions = [np.arange(nz) if isinstance(at, slice) else np.asarray(at) for _, at in images]
    step = max(1, min(nz, NOISE_CHUNK // (nx * ny * int(np.prod(rest)))))
    buffer = np.empty((nx, ny, step, *rest, 2), np.float32)
    for z0 in range(0, nz, step):
        part = buffer if z0 + step <= nz else np.empty((nx, ny, nz - z0, *rest, 2), np.float32)
        rng.standard_normal(dtype=np.float32, out=part)
        noise = part.view(np.complex64)[..., 0]
        noise *= window
        if kind != "none":
            noise = fft.ifft2(noise, axes=(0, 1), norm="ortho", overwrite_x=True, workers=1)
        for (image, _), pos in zip(images, positions, strict=True):
            lo, hi = np.searchsorted(pos, [z0, z0 + part.shape[2]])
            if hi > lo:
                target = image[:, :, lo:hi]
                np.abs(target + noise[:, :, pos[lo:hi] - z0], out=target)


def magnitude(image: np.ndarray, sigma: float | None, noise: np.ndarray | None) -> np.ndarray:
    """``|image + sigma * noise|`` (Rician where the signal is low); ``|image|`` without noise."""
    if sigma is None or noise is None:
        return np.abs(image).astype(np.float32)
    return np.abs(image + sigma * noise).astype(np.float32)


def pack_labels(labels: np.ndarray) -> np.ndarray:
    """Labels 0-3 as one-hot class counts packed 6 bits apart in a uint32 (``1 << 6 * label``)."""
    return np.left_shift(np.uint32(1), (6 * labels).astype(np.uint32))


def majority_of_packed(summed: np.ndarray) -> np.ndarray:
    """The most frequent class (lowest on ties, as ``argmax``) of summed :func:`pack_labels` counts."""
    best = summed & 63
    out = np.zeros(summed.shape, np.uint8)
    for c in range(1, 4):
        count = (summed >> (6 * c)) & 63
        out[count > best] = c
        np.maximum(best, count, out=best)
    return out


def majority_labels(fine: np.ndarray, s: int, n_sub: int) -> np.ndarray:
    """Labels 0-3 at the target grid: the most frequent class of each ``s x s x n_sub`` block of ``fine``.

    Class counts are packed 6 bits apart in one integer per sample, so one sum counts all four classes.
    """
    xs, ys, zf = fine.shape
    summed = pack_labels(fine).reshape(xs, ys, zf // n_sub, n_sub).sum(axis=3, dtype=np.uint32)
    summed = summed.reshape(xs // s, s, ys // s, s, -1).sum(axis=(1, 3), dtype=np.uint32)
    return majority_of_packed(summed)
