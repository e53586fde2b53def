"""The method registry: every upsampling method the tools offer, its names, what it needs, how it is built.

One :class:`Method` per name: its row title in the results table, its column label in figures, the model
file it needs (:data:`MODEL_FILES`: which command-line option gives it and which model class it must hold),
the tools that offer it, and its builder. ``calid evaluate``, ``calid evaluate-cine``, ``calid figures``,
``calid upsample`` and ``calid reproduce``'s table all read this table, so adding a method is one entry here
plus its implementation.

Built methods have the call shape ``at(stack (Z, N, 1, H, W), positions) -> (len(positions), N, 1, H, W)``
(:class:`~calid_lightning.inference.upsample.EngineUpsampler`, the image baselines). The two ceilings,
:class:`TrueSlices` and :class:`CodecCeiling`, need the true slices, so only held-out evaluation runs them.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import functools
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from calid_lightning.cli_options import non_negative_float, positive_int
from calid_lightning.errors import DataError
from calid_lightning.inference.baselines import IMAGE_BASELINES
from calid_lightning.inference.interpolator import (
    DETAIL_WEIGHT,
    LatentBlend,
    calid_estimate,
)
from calid_lightning.inference.nifti_io import trained_preprocessing
from calid_lightning.inference.upsample import EngineUpsampler
from calid_lightning.models.checkpoints import (
    INFLATED_CLASS,
    PIXEL_CLASS,
    SEGMENTER_CLASS,
    SPATIAL_CLASS,
    load_model,
    model_class_named,
)

TOOLS = ("evaluate", "evaluate-cine", "figures", "upsample")
MEAN_DRAWS = 1
"""Noise draws averaged by the conditional-mean estimate (``calid_mean``) unless told otherwise."""


class Upsampler(Protocol):
    """Anything that returns the slices at ``positions`` of a ``(Z, N, 1, H, W)`` stack."""

    def at(
        self, stack: Tensor, positions: Sequence[float], slice_spacing_mm: float | None = None
    ) -> Tensor: ...


@dataclasses.dataclass(frozen=True)
class ModelFile:
    """A model file some methods need: the option that gives it and the model class it must hold."""

    option: str
    model_class: str
    what: str

    @property
    def class_name(self) -> str:
        """The model class without its module."""
        return self.model_class.rpartition(".")[2]


MODEL_FILES: dict[str, ModelFile] = {
    "checkpoint": ModelFile("--checkpoint", SPATIAL_CLASS, "CaLIDSpatial checkpoint"),
    "inflated_checkpoint": ModelFile("--inflated-checkpoint", INFLATED_CLASS, "CaLIDInflated checkpoint"),
    "pixel_checkpoint": ModelFile("--pixel-checkpoint", PIXEL_CLASS, "PixelSpatial checkpoint"),
    "segmenter": ModelFile(
        "--segmenter", SEGMENTER_CLASS, "SegmenterModule checkpoint (adds Dice / HD95 / LV volume errors)"
    ),
}
"""Model files by ``argparse`` destination."""
INTERPOLATOR_FILES = ("checkpoint", "inflated_checkpoint", "pixel_checkpoint")
"""The model files that hold interpolators (the fields of :class:`MethodModels`)."""


@dataclasses.dataclass(frozen=True)
class MethodModels:
    """The model files given on the command line and how the built methods run."""

    checkpoint: str | None = None
    inflated_checkpoint: str | None = None
    pixel_checkpoint: str | None = None
    device: str = "cpu"
    max_batch: int = 64
    mean_draws: int = MEAN_DRAWS
    detail_weight: float = DETAIL_WEIGHT


@dataclasses.dataclass(frozen=True)
class Method:
    """One upsampling method: names, the model file it needs, the tools that offer it, its builder."""

    name: str
    title: str
    label: str
    needs: str | None
    tools: tuple[str, ...]
    build: Callable[[MethodModels], Any]
    cine: bool = False
    ceiling: bool = False


class TrueSlices:
    """The ceiling method ``truth``: held-out evaluation scores the true held-out slices themselves.

    It cannot upsample a stack from its kept slices alone, so :meth:`at` refuses.
    """

    def at(self, stack: Tensor, positions: Sequence[float], slice_spacing_mm: float | None = None) -> Tensor:
        raise TypeError("method 'truth' returns the true held-out slices; run it through evaluate_run")


@dataclasses.dataclass
class CodecCeiling:
    """The ceiling method ``vae_truth``: the true held-out slices through the model's VAE (encode, decode).

    The best a latent method can score: its remaining error is the autoencoder's. Like :class:`TrueSlices`
    it needs the truth, so held-out evaluation feeds it and :meth:`at` refuses.
    """

    model: Any
    device: str = "cpu"

    def at(self, stack: Tensor, positions: Sequence[float], slice_spacing_mm: float | None = None) -> Tensor:
        raise TypeError("method 'vae_truth' reconstructs the true held-out slices; use evaluate_run")

    @torch.no_grad()
    def reconstruct(self, slices: Tensor) -> Tensor:
        """``(Z, N, 1, H, W)`` slices -> their VAE reconstructions, same shape, on the CPU."""
        flat = slices.flatten(0, 1).to(self.device)
        return self.model.decode(self.model.encode(flat)).cpu().reshape(slices.shape)


@functools.lru_cache(maxsize=4)
def _model(path: str, model_class: str, device: str) -> Any:
    """The model of ``path``, which must hold ``model_class`` (``module.Class``), loaded once per device."""
    expected = model_class_named(model_class)
    assert expected is not None, f"MODEL_FILES names no model class {model_class!r}"
    return load_model(path, expected, map_location=device).to(device)


@contextlib.contextmanager
def naming_option(needs: str) -> Iterator[None]:
    """A :class:`DataError` about the file ``needs`` (a key of :data:`MODEL_FILES`) as a ``ValueError``
    that starts with the option giving it."""
    try:
        yield
    except DataError as exc:
        raise ValueError(f"{MODEL_FILES[needs].option} {exc}") from None


def model_for(models: MethodModels, needs: str) -> Any:
    """The loaded model of the file ``needs`` (given: :func:`build_method` checks that first)."""
    with naming_option(needs):
        return _model(str(getattr(models, needs)), MODEL_FILES[needs].model_class, models.device)


def models_from_args(args: argparse.Namespace) -> MethodModels:
    """The :class:`MethodModels` of a tool's parsed options (model files it does not offer stay None)."""
    files = {dest: getattr(args, dest, None) for dest in INTERPOLATOR_FILES}
    return MethodModels(
        **files,
        device=args.device,
        max_batch=args.max_batch,
        mean_draws=args.mean_draws,
        detail_weight=args.detail_weight,
    )


