"""The downstream segmenter: a 2D MONAI ``UNet`` that labels short-axis slices for the results table.

It is trained on real (ground-truth) slices with the DataModule's ``"segment"`` task and then run on
reconstructed slices; its Dice / HD95 on ground-truth slices is the ceiling every method is compared with.
Classes follow the internal convention: 0 background, 1 LV cavity, 2 myocardium, 3 RV cavity.

Validation logs ``val/loss``, ``val/dice_lv``, ``val/dice_myo``, ``val/dice_rv`` and ``val/dice_mean``:
per-slice Dice averaged over the slices whose truth holds the class (the convention of
:mod:`calid_lightning.evaluation.segmentation`), reduced over DDP ranks by torchmetrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import LightningModule
from monai.losses import DiceCELoss
from monai.networks.nets import UNet
from torch import Tensor
from torchmetrics import MeanMetric

from calid_lightning.data.subject import CLASS_KEYS, NUM_CLASSES
from calid_lightning.metrics.dice import dice_per_class
from calid_lightning.models.checkpoints import NamedCheckpoint
from calid_lightning.models.optimizers import FusedClipping, adamw
from calid_lightning.models.schedules import check_lr_decay, stepwise_schedule


def _batch(batch: Any) -> tuple[Tensor, Tensor]:
    """``(image (B, 1, H, W), label (B, H, W) long)`` of a ``"segment"`` batch; a clear error otherwise."""
    if isinstance(batch, dict) and "image" in batch and "label" in batch:
        return batch["image"], batch["label"].long()
    keys = list(batch) if isinstance(batch, dict) else type(batch).__name__
    raise KeyError(
        "SegmenterModule expects batches {'image': (B, 1, H, W), 'label': (B, H, W)} "
        f"(set data.init_args.task: segment); got {keys}"
    )


class SegmenterModule(NamedCheckpoint, FusedClipping, LightningModule):
    """A 2D U-Net over single slices, trained with Dice + cross-entropy (MONAI ``DiceCELoss``) and AdamW.

    Args:
        channels: U-Net feature channels per level.
        strides: down-sampling strides between levels (input sizes must divide by their product).
        num_res_units: residual units per U-Net block.
        dropout: dropout inside the U-Net blocks.
        norm: MONAI normalisation layer name ("instance", "batch", ...).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        lr_warmup_steps, lr_decay: linear warm-up, then a constant rate or a cosine decay to 0.1 x ``lr`` at
            ``trainer.max_steps`` (:mod:`~calid_lightning.models.schedules`, as the VAE and the denoisers).
            Default constant: the cosine decay ended the quick segmenter lower on val (docs/ablations.md,
            section 16).
        lambda_dice: weight of the Dice term of the loss.
        lambda_ce: weight of the cross-entropy term of the loss.
    """

    def __init__(
        self,
        channels: Sequence[int] = (16, 32, 64, 128),
        strides: Sequence[int] = (2, 2, 2),
        num_res_units: int = 2,
        dropout: float = 0.0,
        norm: str = "instance",
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        lr_warmup_steps: int = 0,
        lr_decay: str = "constant",
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
    ) -> None:
        super().__init__()
        check_lr_decay(lr_decay)
        if len(strides) != len(channels) - 1:
            raise ValueError(
                f"model.strides needs len(model.channels) - 1 = {len(channels) - 1} entries, "
                f"got {list(strides)}"
            )
        self.save_hyperparameters()
        self.net = UNet(
            spatial_dims=2,
            in_channels=1,
            out_channels=NUM_CLASSES,
            channels=tuple(channels),
            strides=tuple(strides),
            num_res_units=num_res_units,
            dropout=dropout,
            norm=norm,
        )
        self.loss = DiceCELoss(
            to_onehot_y=True,
            softmax=True,
            lambda_dice=lambda_dice,
            lambda_ce=lambda_ce,
            include_background=True,
        )
        self.val_dice = torch.nn.ModuleDict(
            {key: MeanMetric(nan_strategy="ignore") for key in CLASS_KEYS.values()}
        )

    def forward(self, images: Tensor) -> Tensor:
        """Class logits ``(B, 4, H, W)`` of images ``(B, 1, H, W)``."""
        return self.net(images)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        images, labels = _batch(batch)
        loss = self.loss(self(images), labels[:, None])
        self.log("train/loss", loss, prog_bar=True, batch_size=images.shape[0])
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        images, labels = _batch(batch)
        logits = self(images)
        loss = self.loss(logits, labels[:, None])
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=images.shape[0])
        dice = slice_dice(logits.argmax(1), labels)
        for index, key in enumerate(CLASS_KEYS.values()):
            self.val_dice[key].update(dice[:, index])
        return loss

    def on_validation_epoch_end(self) -> None:
        values = {key: metric.compute() for key, metric in self.val_dice.items()}
        for key, value in values.items():
            self.log(f"val/dice_{key}", value)
        self.log("val/dice_mean", torch.stack(list(values.values())).nanmean(), prog_bar=True)
        for metric in self.val_dice.values():
            metric.reset()

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """Labels ``(B, H, W)`` of a batch (``{"image": ...}`` or a bare image tensor)."""
        images = batch["image"] if isinstance(batch, dict) else batch
        return self(images).argmax(1)

    @torch.no_grad()
    def predict(self, images: Tensor, batch_size: int = 64) -> Tensor:
        """Label maps ``(N, H, W)`` (int64, on the images' device) of slices ``(N, 1, H, W)`` in [0, 1].

        Runs in eval mode on the module's device in chunks of ``batch_size`` and restores the training mode.
        """
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"predict expects images (N, 1, H, W), got shape {tuple(images.shape)}")
        was_training = self.training
        self.eval()
        try:
            outputs = [
                self(chunk.to(self.device, torch.float32)).argmax(1).to(images.device)
                for chunk in images.split(batch_size)
            ]
        finally:
            self.train(was_training)
        return torch.cat(outputs) if outputs else images.new_zeros((0, *images.shape[2:]), dtype=torch.long)

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW over the U-Net: linear warm-up, then ``lr_decay``."""
        hp = self.hparams
        optimizer = adamw(self, self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        return stepwise_schedule(self, optimizer, hp.lr_warmup_steps, hp.lr_decay)


def slice_dice(pred: Tensor, truth: Tensor) -> Tensor:
    """Per-slice Dice ``(B, 3)`` of LV cavity, myocardium and RV cavity; NaN where the truth lacks the class.

    ``pred`` and ``truth`` are label maps ``(B, H, W)``; :func:`~calid_lightning.metrics.dice.dice_per_class`
    without the background column.
    """
    return dice_per_class(pred, truth, NUM_CLASSES, ignore_empty_truth=True)[:, 1:]
