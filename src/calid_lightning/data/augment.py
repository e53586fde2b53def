"""Training augmentation with TorchIO, applied to the slab one example needs.

One example reads slices ``z0 .. z0 + k`` (below, target, above); augmenting that slab as one TorchIO image
(channels = frames, depth = slices) gives all three the same transform. Intensities are clamped to [0, 1]
only after every transform, since MRI artefacts push them out of range.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torchio as tio


def build_augmentation(
    flip: bool = False,
    rotation_deg: float = 10.0,
    scale: float = 0.05,
    translation_px: float = 3.0,
    noise_std: float = 0.03,
    artefact_p: float = 0.1,
    blur_std_px: float = 0.0,
    blur_p: float = 0.3,
) -> tio.Compose:
    """The default training augmentation: intensity changes, a small in-plane affine, rare MRI artefacts.

    All spatial changes are in-plane (axes 0, 1), so slices of a slab stay registered to each other.
    ``blur_std_px`` > 0 adds an in-plane Gaussian blur of standard deviation up to that many pixels (with
    probability ``blur_p``), as nnU-Net's default augmentation does: a segmenter trained on sharp, noisy truth
    then also sees smoother slices such as linear blends and VAE-decoded ones. Off by default: on the quick
    profile it moved no row's Dice beyond the segmenter's own variation (docs/ablations.md section 16).
    ``copy=False`` everywhere: :func:`augment_slab` hands over a fresh image, so TorchIO's defensive deep
    copies (one per transform) would only cost time.
    """
    transforms: list[tio.Transform] = [
        tio.RandomGamma(log_gamma=(-0.2, 0.2), p=0.5, copy=False),
        tio.RandomAffine(
            scales=(1 - scale, 1 + scale, 1 - scale, 1 + scale, 1, 1),
            degrees=(0, 0, 0, 0, -rotation_deg, rotation_deg),
            translation=(-translation_px, translation_px, -translation_px, translation_px, 0, 0),
            default_pad_value=0.0,
            p=0.5,
            copy=False,
        ),
    ]
    if flip:
        transforms.append(tio.RandomFlip(axes=(0, 1), flip_probability=0.5, copy=False))
    transforms.append(tio.RandomBiasField(coefficients=0.3, order=3, p=0.3, copy=False))
    if blur_std_px > 0:
        transforms.append(tio.RandomBlur(std=(0, blur_std_px, 0, blur_std_px, 0, 0), p=blur_p, copy=False))
    transforms += [
        tio.RandomNoise(std=(0, noise_std), p=0.5, copy=False),
        tio.RandomMotion(degrees=3, translation=3, num_transforms=1, p=artefact_p, copy=False),
        tio.RandomGhosting(num_ghosts=(2, 6), axes=(0, 1), intensity=(0.2, 0.5), p=artefact_p, copy=False),
    ]
    return tio.Compose(transforms, copy=False)


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one intra-op thread: a slab is small, and with 2+ threads TorchIO's per-transform
    tensor copies took ~10x longer in the main process of a busy 2-core machine (97 vs 9 ms per slab)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def augment_slab(slab: torch.Tensor, transform: tio.Transform, seed: int) -> torch.Tensor:
    """Apply ``transform`` to a ``(C, H, W, D)`` slab as one image and clamp to [0, 1].

    ``seed`` fixes TorchIO's random draws (it uses the global torch RNG), so one example is reproducible;
    the global RNG state is restored afterwards.
    """
    with torch.random.fork_rng(devices=[]), single_thread():
        torch.manual_seed(seed)
        out = transform(tio.ScalarImage(tensor=slab.to(torch.float32, copy=True)))
    return out.data.clamp_(0.0, 1.0)
