"""The shared core of the CaLID interpolators: conditional latent diffusion between two known slices.

Training: the frozen VAE encodes the slice below, the slice above and the target to scaled latents; a DDPM
step noises the target latent and the ``ConditionalDenoiser`` (U-Net eps_theta + ControlNet tau_theta)
predicts the noise or velocity given the neighbour latents and the relative position r. Sampling: a DDIM chain
with the EMA weights, deterministic for a given generator.

The VAE is a frozen sub-module: its weights and latent scale factor travel in the model's checkpoint, and its
architecture is rebuilt from hyperparameters saved with it, so ``load_from_checkpoint`` needs no VAE file.

:class:`LatentInterpolatorBase` does all of this for 2D latents; the subclasses choose the representation:
``CaLIDSpatial`` (one slice, 2D U-Net) and ``CaLIDInflated`` (a slice's whole cine, the spatial U-Net inflated
with temporal layers), which
overrides the few hooks that depend on the shape of an item (``encode``, ``decode``, ``_predict``,
``_regression_loss``, ``_sample_metrics``). The image <-> representation step is a hook too
(``_build_codec`` with ``encode`` / ``decode``): ``PixelSpatial`` replaces the VAE by the identity, so the
same denoiser runs on image slices (the pixel-space speed reference).
"""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from lightning.pytorch import LightningModule
from torch import Tensor
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from calid_lightning.data.datasets import task_frames
from calid_lightning.data.sampling import sample_train_example
from calid_lightning.models.checkpoints import NamedCheckpoint, load_model
from calid_lightning.models.conditioning import ConditionalDenoiser, lerp, per_item
from calid_lightning.models.diffusion import (
    check_loss_weighting,
    ddim_sample,
    loss_weights,
    make_schedulers,
    randn_like_from,
    sample_timesteps,
    training_target,
)
from calid_lightning.models.ema import EMA
from calid_lightning.models.latent_cache import LatentCache, module_digest
from calid_lightning.models.optimizers import FusedClipping, adamw
from calid_lightning.models.schedules import check_lr_decay, stepwise_schedule
from calid_lightning.models.vae import VAEModule

DENOISER_HPARAMS = (
    "channels",
    "attention_levels",
    "num_res_blocks",
    "num_head_channels",
    "norm_num_groups",
    "injection",
    "conditioning_channels",
    "gap_conditioning",
    "gap_unit_mm",
)
"""The constructor arguments that shape the conditional denoiser (U-Net + ControlNet) and its inputs."""


def load_vae(vae_checkpoint: str | None, vae_hparams: dict[str, Any] | None = None) -> VAEModule:
    """The frozen VAE for inference inside CaLID, without discriminator or perceptual network.

    ``vae_hparams`` wins: the architecture is rebuilt and its weights and scale factor then come from a CaLID
    state_dict, so a CaLID checkpoint restores its own VAE without the original VAE file. Otherwise the VAE is
    loaded from ``vae_checkpoint`` and only its inference parts are kept.
    """
    if vae_hparams is None and not vae_checkpoint:
        raise ValueError(
            "CaLID needs model.vae_checkpoint: the path of a trained VAE checkpoint "
            "(e.g. runs/vae/quick/checkpoints/last.ckpt from `calid fit -c experiments/vae.yaml ...`)"
        )
    loaded = load_model(vae_checkpoint, VAEModule) if vae_hparams is None else None
    hparams = inference_vae_hparams(loaded.hparams if loaded is not None else vae_hparams)
    accepted = inspect.signature(VAEModule.__init__).parameters
    vae = VAEModule(**{k: v for k, v in hparams.items() if k in accepted})
    if loaded is not None:
        own_keys = vae.state_dict().keys()
        vae.load_state_dict({k: v for k, v in loaded.state_dict().items() if k in own_keys})
    return vae.requires_grad_(False).eval()


def inference_vae_hparams(hparams: Any) -> dict[str, Any]:
    """A VAE's constructor arguments without its training-only parts (discriminator, perceptual weights)."""
    plain = {k: v for k, v in dict(hparams).items() if not k.startswith("_")}
    return {**plain, "adv_weight": 0.0, "perceptual_weights": None}