def _engine(interpolator: Any, models: MethodModels, order: str = "bisection") -> EngineUpsampler:
    return EngineUpsampler(interpolator, order=order, max_batch=models.max_batch, device=models.device)


def _calid(models: MethodModels, order: str = "bisection") -> EngineUpsampler:
    return _engine(model_for(models, "checkpoint"), models, order)


def _calid_mean(models: MethodModels) -> EngineUpsampler:
    return _engine(calid_estimate(model_for(models, "checkpoint"), True, models.mean_draws), models)


def _with_detail(mean: bool) -> Callable[[MethodModels], EngineUpsampler]:
    """CaLID (one sample or the conditional mean) plus the neighbours' VAE residual (DetailTransfer)."""

    def build(models: MethodModels) -> EngineUpsampler:
        model = model_for(models, "checkpoint")
        return _engine(calid_estimate(model, mean, models.mean_draws, models.detail_weight), models)

    return build


def _latent_blend(kind: str) -> Callable[[MethodModels], EngineUpsampler]:
    return lambda models: _engine(LatentBlend(model_for(models, "checkpoint"), kind), models)


def _cine(needs: str, shared: bool, mean: bool) -> Callable[[MethodModels], EngineUpsampler]:
    """A whole-cine method: the inflated model (or the spatial one inflated with no temporal layers)."""

    def build(models: MethodModels) -> EngineUpsampler:
        if needs == "checkpoint":
            from calid_lightning.models.calid_inflated import CaLIDInflated

            with naming_option(needs):  # a file that is not a CaLIDSpatial is refused, naming the option
                model: Any = CaLIDInflated(spatial_checkpoint=models.checkpoint, temporal_layers="none")
            model = model.to(models.device).eval()
        else:  # a copy: the loaded model is shared, and frame_noise differs between these methods
            model = copy.deepcopy(model_for(models, needs))
        model.frame_noise = 1.0 if shared else 0.0
        return _engine(calid_estimate(model, mean, models.mean_draws), models)

    return build


