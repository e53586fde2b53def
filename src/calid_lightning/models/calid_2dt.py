"""CaLID 2D+T: latent diffusion over space and time that generates a missing slice's whole cine at once.

Each frame goes through the same frozen 2D VAE as the spatial model; the frame latents are stacked over time
into ``(C, T, h, w)``, and a 3D (T x h x w) U-Net / ControlNet denoiser (the same two-part conditioning:
neighbour cines below and above plus a constant r channel at the input, zero-initialised ControlNet
injection) generates the target cine, so the result is coherent over the cardiac cycle.

MONAI's 3D U-Net halves every axis, time included, ``levels - 1`` times, so T must be a multiple of
``time_multiple = 2 ** (levels - 1)``. The model pads the time axis by wrapping around (the cardiac cycle is
periodic, so frame T follows frame T - 1 like frame 0 does) before every denoiser call and crops back after,
so any frame count (25, 30, 50, odd counts) works at training and inference time.

Trains on the DataModule task ``"cine"``: ``below``, ``above``, ``target`` ``(B, 1, T, H, W)``, ``r`` ``(B,)``
and ``frames`` ``(B,)`` (real frames; the DataModule may already have wrap-padded T): the loss counts only
real frames.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from calid_lightning.metrics.temporal import temporal_coherence_error
from calid_lightning.models.conditioning import ConditionalDenoiser
from calid_lightning.models.diffusion import randn_like_from
from calid_lightning.models.latent_interpolator import LatentInterpolatorBase

BATCH_KEYS = ("below", "above", "target", "r")


def wrap_pad_time(x: Tensor, multiple: int, dim: int = 2) -> Tensor:
    """Pad axis ``dim`` up to a multiple of ``multiple`` by continuing the cycle (frame T = frame 0, ...)."""
    length = x.shape[dim]
    padded = -(-length // multiple) * multiple
    if padded == length:
        return x
    index = torch.arange(padded, device=x.device) % length
    return x.index_select(dim, index)


def real_frames(batch: dict[str, Tensor], count: int, length: int) -> list[int]:
    """Real frame counts of the first ``count`` items (``batch["frames"]``, else all ``length`` frames)."""
    frames = batch.get("frames")
    if frames is None:
        return [length] * count
    return [min(int(f), length) for f in torch.as_tensor(frames).reshape(-1)[:count]]


class CaLID2DT(LatentInterpolatorBase):
    """Spatiotemporal latent diffusion interpolator: the cine of a missing slice between two known cines.

    Inference API (the engine drives it like the spatial model, with cines as items): ``encode``
    ((N, 1, T, H, W) -> (N, C, T, h, w)), ``decode``, ``interpolate`` (latent cines in, latent cine out, EMA
    weights, DDIM), ``size_multiple`` (H, W) and ``time_multiple`` (the internal wrap-padding of T; any T is
    accepted). Constructor arguments: see :class:`LatentInterpolatorBase`; ``channels`` etc. now describe a 3D
    U-Net, so keep them small on CPUs.
    """

    spatial_dims = 3
    task = "cine"
    batch_keys = BATCH_KEYS
    frame_noise: float = 0.0
    """Correlation in [0, 1] of the initial sampling noise across the frames of a cine (0: independent)."""

    @property
    def time_multiple(self) -> int:
        """The 3D U-Net needs T divisible by this; the model wrap-pads T to it internally."""
        return 2 ** (len(self.hparams.channels) - 1)

    def _check_cine(self, x: Tensor, what: str) -> None:
        if x.ndim != 5:
            raise ValueError(f"CaLID2DT.{what} expects cines of shape (N, C, T, H, W), got {tuple(x.shape)}")

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Cines (N, 1, T, H, W) in [0, 1] -> scaled latent cines (N, C, T, H/f, W/f), frame by frame."""
        self._check_cine(x, "encode")
        self._check_size(x)
        n, _, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(n * t, 1, h, w)
        z = self.vae.encode(frames).float()
        return z.reshape(n, t, *z.shape[1:]).transpose(1, 2).contiguous()

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """Scaled latent cines (N, C, T, h, w) -> image cines (N, 1, T, H, W) clamped to [0, 1]."""
        self._check_cine(z, "decode")
        n, c, t = z.shape[:3]
        frames = self.vae.decode(z.transpose(1, 2).reshape(n * t, c, *z.shape[-2:])).float()
        return frames.reshape(n, t, *frames.shape[1:]).transpose(1, 2).clamp(0.0, 1.0).contiguous()

    def _initial_noise(self, like: Tensor, generator: torch.Generator | None) -> Tensor:
        """Noise for latent cines ``(N, C, T, h, w)``, correlated over T by :attr:`frame_noise`:
        ``sqrt(rho) * shared + sqrt(1 - rho) * independent`` (each still standard normal per element)."""
        rho = float(self.frame_noise)
        if rho == 0.0:
            return randn_like_from(like, generator)
        shared = randn_like_from(like[:, :, :1], generator).expand_as(like)
        if rho == 1.0:
            return shared.contiguous()
        return rho**0.5 * shared + (1.0 - rho) ** 0.5 * randn_like_from(like, generator)

    def _predict(
        self, denoiser: ConditionalDenoiser, noisy: Tensor, t: Tensor, below: Tensor, above: Tensor, r: Tensor
    ) -> Tensor:
        """Wrap-pad time to ``time_multiple``, run the 3D denoiser, crop back to the real frames."""
        length = noisy.shape[2]
        noisy, below, above = (wrap_pad_time(x, self.time_multiple) for x in (noisy, below, above))
        return denoiser(noisy, t, below, above, r)[:, :, :length]

    def _regression_loss(self, prediction: Tensor, target: Tensor, batch: dict[str, Tensor]) -> Tensor:
        """MSE over the real frames of each item (frames the DataModule wrap-padded are not counted twice)."""
        length = target.shape[2]
        frames = torch.tensor(real_frames(batch, target.shape[0], length), device=target.device)
        mask = (torch.arange(length, device=target.device) < frames[:, None]).to(target.dtype)
        mask = mask[:, None, :, None, None].expand_as(target)
        return ((prediction.float() - target) ** 2 * mask).sum() / mask.sum()

    def _sample_metrics(
        self, generated: Tensor, target: Tensor, linear: Tensor, batch: dict[str, Tensor]
    ) -> dict[str, Any]:
        """PSNR / SSIM over the real frames as 2D slices, plus the temporal-coherence error (lower = better).

        ``temporal_error`` is the mean absolute error of frame-to-frame differences against the truth;
        ``temporal_error_linear`` is the same for the linear blend of the neighbour cines.
        """
        frames = real_frames(batch, generated.shape[0], generated.shape[2])

        def as_slices(cine: Tensor) -> Tensor:
            return torch.cat([cine[i, :, :f].transpose(0, 1) for i, f in enumerate(frames)])

        def temporal(cine: Tensor) -> Tensor:
            pairs = [(cine[i, 0, :f], target[i, 0, :f]) for i, f in enumerate(frames)]
            return torch.tensor([temporal_coherence_error(p, t) for p, t in pairs]).mean()

        metrics = super()._sample_metrics(as_slices(generated), as_slices(target), as_slices(linear), batch)
        if min(frames) < 2:  # a single frame has no frame-to-frame differences
            return metrics
        return {**metrics, "temporal_error": temporal(generated), "temporal_error_linear": temporal(linear)}
