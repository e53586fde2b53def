"""CaLID 2D+T by inflation: the trained spatial model plus zero-initialised temporal layers, tuned on cines.

Instead of a 3D (T, h, w) U-Net trained from scratch (the retired ``CaLID2DT``, which lost every comparison:
README claim 4), this model starts from a trained ``CaLIDSpatial`` checkpoint - its VAE, U-Net and ControlNet
(the EMA weights), its diffusion schedule and residual parameterisation - folds the frames of each cine into
the batch for the spatial layers, and inserts a :class:`~calid_lightning.models.temporal_layers.TemporalMixer`
after every resolution block (encoder, middle, decoder; the ControlNet's too with ``temporal_controlnet``).
The mixers' output projections start at zero, so the untrained inflated model *is* the spatial model applied
frame by frame (tests/models/test_calid_inflated.py checks it for odd and even frame counts); fine-tuning
on cines then learns only what couples the frames. ``spatial_lr = 0`` trains the temporal layers alone (the
spatial weights frozen); ``spatial_lr > 0`` fine-tunes everything, the spatial weights at that lower rate.

At sampling, ``frame_noise`` correlates the initial noise over the frames of a cine (0: independent, 1: one
noise for every frame), a cheap source of temporal coherence for frame-wise diffusion (``temporal_layers:
none`` with ``frame_noise: 1`` is the spatial model frame by frame with shared noise).

Trains on the DataModule task ``"cine"`` with ``time_multiple: 1``: the spatial layers do not care about T and
the temporal layers are cyclic, so any frame count works without padding.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from calid_lightning.checkpoint_file import read_checkpoint
from calid_lightning.data.subject import DataError
from calid_lightning.metrics.temporal import temporal_coherence_error
from calid_lightning.models.checkpoints import checkpoint_class
from calid_lightning.models.conditioning import ConditionalDenoiser
from calid_lightning.models.diffusion import randn_like_from
from calid_lightning.models.ema import EMA
from calid_lightning.models.latent_interpolator import DENOISER_HPARAMS, LatentInterpolatorBase
from calid_lightning.models.optimizers import adamw
from calid_lightning.models.schedules import stepwise_schedule
from calid_lightning.models.temporal_layers import TEMPORAL_LAYERS, TemporalMixer, inflate_blocks

ARCHITECTURE_KEYS = (
    *DENOISER_HPARAMS,
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

    def forward(
        self, noisy: Tensor, t: Tensor, below: Tensor, above: Tensor, r: Tensor, gap: Tensor | None = None
    ) -> Tensor:
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
            None if gap is None else gap.reshape(-1).expand(batch).repeat_interleave(frames),
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
    cls = checkpoint_class(checkpoint, path)
    if not issubclass(cls, CaLIDSpatial):
        raise DataError(path, f"holds a {cls.__name__}; spatial_checkpoint must be a CaLIDSpatial checkpoint")
    return dict(checkpoint["hyper_parameters"]), checkpoint["state_dict"]


BATCH_KEYS = ("below", "above", "target", "r")


def real_frames(batch: dict[str, Tensor], count: int, length: int) -> list[int]:
    """Real frame counts of the first ``count`` items (``batch["frames"]``, else all ``length`` frames)."""
    frames = batch.get("frames")
    if frames is None:
        return [length] * count
    return [min(int(f), length) for f in torch.as_tensor(frames).reshape(-1)[:count]]


class CaLIDInflated(LatentInterpolatorBase):
    """The 2D+T interpolator inflated from a trained spatial model (see the module docstring).

    Inference API (the engine drives it like the spatial model, with cines as items): ``encode``
    ((N, 1, T, H, W) -> (N, C, T, h, w), frame by frame through the VAE), ``decode``, ``interpolate`` (latent
    cines in, latent cine out, EMA weights, DDIM) and ``size_multiple``; any frame count, no padding.
    Trains on the DataModule task ``"cine"``: ``below``, ``above``, ``target`` ``(B, 1, T, H, W)``, ``r`` and
    ``frames`` (real frames; a DataModule with ``time_multiple > 1`` wrap-pads T): the loss counts only real
    frames.

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
        val_num_samples: cines sampled in validation (fewer than the base's slices: a cine is T slices).
        spatial_hparams: set automatically from the spatial checkpoint; leave unset.
        **kwargs: the training arguments of :class:`LatentInterpolatorBase` with its defaults (``lr``, the
            temporal layers' rate, ``weight_decay``, ``lr_warmup_steps``, ``ema_decay``, ``ema_warmup``, the
            other ``val_*``, ``latent_cache``: the training cines' VAE latents cached, exact as the VAE is
            frozen); the network, diffusion and VAE come from the spatial checkpoint.
    """

    spatial_dims = 2
    task = "cine"
    batch_keys = BATCH_KEYS
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
        val_num_samples: int = 4,
        spatial_hparams: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not 0.0 <= frame_noise <= 1.0:
            raise ValueError(f"CaLIDInflated frame_noise must be in [0, 1], got {frame_noise}")
        if spatial_lr < 0:
            raise ValueError(f"CaLIDInflated spatial_lr must be >= 0, got {spatial_lr}")
        spatial_state = None
        if spatial_hparams is None:
            spatial_hparams, spatial_state = read_spatial_checkpoint(spatial_checkpoint)
        architecture = {k: spatial_hparams[k] for k in ARCHITECTURE_KEYS if k in spatial_hparams}
        spatial_hparams = {**architecture, "residual": bool(spatial_hparams.get("residual", False))}
        for key in {"vae_checkpoint", "residual", *ARCHITECTURE_KEYS} & kwargs.keys():
            del kwargs[key]  # a saved inflated checkpoint's hparams repeat them: the spatial model's win
        base = inspect.signature(LatentInterpolatorBase.__init__).parameters
        net = {k: base[k].default for k in ARCHITECTURE_KEYS} | architecture
        # Named, not **net: the CLI then lists only the training arguments that **kwargs forwards.
        super().__init__(
            vae_checkpoint=None,
            channels=net["channels"],
            attention_levels=net["attention_levels"],
            num_res_blocks=net["num_res_blocks"],
            num_head_channels=net["num_head_channels"],
            norm_num_groups=net["norm_num_groups"],
            injection=net["injection"],
            conditioning_channels=net["conditioning_channels"],
            gap_conditioning=net["gap_conditioning"],
            gap_unit_mm=net["gap_unit_mm"],
            num_train_timesteps=net["num_train_timesteps"],
            schedule=net["schedule"],
            beta_start=net["beta_start"],
            beta_end=net["beta_end"],
            prediction_type=net["prediction_type"],
            num_inference_steps=net["num_inference_steps"],
            vae_hparams=net["vae_hparams"],
            residual=spatial_hparams["residual"],
            val_num_samples=val_num_samples,
            **kwargs,
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
        self.ema = EMA(self.denoiser, decay=self.hparams["ema_decay"], warmup=self.hparams["ema_warmup"])
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

    def _check_cine(self, x: Tensor, what: str) -> None:
        if x.ndim != 5:
            raise ValueError(
                f"CaLIDInflated.{what} expects cines of shape (N, C, T, H, W), got {tuple(x.shape)}"
            )

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

    @property
    def time_multiple(self) -> int:
        """No padding: the spatial layers see frames one by one and the temporal layers are cyclic."""
        return 1

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
        optimizer = adamw(self, [g for g in groups if g["params"]], weight_decay=self.hparams.weight_decay)
        return stepwise_schedule(self, optimizer, self.hparams.lr_warmup_steps, self.lr_decay)

    def _regression_loss(
        self, prediction: Tensor, target: Tensor, batch: dict[str, Tensor], weights: Tensor
    ) -> Tensor:
        """Weighted MSE over the real frames of each item (frames the DataModule wrap-padded are not counted
        twice); ``weights`` ``(B,)`` scale each item's squared errors."""
        length = target.shape[2]
        frames = torch.tensor(real_frames(batch, target.shape[0], length), device=target.device)
        mask = (torch.arange(length, device=target.device) < frames[:, None]).to(target.dtype)
        mask = mask[:, None, :, None, None].expand_as(target)
        weighted = mask * weights.to(target.dtype).reshape(-1, 1, 1, 1, 1)
        return ((prediction.float() - target) ** 2 * weighted).sum() / mask.sum()

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
