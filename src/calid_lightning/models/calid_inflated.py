"""CaLID 2D+T by inflation: the trained spatial model plus zero-initialised temporal layers, tuned on cines.

Instead of a 3D (T, h, w) U-Net trained from scratch (:class:`~calid_lightning.models.calid_2dt.CaLID2DT`),
this model starts from a trained ``CaLIDSpatial`` checkpoint - its VAE, U-Net and ControlNet (the EMA
weights), its diffusion schedule and residual parameterisation - folds the frames of each cine into the batch
for the spatial layers, and inserts a :class:`~calid_lightning.models.temporal_layers.TemporalMixer` after
every resolution block (encoder, middle, decoder; the ControlNet's too with ``temporal_controlnet``). The
mixers' output projections start at zero, so the untrained inflated model *is* the spatial model applied
frame by frame (tests/test_calid_inflated.py checks it for odd and even frame counts); fine-tuning on cines
then learns only what couples the frames. ``spatial_lr = 0`` trains the temporal layers alone (the spatial
weights frozen); ``spatial_lr > 0`` fine-tunes everything, the spatial weights at that lower rate.

At sampling, ``frame_noise`` correlates the initial noise over the frames of a cine (0: independent, 1: one
noise for every frame), a cheap source of temporal coherence for frame-wise diffusion (``temporal_layers:
none`` with ``frame_noise: 1`` is the spatial model frame by frame with shared noise).

Trains on the DataModule task ``"cine"`` with ``time_multiple: 1``: the spatial layers do not care about T and
the temporal layers are cyclic, so any frame count works without padding.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from calid_lightning.checkpoint_file import read_checkpoint
from calid_lightning.data.subject import DataError
from calid_lightning.models.calid_2dt import CaLID2DT
from calid_lightning.models.conditioning import ConditionalDenoiser
from calid_lightning.models.ema import EMA
from calid_lightning.models.latent_interpolator import checkpoint_model_class
from calid_lightning.models.temporal_layers import TEMPORAL_LAYERS, TemporalMixer, inflate_blocks

ARCHITECTURE_KEYS = (
    "channels",
    "attention_levels",
    "num_res_blocks",
    "num_head_channels",
    "norm_num_groups",
    "injection",
    "conditioning_channels",
    "num_train_timesteps",
    "schedule",
    "beta_start",
    "beta_end",
    "prediction_type",
    "num_inference_steps",
    "vae_hparams",
)
"""What the inflated model takes from the spatial checkpoint: the network and diffusion it extends."""


class InflatedDenoiser(nn.Module):
    """A 2D :class:`ConditionalDenoiser` run on cines: frames folded into the batch, temporal mixers between
    its blocks. ``forward(noisy, t, below, above, r)`` takes latent cines ``(B, C, T, h, w)``."""

    def __init__(
        self,
        spatial: ConditionalDenoiser,
        layers: str = "conv",
        kernel_size: int = 3,
        controlnet: bool = False,
        blocks: str = "all",
        num_head_channels: int = 32,
        norm_num_groups: int = 32,
    ) -> None:
        super().__init__()
        if layers not in TEMPORAL_LAYERS:
            raise ValueError(f"temporal_layers must be one of {TEMPORAL_LAYERS}, got {layers!r}")
        self.spatial = spatial
        mixers: list[TemporalMixer] = []
        if layers != "none":
            args = {
                "layers": layers,
                "kernel_size": kernel_size,
                "num_head_channels": num_head_channels,
                "norm_num_groups": norm_num_groups,
            }
            mixers += inflate_blocks(spatial.unet, args, blocks)
            if controlnet and spatial.controlnet is not None:
                mixers += inflate_blocks(spatial.controlnet, args, blocks)
        self.mixers = mixers  # a plain list: the mixers are registered once, inside the blocks they follow

    def temporal_parameters(self) -> list[nn.Parameter]:
        """The parameters of the temporal layers (what ``spatial_lr = 0`` trains)."""
        return [p for mixer in self.mixers for p in mixer.parameters()]

    def forward(self, noisy: Tensor, t: Tensor, below: Tensor, above: Tensor, r: Tensor) -> Tensor:
        """Predict the diffusion target of latent cines ``(B, C, T, h, w)`` at timesteps ``t`` ``(B,)``."""
        batch, channels, frames = noisy.shape[:3]
        for mixer in self.mixers:
            mixer.frames = frames

        def fold(x: Tensor) -> Tensor:
            return x.transpose(1, 2).reshape(batch * frames, x.shape[1], *x.shape[3:])

        out = self.spatial(
            fold(noisy),
            t.reshape(-1).expand(batch).repeat_interleave(frames),
            fold(below),
            fold(above),
            r.reshape(-1).expand(batch).repeat_interleave(frames),
        )
        return out.reshape(batch, frames, channels, *out.shape[2:]).transpose(1, 2)


def read_spatial_checkpoint(path: str | None) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(hyperparameters, state_dict) of a ``CaLIDSpatial`` checkpoint; a one-line DataError otherwise."""
    from calid_lightning.models.calid_spatial import CaLIDSpatial

    if not path:
        raise ValueError(
            "CaLIDInflated needs model.init_args.spatial_checkpoint: a trained CaLIDSpatial checkpoint (e.g. "
            "runs/calid_spatial/quick/checkpoints/last.ckpt of `calid fit -c experiments/calid_spatial.yaml`)"
        )
    checkpoint = read_checkpoint(path)
    cls = checkpoint_model_class(checkpoint, path)
    if not issubclass(cls, CaLIDSpatial) or issubclass(cls, CaLID2DT):
        raise DataError(path, f"holds a {cls.__name__}; spatial_checkpoint must be a CaLIDSpatial checkpoint")
    return dict(checkpoint["hyper_parameters"]), checkpoint["state_dict"]


