"""The VAE stage of CaLID: a 2D MONAI ``AutoencoderKL`` trained on single short-axis slices.

Training loss: L1 (``recon_loss="mse"``: squared) reconstruction error + KL (small weight), optionally a
least-squares patch-GAN term after a warm-up (then manual optimization with two optimizers) and a perceptual
term when its weights are on disk.

The latent scale factor (1 / std of the training latents' posterior means) is a registered buffer, so it
travels in every checkpoint. :class:`LatentScaleFactor` (attached by ``configure_callbacks``) computes it
once, at the last training batch with the final weights, averaged over DDP ranks, *before* the checkpoints
of that step are written (Lightning runs ``ModelCheckpoint`` after every other callback). Inference never
recomputes it: :meth:`VAEModule.check_loaded` makes
:func:`~calid_lightning.models.checkpoints.load_model` refuse a checkpoint without it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from monai.losses import PatchAdversarialLoss
from monai.networks.nets import AutoencoderKL, PatchDiscriminator
from torch import Tensor, nn
from torchmetrics.image import PeakSignalNoiseRatio

from calid_lightning.errors import DataError
from calid_lightning.models.attention import float32_attention
from calid_lightning.models.checkpoints import NamedCheckpoint
from calid_lightning.models.losses import build_perceptual_loss, kl_divergence
from calid_lightning.models.optimizers import FusedClipping, adamw, clip_gradients
from calid_lightning.models.schedules import check_lr_decay, max_steps_of, warmup_decay_scheduler

RECON_LOSSES = {"l1": nn.functional.l1_loss, "mse": nn.functional.mse_loss}


def _images(batch: Any) -> Tensor:
    """The ``(B, 1, H, W)`` image tensor of a DataModule batch (``{"image": ...}``) or a bare tensor."""
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, dict) and "image" in batch:
        return batch["image"]
    keys = list(batch) if isinstance(batch, dict) else type(batch).__name__
    raise KeyError(f"VAEModule expects batches as {{'image': (B, 1, H, W) tensor}}; got {keys}")


def _final_training_batch(trainer: Trainer) -> bool:
    """True in ``on_train_batch_end`` of the batch after which ``fit`` stops (max_steps or last epoch)."""
    if trainer.max_steps is not None and trainer.max_steps >= 0 and trainer.global_step >= trainer.max_steps:
        return True
    max_epochs = trainer.max_epochs
    if max_epochs is None or max_epochs < 0 or trainer.current_epoch + 1 < max_epochs:
        return False
    progress = trainer.fit_loop.epoch_loop.batch_progress
    return progress.is_last_batch or progress.current.ready >= trainer.num_training_batches


class LatentScaleFactor(Callback):
    """Computes ``VAEModule.scale_factor`` once per ``fit``, from the final weights.

    Main path: at the end of the final training batch, before ModelCheckpoint saves that step, so
    ``last.ckpt`` (and a best checkpoint of the final validation) carry it. Fallback for runs stopped early
    (EarlyStopping, ``max_time``, ``should_stop``): compute it in ``on_train_end`` and save each ``last``
    checkpoint again.
    """

    def __init__(self) -> None:
        self._computed = False
        self._trained = False

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._computed = False
        self._trained = False

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._trained = True
        if not self._computed and _final_training_batch(trainer):
            self._compute(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._computed or (not self._trained and bool(pl_module.scale_factor_computed)):
            return
        self._compute(trainer, pl_module)
        for checkpoint in trainer.checkpoint_callbacks:
            last = getattr(checkpoint, "last_model_path", "")
            if last:
                trainer.save_checkpoint(last)

    def _compute(self, trainer: Trainer, pl_module: LightningModule) -> None:
        assert isinstance(pl_module, VAEModule)
        pl_module.compute_scale_factor(trainer.train_dataloader)
        self._computed = True


class VAEModule(NamedCheckpoint, FusedClipping, LightningModule):
    """2D KL-autoencoder for single SAX slices in [0, 1]; encodes to *scaled* latents at 1/4 resolution.

    Args:
        channels: feature channels per level; ``len(channels) - 1`` downsamplings (3 levels = factor 4).
        latent_channels: channels of the latent map.
        num_res_blocks: residual blocks per level.
        attention_levels: self-attention per level (default: none); ``nonlocal_attn`` adds MONAI's bottleneck
            attention in encoder and decoder.
        norm_num_groups: GroupNorm groups; must divide every entry of ``channels``.
        lr, weight_decay: AdamW settings of the autoencoder (and of the discriminator unless ``disc_lr``).
        lr_warmup_steps, lr_decay: the autoencoder's rate: linear warm-up, then ``constant`` or ``cosine`` to
            0.1 x ``lr`` at ``trainer.max_steps``, or at ``freeze_encoder_at`` when it comes first (the
            decoder-only steps then run at 0.1 x ``lr``) (:mod:`~calid_lightning.models.schedules`).
        recon_loss: ``l1`` (default) or ``mse``, the reconstruction error of the training loss. MSE is the
            error PSNR measures; L1 is the usual latent-diffusion choice.
        kl_weight: weight of the KL term.
        adv_weight: weight of the patch-GAN generator term; 0 switches the discriminator off entirely.
        adv_warmup_steps: ``trainer.global_step`` at which the adversarial terms start. Before it only the
            autoencoder steps (one global step per batch); after it both optimizers step (two per batch),
            which also counts towards ``trainer.max_steps``.
        freeze_encoder_at: ``trainer.global_step`` from which only the decoder trains, on the decoded
            posterior mean (what inference decodes): the encoder, hence the latents and the scale factor,
            stay those of that step. With ``adv_warmup_steps`` at the same step it is a patch-GAN fine-tune
            of the decoder that cannot change the latent space a diffusion model learns. None: never.
        disc_channels, disc_layers, disc_lr: MONAI ``PatchDiscriminator`` width, depth and learning rate.
        grad_clip_norm: gradient-norm clip for every optimizer (the trainer's ``gradient_clip_val`` is
            rejected by Lightning under manual optimization, so set it here).
        perceptual_weights: path of a torchvision ResNet-50 state_dict for MONAI ``PerceptualLoss``; None
            (default) = no perceptual term. A path that does not exist raises at construction.
        perceptual_weight: weight of the perceptual term.
        scale_factor_batches: training batches (per rank) used for the latent scale factor.
        log_images: images in the validation grid (input | reconstruction) sent to loggers with
            ``log_image`` (W&B); 0 = off.
    """

    def __init__(
        self,
        channels: Sequence[int] = (32, 64, 64),
        latent_channels: int = 4,
        num_res_blocks: int = 1,
        attention_levels: Sequence[bool] | None = None,
        nonlocal_attn: bool = False,
        norm_num_groups: int = 32,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        lr_warmup_steps: int = 0,
        lr_decay: str = "constant",
        recon_loss: str = "l1",
        kl_weight: float = 1e-6,
        adv_weight: float = 0.0,
        adv_warmup_steps: int = 0,
        disc_channels: int = 64,
        disc_layers: int = 3,
        disc_lr: float | None = None,
        grad_clip_norm: float | None = None,
        freeze_encoder_at: int | None = None,
        perceptual_weights: str | None = None,
        perceptual_weight: float = 1e-3,
        scale_factor_batches: int = 50,
        log_images: int = 4,
    ) -> None:
        super().__init__()
        check_lr_decay(lr_decay)
        if recon_loss not in RECON_LOSSES:
            raise ValueError(f"recon_loss: expected one of {sorted(RECON_LOSSES)}; got {recon_loss!r}")
        if freeze_encoder_at is not None and freeze_encoder_at < 0:
            raise ValueError(f"freeze_encoder_at: expected a step >= 0 or None; got {freeze_encoder_at}")
        self.save_hyperparameters()
        channels = tuple(channels)
        self.latent_channels = latent_channels
        self.downsample_factor = 2 ** (len(channels) - 1)
        self.autoencoder = AutoencoderKL(
            spatial_dims=2,
            in_channels=1,
            out_channels=1,
            channels=channels,
            latent_channels=latent_channels,
            num_res_blocks=num_res_blocks,
            attention_levels=tuple(attention_levels) if attention_levels else (False,) * len(channels),
            norm_num_groups=norm_num_groups,
            with_encoder_nonlocal_attn=nonlocal_attn,
            with_decoder_nonlocal_attn=nonlocal_attn,
        )
        float32_attention(self.autoencoder)  # 16-mixed: attention logits would overflow in float16
        self.discriminator: nn.Module | None = None
        if adv_weight > 0:
            self.discriminator = PatchDiscriminator(
                spatial_dims=2,
                num_layers_d=disc_layers,
                channels=disc_channels,
                in_channels=1,
                out_channels=1,
            )
            self.adv_loss = PatchAdversarialLoss(criterion="least_squares")
        self.automatic_optimization = self.discriminator is None
        # Kept out of the module tree: frozen pretrained weights need no checkpointing (ResNet-50 is ~100 MB).
        self._perceptual: list[nn.Module] = []
        if perceptual_weights is not None:
            self._perceptual.append(build_perceptual_loss(perceptual_weights))
        self.val_psnr = PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3))
        self.register_buffer("scale_factor", torch.tensor(1.0))
        self.register_buffer("scale_factor_computed", torch.tensor(False))

    # ---- inference API -------------------------------------------------------------------------------------
    def check_image(self, x: Tensor) -> None:
        """Raise a clear error unless ``x`` is ``(B, 1, H, W)`` with H, W divisible by the downsampling."""
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"VAEModule expects images of shape (B, 1, H, W); got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        f = self.downsample_factor
        if h % f or w % f:
            raise ValueError(
                f"image size {h}x{w} is not divisible by the VAE downsampling factor {f} "
                f"(2**(len(channels)-1)); crop or pad H and W to a multiple of {f} (e.g. data crop_size)"
            )

    def encode(self, x: Tensor) -> Tensor:
        """Images (B, 1, H, W) in [0, 1] -> scaled latents (B, C, H/f, W/f) = posterior mean * factor."""
        self.check_image(x)
        z_mu, _ = self.autoencoder.encode(x)
        return z_mu * self.scale_factor

    def decode(self, z: Tensor) -> Tensor:
        """Scaled latents -> images: the factor is divided out exactly once."""
        return self.autoencoder.decode(z / self.scale_factor)

    def forward(self, x: Tensor) -> Tensor:
        """Deterministic reconstruction ``decode(encode(x))`` through the posterior mean."""
        return self.decode(self.encode(x))

    load_overrides: ClassVar[dict[str, Any]] = {"perceptual_weights": None}
    """Loaded for inference: no perceptual network (its weights may not be on this machine)."""

    def check_loaded(self, path: Path) -> None:
        """Refuse a checkpoint whose latent scale factor was never computed (inference never computes it)."""
        if not bool(self.scale_factor_computed):
            raise DataError(
                path,
                "the latent scale_factor was never computed in this checkpoint (scale_factor_computed is "
                "False). It is computed once, at the end of VAE training, and is never recomputed at "
                "inference. Use the last.ckpt of a finished VAE run, or finish this one with "
                f"`calid fit ... --ckpt_path {path}`.",
            )

    @torch.no_grad()
    def compute_scale_factor(self, dataloader: Iterable[Any], max_batches: int | None = None) -> float:
        """Set ``scale_factor`` = 1 / std of posterior means over up to ``max_batches`` batches (per rank).

        Sums, sums of squares and counts are reduced over DDP ranks when a trainer is attached, so every
        rank ends with the same factor.
        """
        max_batches = self.hparams.scale_factor_batches if max_batches is None else max_batches
        was_training = self.training
        self.eval()
        totals = torch.zeros(3, dtype=torch.float64, device=self.device)
        for i, batch in enumerate(dataloader):
            if i >= max_batches:
                break
            x = _images(batch).to(self.device, self.dtype)
            self.check_image(x)
            z_mu = self.autoencoder.encode(x)[0].double()
            totals += torch.stack([z_mu.new_tensor(z_mu.numel()), z_mu.sum(), z_mu.square().sum()])
        if self._trainer is not None:
            totals = self.trainer.strategy.reduce(totals, reduce_op="sum")
        n, total, total_sq = totals.tolist()
        self.train(was_training)
        if n < 2:
            raise RuntimeError("compute_scale_factor: the dataloader gave no training latents")
        std = math.sqrt(max(total_sq - total * total / n, 0.0) / (n - 1))
        if not std > 0:
            raise RuntimeError("compute_scale_factor: the training latents have zero spread")
        self.scale_factor.fill_(1.0 / std)
        self.scale_factor_computed.fill_(True)
        return 1.0 / std

    # ---- training ------------------------------------------------------------------------------------------
    def configure_callbacks(self) -> list[Callback]:
        return [LatentScaleFactor()]

    def encoder_frozen(self) -> bool:
        """True from ``freeze_encoder_at`` on: the step trains the decoder alone."""
        at = self.hparams.freeze_encoder_at
        return at is not None and self.global_step >= at

    def _generator_loss(self, x: Tensor, adversarial: bool) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Autoencoder loss on a sampled reconstruction (the decoded posterior mean once the encoder is
        frozen, without the then constant KL term); returns (loss, reconstruction, parts to log)."""
        recon_loss = self.hparams.recon_loss
        frozen = self.encoder_frozen()
        if frozen:
            with torch.no_grad():
                z_mu = self.autoencoder.encode(x)[0]
            recon = self.autoencoder.decode(z_mu)
        else:
            recon, z_mu, z_sigma = self.autoencoder(x)
        parts = {recon_loss: RECON_LOSSES[recon_loss](recon.float(), x.float())}
        loss = parts[recon_loss]
        if not frozen:
            parts["kl"] = kl_divergence(z_mu.float(), z_sigma.float())
            loss = loss + self.hparams.kl_weight * parts["kl"]
        if self._perceptual:
            perceptual = self._perceptual[0].to(x.device)
            parts["perceptual"] = perceptual(recon.float(), x.float()).mean()
            loss = loss + self.hparams.perceptual_weight * parts["perceptual"]
        if adversarial:
            logits_fake = self.discriminator(recon.contiguous().float())[-1]
            parts["adv_g"] = self.adv_loss(logits_fake, target_is_real=True, for_discriminator=False)
            loss = loss + self.hparams.adv_weight * parts["adv_g"]
        parts["loss"] = loss
        return loss, recon, parts

    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        x = _images(batch)
        self.check_image(x)
        if self.automatic_optimization:
            loss, _, parts = self._generator_loss(x, adversarial=False)
            self._log_train(parts, x.shape[0])
            return loss
        adversarial = self.global_step >= self.hparams.adv_warmup_steps
        opt_g, opt_d = self.optimizers()
        self.toggle_optimizer(opt_g)
        loss, recon, parts = self._generator_loss(x, adversarial)
        self._step(opt_g, loss)
        self.lr_schedulers().step()
        self.untoggle_optimizer(opt_g)
        if adversarial:
            self.toggle_optimizer(opt_d)
            logits_fake = self.discriminator(recon.detach().contiguous().float())[-1]
            logits_real = self.discriminator(x.detach().contiguous().float())[-1]
            parts["adv_d"] = 0.5 * (
                self.adv_loss(logits_fake, target_is_real=False, for_discriminator=True)
                + self.adv_loss(logits_real, target_is_real=True, for_discriminator=True)
            )
            self._step(opt_d, parts["adv_d"])
            self.untoggle_optimizer(opt_d)
        self._log_train(parts, x.shape[0])
        return None

    def _step(self, optimizer: Any, loss: Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        optimizer.step()

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        """Manual optimisation: clip here, after the precision plugin unscaled the gradients (16-mixed)."""
        if not self.automatic_optimization and self.hparams.grad_clip_norm:
            clip_gradients(self, optimizer, self.hparams.grad_clip_norm, "norm")

    def _log_train(self, parts: dict[str, Tensor], batch_size: int) -> None:
        self.log_dict(
            {f"train/{k}": v.detach() for k, v in parts.items()},
            on_step=True,
            on_epoch=False,
            prog_bar=False,
            batch_size=batch_size,
        )

    def clipping_settings(
        self, clip_val: float | None, algorithm: str | None
    ) -> tuple[float | None, str | None]:
        """Automatic optimization: the trainer's clip value, else ``grad_clip_norm``."""
        return clip_val or self.hparams.grad_clip_norm, algorithm or "norm"

    def _generator_steps(self, max_steps: int) -> int:
        """Autoencoder optimizer steps in a run of ``max_steps`` global steps: with a discriminator every
        batch from ``adv_warmup_steps`` on counts two global steps (one per optimizer)."""
        if self.discriminator is None or max_steps <= 0:
            return max_steps
        warmup = min(self.hparams.adv_warmup_steps, max_steps)
        return warmup + math.ceil((max_steps - warmup) / 2)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        opt_g = adamw(self, self.autoencoder.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        decay_end = max_steps_of(self)
        if hp.freeze_encoder_at is not None and (decay_end < 0 or hp.freeze_encoder_at < decay_end):
            decay_end = hp.freeze_encoder_at
        schedule = {
            "scheduler": warmup_decay_scheduler(
                opt_g, hp.lr_warmup_steps, self._generator_steps(decay_end), hp.lr_decay
            ),
            "interval": "step",
        }
        if self.discriminator is None:
            return {"optimizer": opt_g, "lr_scheduler": schedule}
        opt_d = adamw(
            self, self.discriminator.parameters(), lr=hp.disc_lr or hp.lr, weight_decay=hp.weight_decay
        )
        return [opt_g, opt_d], [schedule]

    # ---- validation ----------------------------------------------------------------------------------------
    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = _images(batch)
        self.check_image(x)
        z_mu, z_sigma = self.autoencoder.encode(x)
        recon = self.autoencoder.decode(z_mu)
        l1 = (recon.float() - x.float()).abs().mean()
        loss = l1 + self.hparams.kl_weight * kl_divergence(z_mu.float(), z_sigma.float())
        self.val_psnr(recon.float().clamp(0, 1), x.float())
        n = x.shape[0]
        self.log("val/l1", l1, on_epoch=True, sync_dist=True, batch_size=n)
        self.log("val/loss", loss, on_epoch=True, sync_dist=True, batch_size=n)
        self.log("val/psnr", self.val_psnr, on_epoch=True, prog_bar=True, batch_size=n)
        if batch_idx == 0:
            self._log_image_grid(x, recon)
        return loss

    def _log_image_grid(self, x: Tensor, recon: Tensor) -> None:
        """One image of rows ``input | reconstruction`` for loggers that have ``log_image`` (W&B)."""
        n = min(self.hparams.log_images, x.shape[0])
        log_image = getattr(self.logger, "log_image", None)
        if n <= 0 or log_image is None:
            return
        rows = torch.cat([x[:n, 0], recon[:n, 0].clamp(0, 1)], dim=-1)
        grid = rows.reshape(-1, rows.shape[-1]).detach().float().cpu().numpy()
        log_image(
            key="val/reconstruction", images=[grid], caption=["input | reconstruction"], step=self.global_step
        )
