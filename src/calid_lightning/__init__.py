"""calid-lightning: CaLID cardiac latent interpolation diffusion on PyTorch Lightning."""

__version__ = "0.1.0"
