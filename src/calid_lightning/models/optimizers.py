"""The optimizer of every trained model: AdamW, on PyTorch's fused kernel where it can be used.

The default AdamW on CPU loops over the tensors in Python: for CaLID's 6.3 M parameters in 282 tensors that
is 40 ms a step on one thread against 12 ms fused, about 6 % of a training step (docs/ablations.md,
section 15b). The update is AdamW's either way. Lightning refuses to clip the gradients
of a fused optimizer under mixed precision (it would unscale them itself), so mixed-precision runs keep the
unfused one (``foreach`` on CUDA, where that is PyTorch's default and fast).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
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


def mixed_precision(module: LightningModule) -> bool:
    """True when the trainer ``module`` is attached to trains in mixed precision (bf16- or 16-mixed)."""
    trainer = module._trainer
    return trainer is not None and isinstance(trainer.precision_plugin, MixedPrecision)


def adamw(
    module: LightningModule, params: Iterable[Any], lr: float = 1e-3, weight_decay: float = 0.0
) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` over ``params`` (tensors or groups) of ``module``: fused when every parameter
    is a floating tensor on a CPU or CUDA device and the module does not train in mixed precision."""
    params = list(params)
    tensors = _tensors(params)
    fused = (
        bool(tensors)
        and not mixed_precision(module)
        and all(p.is_floating_point() and p.device.type in FUSED_DEVICES for p in tensors)
    )
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)
