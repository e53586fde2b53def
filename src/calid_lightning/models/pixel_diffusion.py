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

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from calid_lightning.models.latent_interpolator import LatentInterpolatorBase

BATCH_KEYS = ("below", "above", "target", "r")


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
    ``"spatial"``. Arguments: as :class:`LatentInterpolatorBase` without the VAE ones.
    """

    spatial_dims = 2
    task = "spatial"
    batch_keys = BATCH_KEYS
    hparams_ignore: ClassVar[tuple[str, ...]] = ("vae_checkpoint", "vae_hparams")
    image_channels: ClassVar[int] = 1

    def __init__(
        self,
        channels: Sequence[int] = (64, 128, 128),
        attention_levels: Sequence[bool] = (False, False, True),
        num_res_blocks: int = 2,
        num_head_channels: int = 32,
        norm_num_groups: int = 32,
        injection: bool = True,
        conditioning_channels: Sequence[int] = (16,),
        num_train_timesteps: int = 1000,
        schedule: str = "scaled_linear_beta",
        beta_start: float = 0.0015,
        beta_end: float = 0.0195,
        prediction_type: str = "v_prediction",
        num_inference_steps: int = 50,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        lr_warmup_steps: int = 0,
        ema_decay: float = 0.999,
        ema_warmup: bool = True,
        val_sample_every: int = 1,
        val_num_samples: int = 8,
        val_sample_batches: int = 1,
        val_inference_steps: int = 20,
        val_seed: int = 0,
    ) -> None:
        super().__init__(
            vae_checkpoint=None,
            channels=channels,
            attention_levels=attention_levels,
            num_res_blocks=num_res_blocks,
            num_head_channels=num_head_channels,
            norm_num_groups=norm_num_groups,
            injection=injection,
            conditioning_channels=conditioning_channels,
            num_train_timesteps=num_train_timesteps,
            schedule=schedule,
            beta_start=beta_start,
            beta_end=beta_end,
            prediction_type=prediction_type,
            num_inference_steps=num_inference_steps,
            lr=lr,
            weight_decay=weight_decay,
            lr_warmup_steps=lr_warmup_steps,
            ema_decay=ema_decay,
            ema_warmup=ema_warmup,
            val_sample_every=val_sample_every,
            val_num_samples=val_num_samples,
            val_sample_batches=val_sample_batches,
            val_inference_steps=val_inference_steps,
            val_seed=val_seed,
        )

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
