"""The optimizer of every trained model: AdamW, on PyTorch's fused kernel where it can be used.

The default AdamW on CPU loops over the tensors in Python: for CaLID's 6.3 M parameters in 282 tensors that
is 40 ms a step on one thread against 12 ms fused, about 6 % of a training step in fp32 and 10 % in bf16-mixed
(docs/ablations.md, sections 15b and 5b). The update is AdamW's either way.

Lightning refuses to clip the gradients of a fused optimizer under any mixed precision: with 16-mixed's
gradient scaler the fused step unscales the gradients itself, after clipping would have seen them scaled.
bf16-mixed has no scaler, so its gradients are the true ones when clipping runs; :class:`FusedClipping` clips
them there, and the fused kernel is kept for every precision without a scaler. A run with a scaler keeps the
unfused AdamW (``foreach`` on CUDA, PyTorch's default there), which Lightning unscales before clipping.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from lightning.fabric.plugins.precision.amp import _optimizer_handles_unscaling
from lightning.pytorch import LightningModule
from lightning.pytorch.plugins.precision import MixedPrecision

FUSED_DEVICES = ("cpu", "cuda")
"""Device types with a fused AdamW kernel that we run on."""


def _tensors(params: Iterable[Any]) -> list[torch.Tensor]:
    """The parameters of a list of tensors or of parameter groups (dicts with ``params``)."""
    tensors: list[torch.Tensor] = []
    for item in params:
        if isinstance(item, dict):
            tensors.extend(item["params"])
        else:
            tensors.append(item)
    return tensors


def grad_scaled(module: LightningModule) -> bool:
    """True when the trainer ``module`` is attached to scales the loss (16-mixed's gradient scaler)."""
    trainer = module._trainer
    return trainer is not None and getattr(trainer.precision_plugin, "scaler", None) is not None


def adamw(
    module: LightningModule, params: Iterable[Any], lr: float = 1e-3, weight_decay: float = 0.0
) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` over ``params`` (tensors or groups) of ``module``: fused when every parameter
    is a floating tensor on a CPU or CUDA device and the module's trainer does not scale the loss."""
    params = list(params)
    tensors = _tensors(params)
    fused = (
        bool(tensors)
        and not grad_scaled(module)
        and all(p.is_floating_point() and p.device.type in FUSED_DEVICES for p in tensors)
    )
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


def clip_gradients(
    module: LightningModule, optimizer: Any, clip_val: float | None, algorithm: str | None = None
) -> None:
    """Clip ``optimizer``'s gradients as ``module.clip_gradients`` does, also for a fused optimizer under
    mixed precision without a scaler (bf16-mixed), which Lightning refuses though there is nothing to unscale:
    there the gradients are clipped directly, by norm or by value, as Lightning's base precision would."""
    unscaled_mixed = isinstance(module.trainer.precision_plugin, MixedPrecision) and not grad_scaled(module)
    if not (clip_val and unscaled_mixed and _optimizer_handles_unscaling(optimizer)):
        module.clip_gradients(optimizer, gradient_clip_val=clip_val, gradient_clip_algorithm=algorithm)
        return
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if (algorithm or "norm") == "value":
        torch.nn.utils.clip_grad_value_(params, clip_val)
    else:
        torch.nn.utils.clip_grad_norm_(params, clip_val)


class FusedClipping:
    """LightningModule mixin: the trainer's ``gradient_clip_val`` applied through :func:`clip_gradients`, so
    the fused AdamW trains under bf16-mixed with clipping. List it before ``LightningModule``."""

    def configure_gradient_clipping(
        self,
        optimizer: Any,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Lightning's hook: clip with the settings :meth:`clipping_settings` gives."""
        clip_val, algorithm = self.clipping_settings(gradient_clip_val, gradient_clip_algorithm)
        clip_gradients(self, optimizer, clip_val, algorithm)  # type: ignore[arg-type]

    def clipping_settings(
        self, clip_val: float | None, algorithm: str | None
    ) -> tuple[float | None, str | None]:
        """(clip value, algorithm) the hook clips with: the trainer's; a model with a default overrides it."""
        return clip_val, algorithm
