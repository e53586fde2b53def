"""Stop a diverging run clearly: :class:`FiniteLossGuard` raises :class:`NonFiniteLossError` when the loss or
a logged training metric turns NaN/Inf, before the bad loss reaches the weights, with a message naming the
step, the metric, the last checkpoint saved and what to try (:func:`non_finite_message`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss or logged training metric."""


class FiniteLossGuard(Callback):
    """Stops training with :class:`NonFiniteLossError` when the loss or a logged training metric is NaN/Inf.

    The loss is checked before each backward pass (``on_before_backward``, also for manual optimization), so
    a non-finite loss never reaches the gradients, the optimizer or the EMA; logged metrics whose name starts
    with one of ``metric_prefixes`` are checked after each training batch. Under DDP the decision is reduced
    over ranks, so every rank stops together instead of one waiting forever in the gradient all-reduce.

    Args:
        metric_prefixes: logged metrics checked after each batch (default: names starting with ``train``).
    """

    def __init__(self, metric_prefixes: Sequence[str] = ("train",)) -> None:
        self.metric_prefixes = tuple(metric_prefixes)

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: Tensor) -> None:
        value = float(loss.detach().float().reshape(-1)[0]) if loss.numel() == 1 else _first_bad(loss)
        self._stop_if_bad(trainer, "loss (before backward)", value, applied=False)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        name, value = "", 0.0
        for key, metric in self._candidates(trainer, outputs):
            if not math.isfinite(metric):
                name, value = key, metric
                break
        self._stop_if_bad(trainer, name, value, applied=True)

    def _candidates(self, trainer: Trainer, outputs: Any) -> Iterable[tuple[str, float]]:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, Tensor) and loss.numel() == 1:
            yield "loss (training_step output)", float(loss.detach())
        for key, metric in trainer.callback_metrics.items():
            if key.startswith(self.metric_prefixes) and isinstance(metric, Tensor) and metric.numel() == 1:
                yield key, float(metric)

    def _stop_if_bad(self, trainer: Trainer, name: str, value: float, applied: bool) -> None:
        bad = bool(name) and not math.isfinite(value)
        if not trainer.strategy.reduce_boolean_decision(bad, all=False):
            return
        raise NonFiniteLossError(non_finite_message(trainer, name, value, applied))


def _first_bad(loss: Tensor) -> float:
    """A non-finite element of a multi-element loss, else its first element."""
    values = loss.detach().float().reshape(-1)
    bad = values[~torch.isfinite(values)]
    return float(bad[0] if bad.numel() else values[0])


def last_saved_checkpoint(trainer: Trainer) -> str | None:
    """The newest checkpoint file the trainer's ``ModelCheckpoint`` callbacks wrote (None when none)."""
    paths = []
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint):
            paths += [callback.last_model_path, callback._last_checkpoint_saved, callback.best_model_path]
    existing = [Path(p) for p in paths if p and Path(p).is_file()]
    return str(max(existing, key=lambda p: p.stat().st_mtime)) if existing else None


def non_finite_message(trainer: Trainer, name: str, value: float, applied: bool) -> str:
    """The error a diverging run stops with: where, what, the checkpoint to go back to and what to try.

    ``name`` is the bad loss or metric (empty when another DDP rank saw it); ``applied`` says whether this
    batch's optimizer step already ran.
    """
    what = f"{name} = {value}" if name else "on another DDP rank (see that rank's log)"
    precision = str(trainer.precision)
    precision = (
        ""
        if precision.startswith(("32", "64"))
        else f"full precision (--trainer.precision=32-true, not {precision}), "
    )
    checkpoint = last_saved_checkpoint(trainer)
    resume = (
        f"resume from the last checkpoint saved, {checkpoint}, with `calid fit ... --ckpt_path {checkpoint}`"
        if checkpoint
        else "no checkpoint was saved in this run yet; restart it"
    )
    state = (
        "The optimizer step of this batch already ran, so the current weights may be non-finite"
        if applied
        else "The run stopped before back-propagating this loss: the weights are still those of the last step"
    )
    return (
        f"non-finite training value at global step {trainer.global_step} (epoch {trainer.current_epoch}): "
        f"{what}. {state}. To continue, {resume}, and try one of: a lower learning rate "
        f"(--model.init_args.lr), gradient clipping (--trainer.gradient_clip_val=1.0, or "
        f"--model.init_args.grad_clip_norm=1.0 for the VAE with a discriminator), {precision}or look for "
        "bad input data."
    )
