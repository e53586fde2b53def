"""The interpolators' CLI arguments: PixelSpatial and CaLIDInflated forward the training arguments of
LatentInterpolatorBase (``**kwargs``), so ``calid fit`` lists them with the base's defaults (one place to
change one) and hides what the class fixes itself (the VAE; the spatial checkpoint's network)."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from jsonargparse import ArgumentParser

from calid_lightning.models.calid_inflated import ARCHITECTURE_KEYS, CaLIDInflated
from calid_lightning.models.latent_interpolator import LatentInterpolatorBase
from calid_lightning.models.pixel_diffusion import PixelSpatial


def plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def cli_defaults(cls: type) -> dict[str, Any]:
    """The arguments jsonargparse (hence ``calid fit --model.help CLS``) builds for ``cls``, with defaults."""
    parser = ArgumentParser()
    parser.add_class_arguments(cls, "model")
    return {k: plain(v) for k, v in parser.get_defaults().as_dict()["model"].items()}


BASE = {
    name: plain(p.default)
    for name, p in inspect.signature(LatentInterpolatorBase.__init__).parameters.items()
    if name != "self"
}


def test_pixel_arguments_are_the_base_ones_without_the_vae() -> None:
    hidden = {"vae_checkpoint", "vae_hparams", "latent_cache", "residual"}
    assert cli_defaults(PixelSpatial) == {k: v for k, v in BASE.items() if k not in hidden}
    with pytest.raises(ValueError, match="PixelSpatial has no residual"):
        PixelSpatial(residual=True)


def test_inflated_arguments_are_its_own_and_the_base_training_ones() -> None:
    arguments = cli_defaults(CaLIDInflated)
    from_spatial = {"vae_checkpoint", "residual", *ARCHITECTURE_KEYS}
    assert not from_spatial & set(arguments)  # the spatial checkpoint decides the network and diffusion
    training = {k: v for k, v in BASE.items() if k not in from_spatial}
    assert {k: arguments[k] for k in training} == training | {"val_num_samples": 4}
    own = {
        "spatial_checkpoint",
        "temporal_layers",
        "temporal_kernel",
        "temporal_controlnet",
        "temporal_blocks",
    }
    assert set(arguments) - set(training) == own | {"spatial_lr", "frame_noise", "spatial_hparams"}
