"""The conditional denoiser of CaLID: eps_theta plus the conditioning network (tau_theta1, tau_theta2).

- The condition is the latents of the nearest known slices below and above the target plus the target's
  relative position r in (0, 1) as one constant channel (``condition_input``); with ``gap_channel`` a second
  constant channel holds the physical distance between the two known slices (in units the model chooses),
  so a 5 mm gap of a level-2 bisection step and a 10 mm acquired gap are told apart.
- The condition is concatenated to the noisy latent at the U-Net input (always).
- tau_theta1 encodes the condition: MONAI ``ControlNet``'s conditioning embedding, kept at latent size
  (``conditioning_embedding_num_channels=(16,)``) and added to the ControlNet's first features.
- tau_theta2 injects it into every U-Net resolution: the ControlNet trunk (initialised from the U-Net's
  encoder with ``copy_model_state``) whose zero-initialised 1x1 convolutions give residuals for every
  U-Net skip connection and the middle block. At initialisation the injection is exactly zero.
- ``injection=False`` builds no ControlNet: the "input concatenation only" ablation.

Works for 2D latents (spatial model) and 3D (T, h, w) latents (``spatial_dims=3``, the 2D+T model).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import ControlNet, DiffusionModelUNet
from monai.networks.utils import copy_model_state
from torch import Tensor, nn

from calid_lightning.models.attention import float32_attention


def expand_r(r: Tensor, like: Tensor) -> Tensor:
    """Reshape per-item positions ``(N,)`` so they broadcast over the trailing dims of ``like``."""
    return r.to(device=like.device, dtype=like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def per_item(value: Tensor | float, like: Tensor) -> Tensor:
    """One value per item of ``like``'s batch, ``(N,)`` in its dtype and device: a scalar or a one-entry
    tensor is repeated, an ``(N,)`` tensor kept (positions r and gaps are given either way)."""
    return torch.as_tensor(value, dtype=like.dtype, device=like.device).reshape(-1).expand(like.shape[0])


def lerp(below: Tensor, above: Tensor, r: Tensor) -> Tensor:
    """Linear interpolation ``(1 - r) * below + r * above`` per item."""
    w = expand_r(r, below)
    return (1 - w) * below + w * above


def condition_input(below: Tensor, above: Tensor, r: Tensor, gap: Tensor | None = None) -> Tensor:
    """Stack the neighbour latents and a constant r channel: (B, C, *S) x2 + (B,) -> (B, 2C + 1, *S); a
    ``gap`` ``(B,)`` adds one more constant channel (B, 2C + 2, *S)."""
    if below.shape != above.shape:
        raise ValueError(
            f"below and above latents differ in shape: {tuple(below.shape)} vs {tuple(above.shape)}"
        )
    constants = [r] if gap is None else [r, gap]
    channels = [below, above]
    for name, value in zip(("r", "gap"), constants, strict=False):
        value = value.to(device=below.device, dtype=below.dtype).reshape(-1, *([1] * (below.ndim - 1)))
        if value.shape[0] != below.shape[0]:
            raise ValueError(f"{name} has {value.shape[0]} entries for a batch of {below.shape[0]}")
        channels.append(value.expand_as(below[:, :1]))
    return torch.cat(channels, dim=1)


class ConditionalDenoiser(nn.Module):
    """eps_theta (a ``DiffusionModelUNet``) with tau_theta1/tau_theta2 (a ``ControlNet``) around it.

    ``forward(noisy, t, below, above, r, gap)`` returns the prediction (noise or velocity) for the noisy
    latent; ``gap`` (one value per item) is required when built with ``gap_channel`` and refused otherwise.
    """

    def __init__(
        self,
        latent_channels: int,
        channels: Sequence[int] = (64, 128, 128),
        attention_levels: Sequence[bool] = (False, False, True),
        num_res_blocks: int | Sequence[int] = 2,
        num_head_channels: int | Sequence[int] = 32,
        norm_num_groups: int = 32,
        injection: bool = True,
        conditioning_channels: Sequence[int] = (16,),
        spatial_dims: int = 2,
        gap_channel: bool = False,
    ) -> None:
        super().__init__()
        self.latent_channels = latent_channels
        self.gap_channel = gap_channel
        self.condition_channels = 2 * latent_channels + 1 + int(gap_channel)
        in_channels = latent_channels + self.condition_channels
        net_args = {
            "spatial_dims": spatial_dims,
            "in_channels": in_channels,
            "channels": tuple(channels),
            "attention_levels": tuple(attention_levels),
            "num_res_blocks": num_res_blocks,
            "num_head_channels": num_head_channels,
            "norm_num_groups": norm_num_groups,
        }
        self.unet = DiffusionModelUNet(out_channels=latent_channels, **net_args)
        self.controlnet: ControlNet | None = None
        if injection:
            self.controlnet = ControlNet(
                conditioning_embedding_in_channels=self.condition_channels,
                conditioning_embedding_num_channels=tuple(conditioning_channels),
                **net_args,
            )
            copy_model_state(self.controlnet, self.unet)
        float32_attention(self)  # 16-mixed: attention logits would overflow in float16

    @property
    def injection(self) -> bool:
        """Whether tau_theta2 (ControlNet residual injection) is built."""
        return self.controlnet is not None

    def condition_encoder(self, condition: Tensor) -> Tensor:
        """tau_theta1: the conditioning embedding at latent size, (B, 2C + 1, *S) -> (B, channels[0], *S)."""
        if self.controlnet is None:
            raise RuntimeError("injection=False: there is no conditioning encoder (input concatenation only)")
        return self.controlnet.controlnet_cond_embedding(condition)

    def residuals(self, unet_input: Tensor, t: Tensor, condition: Tensor) -> tuple[list[Tensor], Tensor]:
        """tau_theta2: the residuals for every U-Net skip connection and for the middle block."""
        if self.controlnet is None:
            raise RuntimeError("injection=False: there are no injection residuals (input concatenation only)")
        return self.controlnet(x=unet_input, timesteps=t, controlnet_cond=condition)

    def forward(
        self, noisy: Tensor, t: Tensor, below: Tensor, above: Tensor, r: Tensor, gap: Tensor | None = None
    ) -> Tensor:
        """Predict the diffusion target for ``noisy`` at timesteps ``t`` given the neighbours, r (and gap)."""
        if self.gap_channel != (gap is not None):
            raise ValueError(
                "this denoiser was built with a gap channel: pass gap (one value per item)"
                if self.gap_channel
                else "this denoiser has no gap channel (gap_conditioning=False): do not pass gap"
            )
        condition = condition_input(below, above, r, gap)
        unet_input = torch.cat([noisy, condition], dim=1)
        if self.controlnet is None:
            return self.unet(x=unet_input, timesteps=t)
        down, mid = self.residuals(unet_input, t, condition)
        return self.unet(
            x=unet_input, timesteps=t, down_block_additional_residuals=down, mid_block_additional_residual=mid
        )
