"""Learning-rate schedules of the trained models: a linear warm-up, then a constant rate or a cosine decay.

One definition for the VAE and the diffusion models, so ``lr_warmup_steps`` and ``lr_decay`` mean the same in
every experiment config. The cosine decay ends at ``final_fraction`` of the peak rate at the run's
``trainer.max_steps`` (short CPU budgets gain most from ending on a small step size).
"""

from __future__ import annotations

import math

import torch
from lightning.pytorch import LightningModule

LR_DECAYS = ("constant", "cosine")


def check_lr_decay(decay: str) -> None:
    """Refuse an unknown ``lr_decay`` when the model is built, before any training."""
    if decay not in LR_DECAYS:
        raise ValueError(f"lr_decay must be one of {LR_DECAYS}, got {decay!r}")


def lr_factor(
    step: int, warmup_steps: int, total_steps: int, decay: str, final_fraction: float = 0.1
) -> float:
    """The multiplier of the peak learning rate at optimizer step ``step`` (0-based).

    Warm-up: ``(step + 1) / warmup_steps`` until it reaches 1. ``cosine``: from the end of the warm-up to
    ``total_steps`` the factor falls along half a cosine from 1 to ``final_fraction`` and stays there.
    """
    check_lr_decay(decay)
    warmup = max(1, warmup_steps)
    warm = min(1.0, (step + 1) / warmup)
    if decay == "constant" or warm < 1.0:
        return warm
    progress = min(1.0, max(0, step + 1 - warmup) / max(1, total_steps - warmup))
    return final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_decay_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, decay: str
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step ``LambdaLR`` following :func:`lr_factor`.

    ``total_steps`` is the run's ``trainer.max_steps``; a cosine decay needs it set (> 0).
    """
    if decay == "cosine" and total_steps <= 0:
        raise ValueError(
            "lr_decay=cosine needs trainer.max_steps > 0, the step where the decay ends (--trainer.max_steps)"
        )
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup_steps, total_steps, decay)
    )


def stepwise_schedule(
    module: LightningModule, optimizer: torch.optim.Optimizer, warmup_steps: int, decay: str
) -> dict:
    """``configure_optimizers``' return value: ``optimizer`` with :func:`warmup_decay_scheduler` stepped every
    optimizer step, the decay ending at the module's ``trainer.max_steps``."""
    scheduler = warmup_decay_scheduler(optimizer, warmup_steps, max_steps_of(module), decay)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def max_steps_of(module: LightningModule) -> int:
    """The attached trainer's ``max_steps`` (-1 when unset or when no trainer is attached)."""
    trainer = module._trainer
    return -1 if trainer is None else int(trainer.max_steps)
