"""Held-out-slice evaluation of one upsampling method on one prepared subject.

The sparse input is the kept slices only (``heldout_plan``); the method generates the slices at the held-out
positions, ``(z - kept[0]) / factor`` in kept-slice-index units, and each generated slice is scored against
the true slice at its index. Acquired slices are never scored: copies would inflate the numbers. Every method
has the call shape ``at(stack, positions)`` of :class:`~calid_lightning.inference.upsample.EngineUpsampler`
and the image baselines, with stacks ``(Z, N, 1, H, W)`` whose ``N`` items are the evaluated frames.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from calid_lightning.data.preprocess import PreparedSubject
from calid_lightning.evaluation.metrics import METRICS, slice_heart_boxes, slice_metrics
from calid_lightning.inference.interpolator import LatentBlend
from calid_lightning.inference.upsample import EngineUpsampler
from calid_lightning.models.baselines import IMAGE_BASELINES

CHECKPOINT_METHODS = ("calid", "calid_sequential", "lerp", "slerp")
PIXEL_METHODS = ("pixel",)
IMAGE_METHODS = ("linear", "cubic", "nearest")
METHODS = CHECKPOINT_METHODS + PIXEL_METHODS + IMAGE_METHODS
RECORD_FIELDS = ("subject", "method", "factor", "frame", "z", *METRICS)


class Upsampler(Protocol):
    """Anything that returns the slices at ``positions`` of a ``(Z, N, 1, H, W)`` stack."""

    def at(self, stack: Tensor, positions: Sequence[float]) -> Tensor: ...


@functools.lru_cache(maxsize=2)
def load_calid(checkpoint: str, device: str = "cpu") -> Any:
    """A CaLIDSpatial checkpoint in eval mode on ``device`` (cached: calid, lerp and slerp share one)."""
    from calid_lightning.models.calid_spatial import CaLIDSpatial

    return CaLIDSpatial.load_from_checkpoint(checkpoint, map_location=device).to(device).eval()


@functools.lru_cache(maxsize=1)
def load_pixel(checkpoint: str, device: str = "cpu") -> Any:
    """A PixelSpatial checkpoint in eval mode on ``device`` (cached)."""
    from calid_lightning.models.pixel_diffusion import PixelSpatial

    return PixelSpatial.load_from_checkpoint(checkpoint, map_location=device).to(device).eval()


def build_method(
    name: str,
    checkpoint: str | None = None,
    device: str = "cpu",
    max_batch: int = 64,
    pixel_checkpoint: str | None = None,
) -> Upsampler:
    """The upsampler of method ``name`` (one of :data:`METHODS`).

    ``calid`` / ``calid_sequential`` run the CaLID model through the autoregressive engine in bisection /
    sequential order; ``lerp`` / ``slerp`` blend the same model's VAE latents; ``pixel`` runs the
    pixel-space diffusion interpolator (``pixel_checkpoint``) through the engine in bisection order;
    ``linear``, ``cubic`` and ``nearest`` interpolate the images along z. Raises ``ValueError`` for an
    unknown name or a missing checkpoint.
    """
    if name in IMAGE_METHODS:
        return IMAGE_BASELINES[name]
    if name in PIXEL_METHODS:
        if not pixel_checkpoint:
            raise ValueError(f"method {name!r} needs a PixelSpatial checkpoint (--pixel-checkpoint CKPT)")
        model = load_pixel(str(pixel_checkpoint), device)
        return EngineUpsampler(model, max_batch=max_batch, device=device)
    if name not in CHECKPOINT_METHODS:
        raise ValueError(f"unknown method {name!r}; expected one of {', '.join(METHODS)}")
    if not checkpoint:
        raise ValueError(f"method {name!r} needs a CaLIDSpatial checkpoint (--checkpoint CKPT)")
    model = load_calid(str(checkpoint), device)
    interpolator = LatentBlend(model, name) if name in ("lerp", "slerp") else model
    order = "sequential" if name == "calid_sequential" else "bisection"
    return EngineUpsampler(interpolator, order=order, max_batch=max_batch, device=device)


def heldout_positions(kept: Sequence[int], heldout: Sequence[int]) -> tuple[int, list[float]]:
    """``(factor, positions)``: the gap of the evenly spaced ``kept`` slices and the held-out positions.

    Raises ``ValueError`` unless kept slices are evenly spaced (gap >= 2) and every held-out slice lies
    strictly between the first and last kept slice without being one of them.
    """
    kept_a, held_a = np.asarray(kept, dtype=np.int64), np.asarray(heldout, dtype=np.int64)
    gaps = np.diff(kept_a)
    if kept_a.size < 2 or gaps.min() < 2 or np.any(gaps != gaps[0]):
        raise ValueError(f"kept slices must be >= 2, evenly spaced with a gap >= 2, got {kept_a.tolist()}")
    if np.intersect1d(kept_a, held_a).size:
        raise ValueError(f"held-out slices {np.intersect1d(kept_a, held_a).tolist()} are also kept")
    if held_a.size == 0 or held_a.min() <= kept_a[0] or held_a.max() >= kept_a[-1]:
        raise ValueError(f"held-out slices {held_a.tolist()} must lie strictly inside {kept_a[[0, -1]]}")
    factor = int(gaps[0])
    return factor, [(int(z) - int(kept_a[0])) / factor for z in held_a]


def with_sampling(upsampler: Upsampler, steps: int | None, seed: int) -> Upsampler:
    """The upsampler with ``steps`` DDIM steps and ``seed`` when it samples; deterministic ones unchanged."""
    if isinstance(upsampler, EngineUpsampler):
        return dataclasses.replace(upsampler, num_steps=steps, seed=seed)
    return upsampler


def evaluate_method(
    method_name: str,
    upsampler: Upsampler,
    prepared: PreparedSubject,
    kept: Sequence[int],
    heldout: Sequence[int],
    frames: Sequence[int],
    steps: int | None = None,
    seed: int = 0,
    margin: int = 4,
) -> tuple[list[dict[str, Any]], float]:
    """Reconstruct the held-out slices of ``prepared`` at ``frames`` from the kept slices and score them.

    Returns one record per held-out slice and frame (fields :data:`RECORD_FIELDS`) and the seconds the
    upsampler took for the whole stack (all frames at once; VAE encode / decode included).
    """
    factor, positions = heldout_positions(kept, heldout)
    kept_i, held_i, frames_i = list(map(int, kept)), list(map(int, heldout)), list(map(int, frames))
    stack = torch.from_numpy(np.ascontiguousarray(prepared.image[kept_i][:, frames_i])).unsqueeze(2)
    assert not set(kept_i) & set(held_i), "a held-out slice would enter the sparse input"
    truth = torch.from_numpy(np.ascontiguousarray(prepared.image[held_i][:, frames_i])).unsqueeze(2)

    start = time.perf_counter()
    generated = with_sampling(upsampler, steps, seed).at(stack, positions)
    seconds = time.perf_counter() - start
    if generated.shape != truth.shape:
        raise ValueError(
            f"method {method_name!r} returned {tuple(generated.shape)}, expected {tuple(truth.shape)}"
        )

    labels = prepared.labels
    true_labels = None if labels is None else labels[held_i][:, frames_i].reshape(-1, *labels.shape[-2:])
    boxes = slice_heart_boxes(true_labels, labels, margin)
    scores = slice_metrics(generated.flatten(0, 1).cpu(), truth.flatten(0, 1), boxes)
    records = []
    for i, (z, frame) in enumerate((z, f) for z in held_i for f in frames_i):
        record = {"subject": prepared.subject_id, "method": method_name, "factor": factor}
        record |= {"frame": frame, "z": z} | {k: float(v[i]) for k, v in scores.items()}
        records.append(record)
    return records, seconds