_HELD = ("evaluate",)
_SLICE = ("evaluate", "evaluate-cine", "figures")
METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "calid_mean_detail",
            "CaLID, conditional mean + neighbours' VAE residual",
            "CaLID mean + detail",
            "checkpoint",
            _SLICE,
            _with_detail(mean=True),
        ),
        Method(
            "calid_detail",
            "CaLID, one sample + neighbours' VAE residual",
            "CaLID + detail",
            "checkpoint",
            _SLICE,
            _with_detail(mean=False),
        ),
        Method("calid_mean", "CaLID, conditional mean", "CaLID mean", "checkpoint", _SLICE, _calid_mean),
        Method("calid", "CaLID, one sample", "CaLID", "checkpoint", (*_SLICE, "upsample"), _calid),
        Method(
            "calid_inflated",
            "CaLID 2D+T, inflated spatial model",
            "CaLID 2D+T",
            "inflated_checkpoint",
            ("evaluate-cine",),
            _cine("inflated_checkpoint", shared=False, mean=False),
            cine=True,
        ),
        Method(
            "calid_inflated_shared",
            "CaLID 2D+T inflated, noise shared over frames",
            "CaLID 2D+T shared noise",
            "inflated_checkpoint",
            ("evaluate-cine",),
            _cine("inflated_checkpoint", shared=True, mean=False),
            cine=True,
        ),
        Method(
            "calid_inflated_mean",
            "CaLID 2D+T inflated, conditional mean",
            "CaLID 2D+T mean",
            "inflated_checkpoint",
            ("evaluate-cine",),
            _cine("inflated_checkpoint", shared=False, mean=True),
            cine=True,
        ),
        Method(
            "calid_shared",
            "CaLID frame by frame, noise shared over frames",
            "CaLID shared noise",
            "checkpoint",
            ("evaluate-cine",),
            _cine("checkpoint", shared=True, mean=False),
            cine=True,
        ),
        Method(
            "calid_sequential",
            "CaLID, sequential order",
            "CaLID (sequential)",
            "checkpoint",
            _SLICE,
            lambda models: _calid(models, "sequential"),
        ),
        Method(
            "pixel",
            "pixel-space diffusion",
            "pixel diffusion",
            "pixel_checkpoint",
            ("evaluate", "figures"),
            lambda models: _engine(model_for(models, "pixel_checkpoint"), models),
        ),
        Method("lerp", "latent lerp (same VAE)", "latent lerp", "checkpoint", _SLICE, _latent_blend("lerp")),
        Method(
            "slerp", "latent slerp (same VAE)", "latent slerp", "checkpoint", _SLICE, _latent_blend("slerp")
        ),
        Method(
            "linear",
            "linear in z (image)",
            "linear (image)",
            None,
            (*_SLICE, "upsample"),
            lambda models: IMAGE_BASELINES["linear"],
        ),
        Method(
            "cubic",
            "cubic in z (image)",
            "cubic (image)",
            None,
            (*_SLICE, "upsample"),
            lambda models: IMAGE_BASELINES["cubic"],
        ),
        Method(
            "nearest",
            "nearest slice",
            "nearest slice",
            None,
            (*_SLICE, "upsample"),
            lambda models: IMAGE_BASELINES["nearest"],
        ),
        Method(
            "truth",
            "true slices (ceiling)",
            "truth",
            "segmenter",
            _HELD,
            lambda models: TrueSlices(),
            ceiling=True,
        ),
        Method(
            "vae_truth",
            "VAE(true slices): latent ceiling",
            "VAE(truth)",
            "checkpoint",
            _HELD,
            lambda models: CodecCeiling(model_for(models, "checkpoint"), models.device),
            ceiling=True,
        ),
    )
}
"""Every method, in the order of the results table (ceilings last)."""


def methods_of(tool: str) -> tuple[str, ...]:
    """The names of the methods ``tool`` (one of :data:`TOOLS`) offers, in table order."""
    if tool not in TOOLS:
        raise ValueError(f"unknown tool {tool!r}; expected one of {', '.join(TOOLS)}")
    return tuple(name for name, method in METHODS.items() if tool in method.tools)


def training_mismatches(models: MethodModels, data: Mapping[str, Any]) -> list[str]:
    """One warning per model whose training data were prepared other than the evaluation data.

    ``data`` holds the evaluation data module's settings (its ``hparams``). A model file whose checkpoint
    records other ``intensity_percentiles`` or ``pixel_spacing`` (:func:`~calid_lightning.inference.nifti_io.
    trained_preprocessing`) gets a line naming the option, both values and the override that would match;
    a warning, not an error, since scoring a model on other settings is how its generalisation is measured.
    Checkpoints without the record are not checked.
    """
    given = {
        "intensity_percentiles": [float(p) for p in data["intensity_percentiles"]],
        "pixel_spacing": data.get("pixel_spacing"),
    }
    notes = []
    for dest in INTERPOLATOR_FILES:
        path = getattr(models, dest)
        trained = trained_preprocessing(path) if path else None
        if trained is None or not trained.recorded:
            continue
        expected = {
            "intensity_percentiles": list(trained.percentiles),
            "pixel_spacing": trained.pixel_spacing,
        }
        for key, value in expected.items():
            if given[key] != value:
                notes.append(
                    f"{MODEL_FILES[dest].option} {path} was trained with data.{key} {value}, but the "
                    f"evaluation data use {given[key]}; --data-override {key}={value} would match"
                )
    return notes


