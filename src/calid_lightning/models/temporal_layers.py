"""Temporal layers that inflate a trained 2D (image) denoiser into a 2D+T (video) denoiser.

The spatial network sees every frame as its own item (frames folded into the batch, ``(B * T, C, H, W)``);
after each of its resolution blocks a :class:`TemporalMixer` lets the features of one position exchange
information over the frames of its cine: a cyclic 1D convolution over T (the cardiac cycle is periodic: frame
T - 1 neighbours frame 0) and/or self-attention over T with a cyclic phase encoding. Its output projection is
zero-initialised, so at initialisation the mixer is the identity and the inflated network is exactly the image
network applied frame by frame (the "inflation" of Align-your-Latents, AnimateDiff, Make-A-Video);
fine-tuning then only has to learn the temporal correction.

:func:`inflate_blocks` wraps the blocks of a MONAI ``DiffusionModelUNet`` or ``ControlNet`` in place
(:class:`TemporallyMixed`): MONAI's U-Net is not forked, its blocks keep their weights and names under
``.block``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

TEMPORAL_LAYERS = ("none", "conv", "attention", "conv+attention")
"""What a :class:`TemporalMixer` holds; ``none`` builds no mixers (the model is the image model frame by
frame)."""


def phase_encoding(frames: int, channels: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Cyclic position code ``(T, channels)``: sin/cos of ``k * 2 pi t / T`` for harmonics k = 1, 2, ...

    Periodic in T (frame T would equal frame 0) and defined for any frame count, so a model fine-tuned on 8
    frames over the cycle sees the same phases on 25.
    """
    t = torch.arange(frames, device=device, dtype=torch.float32)[:, None] * (2 * math.pi / frames)
    harmonics = torch.arange(1, channels // 2 + 1, device=device, dtype=torch.float32)[None]
    code = torch.cat([torch.sin(t * harmonics), torch.cos(t * harmonics)], dim=1)
    if code.shape[1] < channels:
        code = torch.cat([code, code.new_zeros(frames, channels - code.shape[1])], dim=1)
    return code.to(dtype)


class TemporalMixer(nn.Module):
    """Residual mixing over the frames of each cine: ``x + gate * proj(mix(norm(x)))``, identity at init.

    Works on folded features ``(B * T, C, *S)``; :attr:`frames` (T) is set by the owning network before
    every forward call. ``layers`` is ``conv`` (cyclic 1D convolution over T, then SiLU), ``attention``
    (multi-head self-attention over T with :func:`phase_encoding`) or ``conv+attention`` (both, in that
    order). ``proj`` is a zero-initialised 1x1 convolution and ``gate`` a learned scalar mixing weight
    (starts at 1, so ``proj`` gets gradients from the first step while the output is still exactly ``x``).
    """

    def __init__(
        self,
        channels: int,
        layers: str = "conv",
        kernel_size: int = 3,
        num_head_channels: int = 32,
        norm_num_groups: int = 32,
    ) -> None:
        super().__init__()
        if layers not in TEMPORAL_LAYERS or layers == "none":
            raise ValueError(f"TemporalMixer layers must be one of {TEMPORAL_LAYERS[1:]}, got {layers!r}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"TemporalMixer kernel_size must be odd and >= 1, got {kernel_size}")
        self.frames = 1
        self.norm = nn.GroupNorm(math.gcd(norm_num_groups, channels), channels)
        self.conv: nn.Conv1d | None = None
        self.attention: nn.MultiheadAttention | None = None
        if "conv" in layers:
            self.conv = nn.Conv1d(
                channels, channels, kernel_size, padding=kernel_size // 2, padding_mode="circular"
            )
        if "attention" in layers:
            heads = max(1, channels // num_head_channels)
            self.attention = nn.MultiheadAttention(channels, heads, batch_first=True)
        self.proj = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.gate = nn.Parameter(torch.ones(()))

    def forward(self, x: Tensor) -> Tensor:
        """Mix ``x`` ``(B * T, C, *S)`` over T at every position; the output has the shape of ``x``."""
        frames = self.frames
        if x.shape[0] % frames:
            raise ValueError(f"TemporalMixer: batch {x.shape[0]} is not a multiple of frames={frames}")
        batch, channels = x.shape[0] // frames, x.shape[1]
        # (B*T, C, *S) -> (B * prod(S), C, T): one sequence over time per position.
        seq = x.reshape(batch, frames, channels, -1).permute(0, 3, 2, 1).reshape(-1, channels, frames)
        h = self.norm(seq)
        if self.conv is not None:
            h = nn.functional.silu(self.conv(h))
        if self.attention is not None:
            tokens = h.transpose(1, 2) + phase_encoding(frames, channels, h.device, h.dtype)
            h = self.attention(tokens, tokens, tokens, need_weights=False)[0].transpose(1, 2)
        delta = self.proj(h) * self.gate
        delta = delta.reshape(batch, -1, channels, frames).permute(0, 3, 2, 1).reshape(x.shape)
        return x + delta


class TemporallyMixed(nn.Module):
    """A MONAI down / middle / up block followed by a :class:`TemporalMixer` on its output features.

    A down block returns ``(h, skip features)``; the last skip feature is ``h`` itself, so it is replaced by
    the mixed ``h`` too (the skip connection carries the temporal information as well). ``resnets`` is the
    wrapped block's (MONAI's U-Net reads it to split the skip features between up blocks).
    """

    def __init__(self, block: nn.Module, mixer: TemporalMixer) -> None:
        super().__init__()
        self.block = block
        self.mixer = mixer

    @property
    def resnets(self) -> nn.ModuleList:
        return self.block.resnets

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.block(*args, **kwargs)
        if not isinstance(out, tuple):
            return self.mixer(out)
        h, skips = out
        mixed = self.mixer(h)
        skips = list(skips)
        if skips and skips[-1] is h:
            skips[-1] = mixed
        return mixed, skips


def block_channels(block: nn.Module) -> int:
    """Output channels of a MONAI U-Net block: those of its last convolution (resnet, down- or upsampler)."""
    convs = [m for m in block.modules() if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d)]
    return int(convs[-1].out_channels)


TEMPORAL_BLOCKS = ("all", "decoder")
"""Where mixers go: after every block, or after the middle and up blocks only (``decoder``: with frozen
spatial weights, backpropagation then stops at the middle block, which skips the encoder and ControlNet)."""


def inflate_blocks(
    network: nn.Module, mixer_args: dict[str, Any], blocks: str = "all"
) -> list[TemporalMixer]:
    """Wrap the down blocks (``blocks="all"``), the middle block and the up blocks (where ``network`` has
    them) of a MONAI ``DiffusionModelUNet`` / ``ControlNet`` in :class:`TemporallyMixed`, in place; returns
    the new mixers."""
    if blocks not in TEMPORAL_BLOCKS:
        raise ValueError(f"temporal_blocks must be one of {TEMPORAL_BLOCKS}, got {blocks!r}")
    mixers: list[TemporalMixer] = []

    def wrap(block: nn.Module) -> TemporallyMixed:
        mixer = TemporalMixer(block_channels(block), **mixer_args)
        mixers.append(mixer)
        return TemporallyMixed(block, mixer)

    if blocks == "all" and hasattr(network, "down_blocks"):
        for i, block in enumerate(network.down_blocks):
            network.down_blocks[i] = wrap(block)
    network.middle_block = wrap(network.middle_block)
    if hasattr(network, "up_blocks"):
        for i, block in enumerate(network.up_blocks):
            network.up_blocks[i] = wrap(block)
    return mixers