class CaLIDInflated(CaLID2DT):
    """The 2D+T interpolator inflated from a trained spatial model (see the module docstring).

    Inference API: as :class:`CaLID2DT` (latent cines in and out; any frame count, no padding).

    Args:
        spatial_checkpoint: the trained ``CaLIDSpatial`` checkpoint to inflate (read once, at the first
            construction: the inflated checkpoint then carries everything, ``spatial_hparams`` included).
        temporal_layers: ``conv`` (cyclic temporal convolution), ``attention`` (temporal self-attention),
            ``conv+attention``, or ``none`` (no temporal layers: the spatial model frame by frame).
        temporal_kernel: frames the temporal convolution spans (odd).
        temporal_controlnet: also mix after the ControlNet's blocks.
        temporal_blocks: ``all`` (after every down, middle and up block) or ``decoder`` (middle and up blocks
            only: cheaper to train with frozen spatial weights, as backpropagation stops at the middle block).
        spatial_lr: rate of the inherited spatial weights (0: frozen; only the temporal layers train).
        frame_noise: correlation of the initial sampling noise across frames, in [0, 1].
        lr, weight_decay, lr_warmup_steps, ema_decay, ema_warmup, val_*: as :class:`LatentInterpolatorBase`
            (``lr`` is the temporal layers' rate).
        latent_cache: train on cached VAE latents of the training cines (exact: the VAE is frozen).
        spatial_hparams: set automatically from the spatial checkpoint; leave unset.
    """

    spatial_dims = 2
    hparams_ignore: ClassVar[tuple[str, ...]] = ("vae_hparams", "spatial_hparams")

    def __init__(
        self,
        spatial_checkpoint: str | None = None,
        temporal_layers: str = "conv",
        temporal_kernel: int = 3,
        temporal_controlnet: bool = False,
        temporal_blocks: str = "all",
        spatial_lr: float = 0.0,
        frame_noise: float = 0.0,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        lr_warmup_steps: int = 0,
        ema_decay: float = 0.999,
        ema_warmup: bool = True,
        val_sample_every: int = 1,
        val_num_samples: int = 4,
        val_sample_batches: int = 1,
        val_inference_steps: int = 20,
        val_seed: int = 0,
        latent_cache: bool = False,
        spatial_hparams: dict[str, Any] | None = None,
    ) -> None:
        if not 0.0 <= frame_noise <= 1.0:
            raise ValueError(f"CaLIDInflated frame_noise must be in [0, 1], got {frame_noise}")
        if spatial_lr < 0:
            raise ValueError(f"CaLIDInflated spatial_lr must be >= 0, got {spatial_lr}")
        spatial_state = None
        if spatial_hparams is None:
            spatial_hparams, spatial_state = read_spatial_checkpoint(spatial_checkpoint)
        spatial_hparams = {
            k: spatial_hparams[k] for k in (*ARCHITECTURE_KEYS, "residual") if k in spatial_hparams
        }
        super().__init__(
            vae_checkpoint=None,
            **{k: spatial_hparams[k] for k in ARCHITECTURE_KEYS if k in spatial_hparams},
            residual=bool(spatial_hparams.get("residual", False)),
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
            latent_cache=latent_cache,
        )
        self.hparams["spatial_hparams"] = spatial_hparams
        if spatial_state is not None:
            self._load_spatial(spatial_state)
        self.denoiser = InflatedDenoiser(
            self.denoiser,
            temporal_layers,
            temporal_kernel,
            temporal_controlnet,
            temporal_blocks,
            num_head_channels=int(spatial_hparams.get("num_head_channels", 32)),
            norm_num_groups=int(spatial_hparams.get("norm_num_groups", 32)),
        )
        if spatial_lr == 0:
            self.denoiser.requires_grad_(False)
            for parameter in self.denoiser.temporal_parameters():
                parameter.requires_grad_(True)
        self.ema = EMA(self.denoiser, decay=ema_decay, warmup=ema_warmup)
        self.frame_noise = frame_noise

    def _load_spatial(self, state: dict[str, Tensor]) -> None:
        """Take the VAE, the residual scale and the EMA denoiser weights of a spatial checkpoint."""
        ema = {k.removeprefix("ema.module."): v for k, v in state.items() if k.startswith("ema.module.")}
        self.denoiser.load_state_dict(ema)
        self.vae.load_state_dict(
            {k.removeprefix("vae."): v for k, v in state.items() if k.startswith("vae.")}
        )
        if "residual_scale" in state:
            self.residual_scale.copy_(state["residual_scale"])

    @property
    def time_multiple(self) -> int:
        """No padding: the spatial layers see frames one by one and the temporal layers are cyclic."""
        return 1

    def _predict(
        self, denoiser: nn.Module, noisy: Tensor, t: Tensor, below: Tensor, above: Tensor, r: Tensor
    ) -> Tensor:
        return denoiser(noisy, t, below, above, r)

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW: the temporal layers at ``lr``; the spatial weights at ``spatial_lr`` when it is > 0."""
        temporal = self.denoiser.temporal_parameters()
        temporal_ids = {id(p) for p in temporal}
        groups = [{"params": temporal, "lr": self.hparams.lr}]
        if self.hparams.spatial_lr > 0:
            spatial = [p for p in self.denoiser.parameters() if id(p) not in temporal_ids]
            groups.append({"params": spatial, "lr": self.hparams.spatial_lr})
        if not temporal and self.hparams.spatial_lr == 0:
            raise ValueError("CaLIDInflated: temporal_layers=none and spatial_lr=0 leave nothing to train")
        optimizer = torch.optim.AdamW(
            [g for g in groups if g["params"]], weight_decay=self.hparams.weight_decay
        )
        warmup = max(1, self.hparams.lr_warmup_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