def label_of(name: str) -> str:
    """The figure label of method ``name`` (the name itself for one outside the registry)."""
    return METHODS[name].label if name in METHODS else name


VARIANT_SEPARATOR = ", "
"""Between a method's name and an ablation's variant of it in a results row: ``"calid, 5 DDIM steps"``."""


def variant_name(method: str, variant: str) -> str:
    """The row name of ``variant`` of ``method`` (an ablation's rows: other DDIM steps, another training)."""
    return f"{method}{VARIANT_SEPARATOR}{variant}"


def split_variant(name: str) -> tuple[str, str]:
    """``(method, variant)`` of a row name from :func:`variant_name`; ``(name, "")`` for a plain method."""
    method, _, variant = name.partition(VARIANT_SEPARATOR)
    return method, variant


def title_of(name: str) -> str:
    """The results-table title of row ``name``: a variant of a method (``"calid, 5 DDIM steps"``) is the
    method's title and the variant; other names are their own title."""
    method, variant = split_variant(name)
    if method not in METHODS:
        return name
    return variant_name(METHODS[method].title, variant) if variant else METHODS[method].title


def build_method(name: str, models: MethodModels | None = None) -> Any:
    """The upsampler of method ``name``; ``ValueError`` for an unknown name or a model file not given."""
    models = MethodModels() if models is None else models
    method = METHODS.get(name)
    if method is None:
        raise ValueError(f"unknown method {name!r}; expected one of {', '.join(METHODS)}")
    if method.needs is not None and method.needs != "segmenter" and not getattr(models, method.needs):
        file = MODEL_FILES[method.needs]
        raise ValueError(f"method {name!r} needs a {file.class_name} checkpoint ({file.option} CKPT)")
    return method.build(models)


def add_model_arguments(parser: argparse.ArgumentParser, tool: str) -> None:
    """The model-file options ``tool``'s methods need, each with the methods that need it in its help, and
    the two settings of the CaLID estimates (``--mean-draws``, ``--detail-weight``)."""
    offered = methods_of(tool)
    for dest, file in MODEL_FILES.items():
        users = [m for m in offered if METHODS[m].needs == dest]
        if users:
            parser.add_argument(file.option, dest=dest, help=f"{file.what} for {', '.join(users)}")
    parser.add_argument(
        "--mean-draws",
        type=positive_int,
        default=MEAN_DRAWS,
        help=f"noise draws averaged by the conditional-mean (*_mean*) methods (default {MEAN_DRAWS})",
    )
    parser.add_argument(
        "--detail-weight",
        type=non_negative_float,
        default=DETAIL_WEIGHT,
        help="weight of the neighbours' VAE residual added by the *_detail methods "
        f"(default {DETAIL_WEIGHT}, chosen on the validation split)",
    )


def checked_methods(parser: argparse.ArgumentParser, args: argparse.Namespace, tool: str) -> list[str]:
    """The methods of ``args.methods`` to run: known to ``tool``, with their model files.

    Refuses (``parser.error``, exit status 2) an unknown method, a ``--factor`` below 2 and a model file that
    does not exist; skips, with a message, the methods whose model file is not given, and refuses when none
    is left.
    """
    offered = methods_of(tool)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in offered]
    if unknown or not methods:
        parser.error(f"--methods {args.methods!r}: unknown {unknown}; choose from {', '.join(offered)}")
    if args.factor < 2:
        parser.error(f"--factor must be >= 2 (one held-out slice per gap), got {args.factor}")
    given: Mapping[str, str | None] = {dest: getattr(args, dest, None) for dest in MODEL_FILES}
    for dest, path in given.items():
        if path and not Path(path).is_file():
            parser.error(f"{MODEL_FILES[dest].option} {path}: file not found")
    for dest, file in MODEL_FILES.items():
        skipped = [m for m in methods if METHODS[m].needs == dest]
        if skipped and not given[dest]:
            print(
                f"{parser.prog}: skipping {', '.join(skipped)}: they need {file.option} CKPT", file=sys.stderr
            )
            methods = [m for m in methods if m not in skipped]
    if not methods:
        options = " / ".join(
            MODEL_FILES[d].option for d in given if any(METHODS[m].needs == d for m in offered)
        )
        images = ",".join(m for m in offered if METHODS[m].needs is None)
        parser.error(f"no method left to run: pass {options} or an image method ({images})")
    return methods
