"""Tiny checkpoints for tests: a plain-dict saver, a small VAE with a computed latent scale factor and a quiet
CPU Trainer for tiny fits.

Import as ``from checkpoints import save_checkpoint, tiny_vae_checkpoint`` (tests/ is on the path, like
``layouts``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning
import torch
from lightning.pytorch import Trainer

from calid_lightning.models.vae import VAEModule

TINY_UNET = {
    "channels": (16, 32),
    "attention_levels": (False, True),
    "num_res_blocks": 1,
    "norm_num_groups": 8,
    "num_head_channels": 8,
}
"""Denoiser arguments of the tiny interpolators the tests build (2 levels, attention at the second)."""


def quiet_trainer(root: Path, max_steps: int, **overrides: Any) -> Trainer:
    """A CPU Trainer for tiny fits: no logger, checkpoints, progress bar or model summary; one validation
    batch and no sanity check unless ``overrides`` say otherwise."""
    args = {
        "max_steps": max_steps,
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "limit_val_batches": 1,
        "num_sanity_val_steps": 0,
        "default_root_dir": root,
    }
    return Trainer(**{**args, **overrides})


def save_checkpoint(module: lightning.LightningModule, path: Path) -> Path:
    """``module`` as a checkpoint dict saved without Lightning hooks (no model class name recorded)."""
    state = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    torch.save({**state, "pytorch-lightning_version": lightning.__version__}, path)
    return path


def tiny_vae_checkpoint(path: Path, images: torch.Tensor | None = None) -> Path:
    """A seeded VAE (factor 4, 4 latent channels) whose scale factor is computed from ``images``.

    Without ``images`` the factor comes from ``torch.rand(8, 1, 16, 16)`` drawn after the VAE is built.
    """
    torch.manual_seed(0)
    vae = VAEModule(channels=(8, 8, 8), latent_channels=4, norm_num_groups=4)
    vae.compute_scale_factor([torch.rand(8, 1, 16, 16) if images is None else images])
    return save_checkpoint(vae, path)
