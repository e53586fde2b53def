"""CaLID spatial interpolator: conditional latent diffusion that generates a slice between two known slices.

A thin subclass of :class:`~calid_lightning.models.latent_interpolator.LatentInterpolatorBase` (VAE handling,
ControlNet-conditioned U-Net, DDPM training, EMA, DDIM sampling) for 2D items: one slice ``(1, H, W)`` with
its latent ``(C, h, w)``. Trains on the DataModule task ``"spatial"``.
"""

from __future__ import annotations

from calid_lightning.models.latent_interpolator import (
    LatentInterpolatorBase,
    inference_vae_hparams,
    load_vae,
)

BATCH_KEYS = ("below", "above", "target", "r")

__all__ = ["BATCH_KEYS", "CaLIDSpatial", "inference_vae_hparams", "load_vae"]


class CaLIDSpatial(LatentInterpolatorBase):
    """Latent diffusion interpolator for one missing slice between two known ones.

    Inference API (used by the whole-volume upsampler): ``encode`` ((N, 1, H, W) -> (N, C, h, w)),
    ``decode``, ``interpolate`` (latents in, latent out, EMA weights, DDIM) and ``size_multiple``.
    Constructor arguments: see :class:`LatentInterpolatorBase`.
    """

    spatial_dims = 2
    task = "spatial"
    batch_keys = BATCH_KEYS
