"""Loading any trained model of the framework from its checkpoint: one loader, weights only, class checked.

Every model (VAE, segmenter, CaLID spatial, inflated 2D+T, pixel diffusion) names its class in its
checkpoints (:class:`NamedCheckpoint`, entry :data:`MODEL_CLASS_KEY`), so tools load a file without being
told what it holds and refuse one that holds another kind with a one-line :class:`DataError` naming the
file. The file is read with ``torch.load(weights_only=True)`` (:func:`~calid_lightning.checkpoint_file.
read_checkpoint`): a checkpoint of unknown origin cannot run code. Checkpoints written before the class was
recorded are recognised by their state_dict (:func:`checkpoint_class`).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from lightning.pytorch import LightningModule

from calid_lightning.checkpoint_file import read_checkpoint
from calid_lightning.errors import DataError

MODEL_CLASS_KEY = "calid_model_class"
"""Checkpoint entry naming the model class (``module.Class``), written by :class:`NamedCheckpoint`."""
RETIRED_2DT = "calid_lightning.models.calid_2dt.CaLID2DT"
"""The class name in checkpoints of the retired from-scratch 2D+T model (refused with a message)."""
VAE_CLASS = "calid_lightning.models.vae.VAEModule"
SEGMENTER_CLASS = "calid_lightning.models.segmenter.SegmenterModule"
SPATIAL_CLASS = "calid_lightning.models.calid_spatial.CaLIDSpatial"
INFLATED_CLASS = "calid_lightning.models.calid_inflated.CaLIDInflated"
PIXEL_CLASS = "calid_lightning.models.pixel_diffusion.PixelSpatial"

Model = TypeVar("Model", bound=LightningModule)


class NamedCheckpoint:
    """Mixin for a ``LightningModule``: its checkpoints name its class (:data:`MODEL_CLASS_KEY`)."""

    load_overrides: ClassVar[dict[str, Any]] = {}
    """Constructor arguments replaced when loading for inference (e.g. training-only networks off)."""

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[MODEL_CLASS_KEY] = f"{type(self).__module__}.{type(self).__qualname__}"

    def check_loaded(self, path: Path) -> None:
        """Refuse a loaded checkpoint that cannot be used (raise :class:`DataError`); default: accept."""


def _legacy_class_name(state_dict: dict[str, Any]) -> str | None:
    """The class of a checkpoint written before :data:`MODEL_CLASS_KEY` existed, from its weights."""
    if "denoiser.spatial.unet.conv_in.conv.weight" in state_dict:
        return INFLATED_CLASS
    weight = state_dict.get("denoiser.unet.conv_in.conv.weight")
    if weight is not None:
        if not any(key.startswith("vae.") for key in state_dict):
            return PIXEL_CLASS
        return RETIRED_2DT if weight.ndim == 5 else SPATIAL_CLASS
    if any(key.startswith("autoencoder.") for key in state_dict):
        return VAE_CLASS
    if any(key.startswith("net.") for key in state_dict):
        return SEGMENTER_CLASS
    return None


def model_class_named(name: str) -> type[LightningModule] | None:
    """The model class that ``name`` (``calid_lightning.models.<module>.<Class>``) names, else None."""
    module_name, _, class_name = name.rpartition(".")
    if not module_name.startswith("calid_lightning.models."):
        return None
    try:
        cls = getattr(importlib.import_module(module_name), class_name, None)
    except ImportError:
        return None
    return cls if isinstance(cls, type) and issubclass(cls, LightningModule) else None


def checkpoint_class(checkpoint: dict[str, Any], path: str | Path = "checkpoint") -> type[LightningModule]:
    """The model class of a loaded checkpoint dict (its :data:`MODEL_CLASS_KEY`, else its weights).

    Raises :class:`DataError` naming the file when it is no checkpoint of this framework or holds the
    retired CaLID2DT.
    """
    name = checkpoint.get(MODEL_CLASS_KEY) or _legacy_class_name(checkpoint.get("state_dict") or {})
    if name is None:
        raise DataError(
            path,
            f"not a calid-lightning checkpoint (no '{MODEL_CLASS_KEY}' entry and no VAE, segmenter or "
            "denoiser weights in its state_dict)",
        )
    if name == RETIRED_2DT:
        raise DataError(
            path,
            "holds a CaLID2DT (the from-scratch 3D U-Net 2D+T model), which was retired after losing every "
            "comparison; train the inflated 2D+T model instead (`make train-inflated`)",
        )
    cls = model_class_named(str(name))
    if cls is None:
        raise DataError(path, f"'{MODEL_CLASS_KEY}' names {name!r}, which is not a calid_lightning model")
    return cls


def load_model(
    path: str | Path,
    expected: type[Model] | tuple[type[LightningModule], ...] = LightningModule,
    map_location: Any = "cpu",
    **overrides: Any,
) -> Model:
    """The model of checkpoint ``path``, frozen (eval mode, no gradients) on ``map_location``.

    The file names its class; a class that is not ``expected`` (one class or a tuple) is refused with a
    :class:`DataError` naming the file, the class found and the class expected, as is a checkpoint the class
    cannot use (``check_loaded``, e.g. a VAE without its latent scale factor). ``overrides`` replace saved
    constructor arguments, after the class's own ``load_overrides``.
    """
    path = Path(path)
    cls = checkpoint_class(read_checkpoint(path), path)
    allowed = expected if isinstance(expected, tuple) else (expected,)
    if not issubclass(cls, allowed):
        wanted = " or ".join(c.__name__ for c in allowed)
        raise DataError(path, f"holds a {cls.__name__} checkpoint, expected a {wanted} checkpoint")
    overrides = {**getattr(cls, "load_overrides", {}), **overrides}
    model = cls.load_from_checkpoint(path, map_location=map_location, weights_only=True, **overrides)
    if isinstance(model, NamedCheckpoint):
        model.check_loaded(path)
    model.eval()
    model.requires_grad_(False)
    return model
