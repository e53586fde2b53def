"""Pixel-space conditional diffusion interpolator: CaLID's denoiser without the VAE (the speed reference).

The same design as :class:`~calid_lightning.models.calid_spatial.CaLIDSpatial` - U-Net eps_theta with
ControlNet injection, neighbour slices concatenated at the input, a constant r channel, DDPM training, DDIM
sampling, EMA weights - but the diffusion runs directly on the image slices: the "codec" is the identity up
to an affine map of intensities, ``[0, 1] -> [-1, 1]`` (the usual range of pixel-space diffusion, so the unit
variance noise of the forward process matches the data's scale, as the latent scale factor does for CaLID).
``decode`` maps back and clamps to [0, 1].

At the same image size the U-Net sees 16x more positions than CaLID's (VAE factor 4 per axis): that is what
claim 3 of the paper (latent space makes whole-heart upsampling much faster) is measured against.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from calid_lightning.models.latent_interpolator import LatentInterpolatorBase

BATCH_KEYS = ("below", "above", "target", "r")
PIXEL_FIXED = frozenset({"latent_cache", "residual"})
"""Base arguments a pixel model does not take (no VAE to cache or to diffuse a residual over); its
checkpoints record them as False."""


def to_model_range(x: Tensor) -> Tensor:
    """Images in [0, 1] -> the diffusion's working range [-1, 1], float32."""
    return x.float() * 2.0 - 1.0


def from_model_range(z: Tensor) -> Tensor:
    """The diffusion's [-1, 1] range -> images clamped to [0, 1], float32."""
    return ((z.float() + 1.0) / 2.0).clamp(0.0, 1.0)


class PixelSpatial(LatentInterpolatorBase):
    """Conditional diffusion interpolator for one missing slice, in image space (no VAE).

    Inference API (the SliceInterpolator protocol of the whole-volume upsampler): ``encode``
    ((N, 1, H, W) in [0, 1] -> the same shape in [-1, 1]), ``decode`` (back, clamped), ``interpolate``
    (EMA weights, DDIM) and ``size_multiple`` (``2 ** (U-Net levels - 1)``). Trains on the DataModule task
    ``"spatial"``. Arguments (``**kwargs``): those of :class:`LatentInterpolatorBase` with its defaults,
    without the VAE, its latent cache and the residual target (``calid fit --model.help PixelSpatial``).
    """

    spatial_dims = 2
    task = "spatial"
    batch_keys = BATCH_KEYS
    hparams_ignore: ClassVar[tuple[str, ...]] = ("vae_checkpoint", "vae_hparams")
    image_channels: ClassVar[int] = 1

    def __init__(self, **kwargs: Any) -> None:
        for key in PIXEL_FIXED & kwargs.keys():  # saved, always False, in every PixelSpatial checkpoint
            if kwargs[key]:
                raise ValueError(f"PixelSpatial has no {key} (it needs a VAE); got {key}={kwargs[key]!r}")
            del kwargs[key]
        super().__init__(vae_checkpoint=None, latent_cache=False, residual=False, vae_hparams=None, **kwargs)

    def _build_codec(self, vae_checkpoint: str | None, vae_hparams: dict[str, Any] | None) -> tuple[int, int]:
        """No VAE: the denoiser works on the image's single channel at full resolution."""
        return self.image_channels, 1

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Image slices (N, 1, H, W) in [0, 1] -> the same slices in [-1, 1], float32."""
        self._check_size(x)
        if x.shape[1] != self.image_channels:
            raise ValueError(
                f"PixelSpatial.encode expects single-channel slices (N, 1, H, W), got {tuple(x.shape)}"
            )
        return to_model_range(x)

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """Slices in [-1, 1] -> image slices clamped to [0, 1]."""
        return from_model_range(z)
