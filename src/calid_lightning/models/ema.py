"""Exponential moving average of the trained parts of a model (not the frozen VAE).

Lightning's ``EMAWeightAveraging`` averages the whole LightningModule (frozen VAE included) and swaps the
average into the model at the end of fit. Here the average is a frozen shadow copy of one sub-module beside
the raw weights: it travels in the checkpoint's state_dict, sampling uses it, and training continues on the
raw weights after a resume.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    """A shadow copy of ``model`` whose parameters track an exponential moving average of ``model``'s.

    With ``warmup`` the decay ramps as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so early
    averages are not dominated by the random initialisation. Buffers are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.module = copy.deepcopy(model).requires_grad_(False).eval()
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def current_decay(self) -> float:
        """The decay the next update will use."""
        n = int(self.num_updates)
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the shadow parameters towards ``model``'s (which must have the same structure)."""
        weight = 1.0 - self.current_decay()
        for shadow, param in zip(self.module.parameters(), model.parameters(), strict=True):
            shadow.lerp_(param.detach().to(shadow.dtype), weight)
        for shadow, buffer in zip(self.module.buffers(), model.buffers(), strict=True):
            shadow.copy_(buffer)
        self.num_updates += 1

    def train(self, mode: bool = True) -> EMA:
        """Keep the shadow copy in eval mode whatever the parent does."""
        super().train(False)
        return self

    def forward(self, *args: object, **kwargs: object) -> object:
        """Run the averaged module."""
        return self.module(*args, **kwargs)