class LatentInterpolatorBase(NamedCheckpoint, FusedClipping, LightningModule):
    """Latent diffusion interpolator for one missing item (a slice or a cine) between two known ones.

    Inference API (used by the whole-volume upsampler): ``encode``, ``decode``, ``interpolate`` (latents in,
    latent out, EMA weights, DDIM) and ``size_multiple``.

    Args:
        vae_checkpoint: trained VAE checkpoint (``VAEModule.load_frozen``); not needed when loading a CaLID
            checkpoint, which carries the VAE.
        channels, attention_levels, num_res_blocks, num_head_channels, norm_num_groups: the U-Net (and
            ControlNet) architecture; channels must be multiples of ``norm_num_groups``.
        injection: build tau_theta2 (ControlNet residual injection); False = input concatenation only.
        conditioning_channels: channels of the ControlNet conditioning encoder (``(16,)`` keeps latent size).
        gap_conditioning, gap_unit_mm: also condition on the physical distance between the two known slices
            (``gap_mm / gap_unit_mm`` as one more constant channel): training items carry ``gap_mm``, and
            :meth:`interpolate` then needs ``gap_mm`` (the upsampler passes it from the slice spacing).
        num_train_timesteps, schedule, beta_start, beta_end, prediction_type: the diffusion process
            (``prediction_type`` "v_prediction" or "epsilon").
        num_inference_steps: DDIM steps of ``interpolate`` by default.
        lr, weight_decay, lr_warmup_steps, lr_decay: AdamW over the U-Net and ControlNet only, linear warm-up,
            then a constant rate or a cosine decay to 0.1 x ``lr`` at ``trainer.max_steps``
            (:mod:`~calid_lightning.models.schedules`).
        loss_weighting, min_snr_gamma: ``uniform`` (plain MSE) or ``min_snr``: each item's MSE weighted by
            min-SNR-gamma (Hang et al. 2023, :func:`~calid_lightning.models.diffusion.loss_weights`), which
            keeps the many nearly clean timesteps from dominating the gradient.
        ema_decay, ema_warmup: EMA of the U-Net and ControlNet, used for sampling.
        val_sample_every: every this many validation runs (epoch- or ``val_check_interval``-triggered; sanity
            checks excluded), sample ``val_num_samples`` items of the first
            ``val_sample_batches`` validation batches with ``val_inference_steps`` DDIM steps and log
            ``val/psnr``, ``val/ssim`` and the linear-interpolation reference ``val/psnr_linear`` (0 = never).
        val_seed: seed of the validation noise, timesteps and sampling (the same every epoch).
        latent_cache: encode every slice of the training subjects once at the start of fit
            (:class:`~calid_lightning.models.latent_cache.LatentCache`, on disk under the DataModule's
            ``cache_dir``/latents when it has one) and train on those latents instead of encoding three
            slices (or cines) per example; exact, since the VAE is frozen and training items are not
            augmented (no ``augment`` in the data config).
        residual: diffuse the residual over latent lerp, ``(z - lerp(below, above, r)) * residual_scale``,
            instead of the latent itself: the model starts at lerp and only learns the correction.
            ``residual_scale`` (1 / std of the residual over training examples) is computed at the start
            of the first fit and kept in the checkpoint.
        vae_hparams: set automatically to the VAE's hyperparameters, saved in the checkpoint; leave unset.
    """

    spatial_dims: ClassVar[int] = 2
    """Spatial dimensions of the latent items the denoiser sees (2: (h, w); 3: (T, h, w))."""
    task: ClassVar[str] = "spatial"
    """The DataModule task whose batches this model trains on."""
    batch_keys: ClassVar[tuple[str, ...]] = ("below", "above", "target", "r")
    hparams_ignore: ClassVar[tuple[str, ...]] = ("vae_hparams",)
    """Constructor arguments ``save_hyperparameters`` leaves out (``vae_hparams`` is set by the codec)."""

    def __init__(
        self,
        vae_checkpoint: str | None = None,
        channels: Sequence[int] = (64, 128, 128),
        attention_levels: Sequence[bool] = (False, False, True),
        num_res_blocks: int = 2,
        num_head_channels: int = 32,
        norm_num_groups: int = 32,
        injection: bool = True,
        conditioning_channels: Sequence[int] = (16,),
        gap_conditioning: bool = False,
        gap_unit_mm: float = 10.0,
        num_train_timesteps: int = 1000,
        schedule: str = "scaled_linear_beta",
        beta_start: float = 0.0015,
        beta_end: float = 0.0195,
        prediction_type: str = "v_prediction",
        num_inference_steps: int = 50,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        lr_warmup_steps: int = 0,
        lr_decay: str = "constant",
        loss_weighting: str = "uniform",
        min_snr_gamma: float = 5.0,
        ema_decay: float = 0.999,
        ema_warmup: bool = True,
        val_sample_every: int = 1,
        val_num_samples: int = 8,
        val_sample_batches: int = 1,
        val_inference_steps: int = 20,
        val_seed: int = 0,
        latent_cache: bool = False,
        residual: bool = False,
        vae_hparams: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        check_lr_decay(lr_decay)
        check_loss_weighting(loss_weighting, min_snr_gamma)
        if not gap_unit_mm > 0:
            raise ValueError(f"gap_unit_mm must be > 0, got {gap_unit_mm}")
        self.save_hyperparameters(ignore=list(self.hparams_ignore))
        self.latent_channels, downsample_factor = self._build_codec(vae_checkpoint, vae_hparams)
        self.denoiser = ConditionalDenoiser(
            latent_channels=self.latent_channels,
            channels=channels,
            attention_levels=attention_levels,
            num_res_blocks=num_res_blocks,
            num_head_channels=num_head_channels,
            norm_num_groups=norm_num_groups,
            injection=injection,
            conditioning_channels=conditioning_channels,
            spatial_dims=self.spatial_dims,
            gap_channel=gap_conditioning,
        )
        self.gap_conditioning, self.gap_unit_mm = gap_conditioning, gap_unit_mm
        self.ema = EMA(self.denoiser, decay=ema_decay, warmup=ema_warmup)
        self.ddpm, self.ddim = make_schedulers(
            num_train_timesteps, schedule, prediction_type, beta_start, beta_end
        )
        self.size_multiple = downsample_factor * 2 ** (len(channels) - 1)
        self.val_psnr = PeakSignalNoiseRatio(data_range=1.0)
        self.val_ssim = StructuralSimilarityIndexMeasure(data_range=1.0)
        self.val_psnr_linear = PeakSignalNoiseRatio(data_range=1.0)
        self._ema_step = -1
        self._validation_runs = 0
        self._fit_seed = 0
        self._noise_step, self._micro_batch = -1, 0
        # Flags from the constructor, not hparams: a subclass that re-lists the arguments saves only its own.
        self.use_latent_cache, self.residual = latent_cache, residual
        self.lr_decay, self.loss_weighting, self.min_snr_gamma = lr_decay, loss_weighting, min_snr_gamma
        self._latent_cache: LatentCache | None = None
        self.register_buffer("residual_scale", torch.zeros(()))

    def _build_codec(self, vae_checkpoint: str | None, vae_hparams: dict[str, Any] | None) -> tuple[int, int]:
        """Attach the frozen VAE as ``self.vae``; returns its (latent channels, downsampling factor).

        Subclasses working in another representation override this together with ``encode``/``decode``.
        """
        # A fresh contextvars.Context: under LightningCLI this module's hyperparameters sit in a context
        # variable that save_hyperparameters of a LightningModule built here (the VAE) would take as its own.
        self.vae = contextvars.Context().run(load_vae, vae_checkpoint, vae_hparams)
        self.hparams["vae_hparams"] = inference_vae_hparams(self.vae.hparams)
        return int(self.vae.latent_channels), int(self.vae.downsample_factor)

    def train(self, mode: bool = True) -> LatentInterpolatorBase:
        """Switch training mode; a frozen VAE stays in eval mode."""
        super().train(mode)
        vae = getattr(self, "vae", None)
        if vae is not None:
            vae.eval()
        return self

    # ---- inference API -------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Image slices (N, 1, H, W) in [0, 1] -> scaled latents (N, C, H/f, W/f), float32."""
        return self.encode_slices(x)

    @torch.no_grad()
    def encode_slices(self, x: Tensor) -> Tensor:
        """2D image slices (N, 1, H, W) -> scaled VAE latents, whatever this model's items are (the latent
        cache stores slices, also for cine models)."""
        self._check_size(x)
        return self.vae.encode(x).float()

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """Scaled latents -> image slices clamped to [0, 1]."""
        return self.vae.decode(z).float().clamp(0.0, 1.0)

    @torch.no_grad()
    def interpolate(
        self,
        below: Tensor,
        above: Tensor,
        r: Tensor,
        num_steps: int | None = None,
        generator: torch.Generator | None = None,
        gap_mm: Tensor | None = None,
    ) -> Tensor:
        """Generate the latent at relative position r between two neighbour latents (EMA weights, DDIM).

        Args:
            below, above: latents (B, C, *S) of the nearest known items below and above.
            r: (B,) relative positions in (0, 1) (or one value for the whole batch).
            num_steps: DDIM steps (default: ``num_inference_steps``).
            generator: CPU generator of the initial noise; equal generators give equal outputs (eta = 0).
            gap_mm: (B,) distances in mm between ``below`` and ``above`` (or one value); required by a
                model trained with ``gap_conditioning``, ignored by one without.
        Returns:
            the generated latent (B, C, *S).
        """
        r = per_item(r, below)
        gap = self._gap_input(gap_mm, below)
        denoiser = self.ema.module
        noise = self._initial_noise(below, generator)

        def predict(sample: Tensor, t: Tensor) -> Tensor:
            return self._predict(denoiser, sample, t, below, above, r, gap)

        generated = ddim_sample(predict, self.ddim, noise, num_steps or self.hparams.num_inference_steps)
        return self.from_diffused(generated, below, above, r)

    def _gap_input(self, gap_mm: Tensor | float | None, like: Tensor) -> Tensor | None:
        """The gap channel's values ``(B,)`` (``gap_mm / gap_unit_mm``), None for a model without it."""
        if not self.gap_conditioning:
            return None
        if gap_mm is None:
            raise ValueError(
                f"{type(self).__name__} was trained with gap_conditioning: pass gap_mm, the distance in mm "
                "between the two known slices (calid upsample and evaluate take it from the slice spacing)"
            )
        return per_item(gap_mm, like) / self.gap_unit_mm

    def to_diffused(self, latent: Tensor, below: Tensor, above: Tensor, r: Tensor) -> Tensor:
        """The variable the diffusion runs on: the latent, or its scaled residual over lerp (``residual``)."""
        if not self.residual:
            return latent
        return (latent - lerp(below, above, r)) * self._residual_scale()

    def from_diffused(self, diffused: Tensor, below: Tensor, above: Tensor, r: Tensor) -> Tensor:
        """Inverse of :meth:`to_diffused`."""
        if not self.residual:
            return diffused
        return lerp(below, above, r) + diffused / self._residual_scale()

    def _residual_scale(self) -> Tensor:
        if float(self.residual_scale) <= 0:
            raise RuntimeError(
                f"{type(self).__name__}(residual=True) has no residual_scale yet: it is computed at the "
                "start of fit (or restored from a checkpoint)"
            )
        return self.residual_scale

    # ---- hooks for the item shape --------------------------------------------------------------------------
    def _initial_noise(self, like: Tensor, generator: torch.Generator | None) -> Tensor:
        """The noise a DDIM chain of :meth:`interpolate` starts from (independent per element)."""
        return randn_like_from(like, generator)

    def _predict(
        self,
        denoiser: ConditionalDenoiser,
        noisy: Tensor,
        t: Tensor,
        below: Tensor,
        above: Tensor,
        r: Tensor,
        gap: Tensor | None,
    ) -> Tensor:
        """The denoiser's prediction for latents of this model's item shape (training and sampling)."""
        return denoiser(noisy, t, below, above, r, gap)

    def _regression_loss(
        self, prediction: Tensor, target: Tensor, batch: dict[str, Tensor], weights: Tensor
    ) -> Tensor:
        """The diffusion regression loss: each item's MSE times its weight ``(B,)``, averaged."""
        per_item = (prediction.float() - target).square().flatten(1).mean(dim=1)
        return (per_item * weights).mean()

    def _sample_metrics(
        self, generated: Tensor, target: Tensor, linear: Tensor, batch: dict[str, Tensor]
    ) -> dict[str, Any]:
        """Update the validation image metrics on decoded samples; returns them by name for logging."""
        self.val_psnr(generated, target)
        self.val_ssim(generated, target)
        self.val_psnr_linear(linear, target)
        return {"psnr": self.val_psnr, "ssim": self.val_ssim, "psnr_linear": self.val_psnr_linear}

    def _check_size(self, x: Tensor) -> None:
        if x.shape[-1] % self.size_multiple or x.shape[-2] % self.size_multiple:
            raise ValueError(
                f"image size {tuple(x.shape[-2:])} is not divisible by {type(self).__name__}.size_multiple="
                f"{self.size_multiple} (VAE factor, 1 in pixel space, x 2**(U-Net levels - 1)); "
                "crop or pad the slices"
            )

    # ---- training ------------------------------------------------------------------------------------------
    def _encode_batch(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        missing = [k for k in self.batch_keys if k not in batch]
        if missing:
            raise KeyError(
                f"{type(self).__name__} batch lacks {missing}; expected keys {self.batch_keys} "
                f"(data task '{self.task}')"
            )
        cached = self._cached_latents(batch)
        if cached is not None:
            return (*cached, batch["r"].float())
        below, above, target = (self.encode(batch[k]) for k in ("below", "above", "target"))
        return below, above, target, batch["r"].float()

    def _cached_latents(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor] | None:
        """(below, above, target) latents from the latent cache, for training batches of cached subjects."""
        cache = self._latent_cache
        if cache is None or not self.training or "z_below" not in batch:
            return None
        ids = list(batch["subject_id"])
        if not all(s in cache for s in ids):
            return None
        frames = batch.get("frame_indices", batch["frame"])
        return tuple(cache.lookup(ids, batch[key], frames) for key in ("z_below", "z_above", "z"))

    def build_latent_cache(self, datamodule: Any) -> None:
        """Encode the training subjects of ``datamodule`` (a CardiacDataModule) once (``latent_cache``)."""
        cache_dir = getattr(datamodule.hparams, "cache_dir", None)
        self._latent_cache = LatentCache.build(
            self.encode_slices,
            (datamodule.prepared_subject(s) for s in datamodule.subjects("train")),
            module_digest(self.vae),
            self.device,
            Path(cache_dir) / "latents" if cache_dir else None,
        )

    @torch.no_grad()
    def fit_residual_scale(self, datamodule: Any, examples: int = 512, seed: int = 0) -> None:
        """``residual_scale`` = 1 / std of ``z - lerp`` over ``examples`` fixed-seed training examples of
        ``datamodule`` (a CardiacDataModule: ``subjects``, ``prepared_subject``, ``train_factors``)."""
        rng = np.random.default_rng(seed)
        subjects = datamodule.subjects("train")
        residuals = []
        for _ in range(examples):
            prepared = datamodule.prepared_subject(subjects[int(rng.integers(len(subjects)))])
            frames = task_frames(prepared, getattr(datamodule.hparams, "frames", "all"))
            ex = sample_train_example(
                prepared.subject_id, prepared.num_slices, datamodule.train_factors, frames, rng
            )
            images = torch.from_numpy(prepared.image[[ex.below, ex.above, ex.target], ex.frame].copy())
            below, above, target = self.encode_slices(images[:, None].to(self.device))
            lerped = lerp(below[None], above[None], torch.tensor([ex.r], device=self.device))
            residuals.append(target - lerped[0])
        std = torch.stack(residuals).float().std()
        self.residual_scale.fill_(1.0 / float(std.clamp_min(1e-6)))

    def _diffusion_loss(
        self, batch: dict[str, Tensor], generator: torch.Generator | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor, Tensor]]:
        below, above, target, r = latents = self._encode_batch(batch)
        clean = self.to_diffused(target, below, above, r)
        t = sample_timesteps(clean.shape[0], self.ddpm.num_train_timesteps, clean.device, generator)
        noise = randn_like_from(clean, generator)
        noisy = self.ddpm.add_noise(clean, noise, t)
        gap = self._gap_input(batch.get("gap_mm") if self.gap_conditioning else None, clean)
        prediction = self._predict(self.denoiser, noisy, t, below, above, r, gap)
        weights = loss_weights(self.ddpm, t, self.loss_weighting, self.min_snr_gamma)
        loss = self._regression_loss(prediction, training_target(self.ddpm, clean, noise, t), batch, weights)
        return loss, latents

    def on_fit_start(self) -> None:
        """Remember the run's seed (training noise comes from (seed, step, micro-batch, rank)); build the
        latent cache and, on a first fit, the residual scale."""
        self._fit_seed = torch.initial_seed()
        cache_missing = self.use_latent_cache and self._latent_cache is None
        scale_missing = self.residual and float(self.residual_scale) <= 0
        if not (cache_missing or scale_missing):
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "prepared_subject"):
            raise ValueError(
                f"{type(self).__name__}: latent_cache and residual need a CardiacDataModule as the fit's "
                "datamodule (calid fit builds one from the data config)"
            )
        if cache_missing:
            self.build_latent_cache(datamodule)
        if scale_missing:
            self.fit_residual_scale(datamodule)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """MSE between the denoiser's prediction and the noise / velocity at a random timestep.

        Timesteps and noise come from a generator keyed by (seed, global step, micro-batch, rank), so a run
        resumed from a checkpoint draws exactly what the uninterrupted run would have drawn.
        """
        self._micro_batch = self._micro_batch + 1 if self.global_step == self._noise_step else 0
        self._noise_step = self.global_step
        key = [self._fit_seed, self.global_step, self._micro_batch, self.global_rank]
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence(key).generate_state(1)[0]))
        loss, _ = self._diffusion_loss(batch, generator)
        self.log(
            "train/loss",
            loss,
            prog_bar=True,
            on_step=True,
            on_epoch=True,
            sync_dist=True,
            batch_size=batch["r"].shape[0],
        )
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Update the EMA once per optimizer step (not per accumulated micro-batch)."""
        if self.global_step != self._ema_step:
            self.ema.update(self.denoiser)
            self._ema_step = self.global_step

    # ---- validation ----------------------------------------------------------------------------------------
    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """Loss at fixed-seed timesteps and noise; on sampling runs also DDIM samples -> PSNR / SSIM."""
        generator = torch.Generator().manual_seed(self.hparams.val_seed + batch_idx)
        loss, (below, above, _, r) = self._diffusion_loss(batch, generator)
        batch_size = r.shape[0]
        self.log("val/loss", loss, prog_bar=True, on_epoch=True, sync_dist=True, batch_size=batch_size)
        if not self._sampling_run() or batch_idx >= self.hparams.val_sample_batches:
            return
        n = min(self.hparams.val_num_samples, batch_size)
        sample_generator = torch.Generator().manual_seed(self.hparams.val_seed + batch_idx)
        gap_mm = batch["gap_mm"][:n] if self.gap_conditioning else None
        latent = self.interpolate(
            below[:n], above[:n], r[:n], self.hparams.val_inference_steps, sample_generator, gap_mm
        )
        generated = self.decode(latent)
        target = batch["target"][:n].float()
        linear = lerp(batch["below"][:n].float(), batch["above"][:n].float(), r[:n])
        head = {k: v[:n] for k, v in batch.items() if isinstance(v, Tensor) and v.ndim > 0}
        metrics = self._sample_metrics(generated, target, linear, head)
        for name, metric in metrics.items():
            self.log(f"val/{name}", metric, on_epoch=True, batch_size=n)
        if batch_idx == 0:
            self._log_samples(batch["below"][:n], generated, target, batch["above"][:n])

    def _log_samples(self, *columns: Tensor) -> None:
        """One image of rows ``below | generated | target | above`` for loggers with ``log_image`` (W&B)."""
        log_image = getattr(self.logger, "log_image", None)
        if log_image is None:
            return
        rows = torch.cat([c[:, 0].float() for c in columns], dim=-1)
        grid = rows.reshape(-1, rows.shape[-1]).cpu().numpy()
        caption = ["below | generated | target | above"]
        log_image(key="val/samples", images=[grid], caption=caption, step=self.global_step)

    def on_validation_epoch_start(self) -> None:
        """Count validation runs (not sanity checks): sampling happens every ``val_sample_every``-th."""
        if not self.trainer.sanity_checking:
            self._validation_runs += 1

    def _sampling_run(self) -> bool:
        every = self.hparams.val_sample_every
        if every <= 0 or self.trainer.sanity_checking:
            return False
        return self._validation_runs % every == 0

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW over the trained parts (U-Net and ControlNet): linear warm-up, then ``lr_decay``."""
        hp = self.hparams
        optimizer = adamw(self, self.denoiser.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        return stepwise_schedule(self, optimizer, self.hparams.lr_warmup_steps, self.lr_decay)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Name this class in the checkpoint (tools load it without being told which model it is) and keep
        the validation count, so sampling validations (``val_sample_every``) fall on the same runs after a
        resume."""
        super().on_save_checkpoint(checkpoint)
        checkpoint["validation_runs"] = self._validation_runs

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._validation_runs = int(checkpoint.get("validation_runs", 0))
