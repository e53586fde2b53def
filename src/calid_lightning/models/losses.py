"""Loss pieces of the VAE stage: the KL term and the optional, offline-only perceptual loss.

The perceptual loss wraps MONAI's ``PerceptualLoss`` with a torchvision ResNet-50 read from a local file:
every other MONAI backbone downloads weights at construction time, which cannot work offline.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import Tensor, nn

PERCEPTUAL_NETWORK = "resnet50"


def kl_divergence(z_mu: Tensor, z_sigma: Tensor) -> Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) summed over latent elements, averaged over the batch."""
    var = z_sigma.pow(2)
    kl = 0.5 * (z_mu.pow(2) + var - torch.log(var) - 1.0)
    return kl.flatten(1).sum(dim=1).mean()


def build_perceptual_loss(
    weights_path: str | Path, field: str = "model.init_args.perceptual_weights"
) -> nn.Module:
    """MONAI ``PerceptualLoss`` (2D, torchvision ResNet-50) with the weights of ``weights_path``; no download.

    Raises FileNotFoundError naming the file to place when it is missing, and ImportError when torchvision
    (which MONAI's ResNet-50 feature extractor needs) is not installed.
    """
    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"{field}: perceptual-loss weights not found at '{path}'. Place there a torchvision ResNet-50 "
            f"state_dict saved with torch.save (the keys of torchvision.models.resnet50(), e.g. the ImageNet "
            f"file resnet50-11ad3fa6.pth or RadImageNet ResNet-50 weights converted to those keys); "
            f"MONAI PerceptualLoss loads it with network_type='{PERCEPTUAL_NETWORK}', pretrained_path=<that "
            f"file>. Nothing is downloaded. Or set {field}: null to train without the perceptual term."
        )
    if importlib.util.find_spec("torchvision") is None:
        raise ImportError(
            f"{field}: the perceptual loss (MONAI PerceptualLoss, network_type='{PERCEPTUAL_NETWORK}') needs "
            f"torchvision, which is not installed. Install a torchvision build that matches your torch, or "
            f"set {field}: null."
        )
    from monai.losses import PerceptualLoss

    return PerceptualLoss(
        spatial_dims=2, network_type=PERCEPTUAL_NETWORK, pretrained=True, pretrained_path=str(path)
    )
