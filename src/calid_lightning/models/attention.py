"""Self-attention in float32 under mixed precision (``16-mixed``: float16 q.k logits overflow to inf/NaN).

MONAI's ``upcast_attention`` reaches only its cross-attention blocks; the U-Net, ControlNet and AutoencoderKL
self-attention blocks are patched here instead, with the same parameters and state_dict keys.
"""

from __future__ import annotations

import torch
from monai.networks.blocks.spatialattention import SpatialAttentionBlock
from torch import Tensor, nn


class Float32SpatialAttention(SpatialAttentionBlock):
    """MONAI's ``SpatialAttentionBlock`` computed in float32 with autocast off; returns the input's dtype."""

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return super().forward(x.float()).to(x.dtype)


def float32_attention(module: nn.Module) -> int:
    """Make every ``SpatialAttentionBlock`` inside ``module`` run in float32; returns how many there are.

    Changes the blocks' class in place (same parameters and state_dict keys), so copies made afterwards
    (an EMA shadow) and checkpoints reloaded into a module built the same way keep the behaviour.
    """
    blocks = [m for m in module.modules() if type(m) is SpatialAttentionBlock]
    for block in blocks:
        block.__class__ = Float32SpatialAttention
    return len(blocks)
