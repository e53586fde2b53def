"""Held-out-slice evaluation of one upsampling method on one prepared subject.

The sparse input is the kept slices only (``heldout_plan``); the method generates the slices at the held-out
positions, ``(z - kept[0]) / factor`` in kept-slice-index units, and each generated slice is scored against
the true slice at its index. Acquired slices are never scored: copies would inflate the numbers. Every method
has the call shape ``at(stack, positions)`` of :class:`~calid_lightning.inference.upsample.EngineUpsampler`
and the image baselines, with stacks ``(Z, N, 1, H, W)`` whose ``N`` items are the evaluated frames.

With a frozen segmenter (``segmenter=``), the reconstructed slices are also segmented and scored against the
true labels (Dice, HD95 in mm: :mod:`~calid_lightning.evaluation.segmentation`), and, when both ED and ES are
evaluated, the LV volumes of the reconstructed stack (acquired slices segmented from the true images, held-out
ones from the reconstructions) are compared with the true labels over the same slices. The method ``truth``
feeds the true held-out slices through the same path: the segmenter's ceiling.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from calid_lightning.data.datasets import labelled_frames
from calid_lightning.data.misregistration import MAX_SHIFT_MM, shift_in_plane
from calid_lightning.data.preprocess import PreparedSubject
from calid_lightning.data.sampling import stable_int
from calid_lightning.evaluation.metrics import METRICS, slice_heart_boxes, slice_metrics
from calid_lightning.evaluation.records import nan_mean
from calid_lightning.evaluation.segmentation import (
    CLASS_KEYS,
    aggregate_segmentation,
    segmentation_metrics,
    stack_volume_errors,
    volume_dice,
)
from calid_lightning.inference.methods import CodecCeiling, TrueSlices, Upsampler
from calid_lightning.inference.upsample import EngineUpsampler

RECORD_FIELDS = ("subject", "method", "factor", "frame", "z", *METRICS)
SEGMENTATION_FIELDS = tuple(f"{m}_{c}" for m in ("dice", "hd95") for c in CLASS_KEYS.values())
PRESENCE_FIELDS = tuple(f"present_{c}" for c in CLASS_KEYS.values())
"""Per slice 1 where the true label holds the class, else 0 (NaN in unlabelled frames): the slices the
per-subject Dice and HD95 average over. A slice where only the prediction holds the class scores Dice 0 in the
per-slice CSV but is not one of them."""
SLICE_SEGMENTATION_FIELDS = (*SEGMENTATION_FIELDS, *PRESENCE_FIELDS)
VOLUME_FIELDS = ("edv_error_ml", "esv_error_ml", "ef_error", "abs_ef_error")
VOLUME_DICE_FIELDS = tuple(f"dice3d_{c}" for c in CLASS_KEYS.values())
"""Per subject, the Dice of the held-out slices of each scored frame pooled into one stack
(:func:`~calid_lightning.evaluation.segmentation.volume_dice`), averaged over the frames."""
SUBJECT_SEGMENTATION_FIELDS = (
    *(f"dice_{c}" for c in CLASS_KEYS.values()),
    "dice_mean",
    *VOLUME_DICE_FIELDS,
    *(f"hd95_{c}" for c in CLASS_KEYS.values()),
    "hd95_mean",
    *VOLUME_FIELDS,
)


class Segmenter(Protocol):
    """Anything that labels slices: ``predict(images (N, 1, H, W) in [0, 1]) -> labels (N, H, W)``."""

    def predict(self, images: Tensor) -> Tensor: ...


@dataclasses.dataclass
class MethodRun:
    """One method on one subject: per-slice records, upsampling seconds and per-subject segmentation summary.

    ``summary`` holds :data:`SUBJECT_SEGMENTATION_FIELDS` (NaN where not computable) with a segmenter and
    is empty without one.
    """

    records: list[dict[str, Any]]
    seconds: float
    summary: dict[str, float]


def select_frames(prepared: PreparedSubject, frames: str) -> list[int]:
    """Frame indices of ``--frames``: ``ed_es``, ``ed``, ``es``, ``all`` or explicit indices (checked)."""
    named = {
        "all": list(range(prepared.num_frames)),
        "ed_es": sorted({prepared.ed_frame, prepared.es_frame}),
        "ed": [prepared.ed_frame],
        "es": [prepared.es_frame],
    }
    if frames in named:
        return named[frames]
    try:
        chosen = sorted({int(f) for f in frames.split(",")})
    except ValueError:
        expected = "expected ed_es, ed, es, all or comma-separated integers"
        raise ValueError(f"--frames {frames!r}: {expected}") from None
    bad = [f for f in chosen if not 0 <= f < prepared.num_frames]
    if bad:
        raise ValueError(
            f"--frames {bad}: subject {prepared.subject_id} has frames 0..{prepared.num_frames - 1}"
        )
    return chosen


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


def kept_spacing_mm(factor: int, spacing: Sequence[float]) -> float:
    """The distance in mm between two kept slices: ``factor`` acquired slice spacings (``spacing[2]``).

    The upsamplers need it for gap-conditioned models, which are told the physical gap they bridge.
    """
    return factor * float(spacing[2])


def shift_kept_slices(stack: Tensor, shift_mm: float, pixel_mm: Sequence[float], seed: int) -> Tensor:
    """The kept slices ``(Z, T, 1, H, W)`` each moved in plane by its own breath-hold offset.

    Offsets are drawn per slice and axis from N(0, ``shift_mm``) mm, clipped to +-:data:`MAX_SHIFT_MM`, and
    shared by the slice's frames (one breath-hold acquires one slice's whole cine); bilinear resampling,
    edges repeated (:func:`~calid_lightning.data.misregistration.shift_in_plane`). ``seed`` fixes the draws,
    so every method sees the same misregistered input. This is how held-out scoring measures robustness to
    misregistration: the truth stays where it is.
    """
    if shift_mm <= 0:
        return stack
    rng = np.random.default_rng(seed)
    mm = np.clip(rng.normal(0.0, shift_mm, (stack.shape[0], 2)), -MAX_SHIFT_MM, MAX_SHIFT_MM)
    px = torch.from_numpy(mm / np.asarray(pixel_mm[:2], dtype=np.float64))
    return shift_in_plane(stack, px).to(stack.dtype)


def with_sampling(upsampler: Upsampler, steps: int | None, seed: int) -> Upsampler:
    """The upsampler with ``steps`` DDIM steps and ``seed`` when it samples; deterministic ones unchanged."""
    if isinstance(upsampler, EngineUpsampler):
        return dataclasses.replace(upsampler, num_steps=steps, seed=seed)
    return upsampler


def evaluate_run(
    method_name: str,
    upsampler: Upsampler,
    prepared: PreparedSubject,
    kept: Sequence[int],
    heldout: Sequence[int],
    frames: Sequence[int],
    steps: int | None = None,
    seed: int = 0,
    margin: int = 4,
    segmenter: Segmenter | None = None,
    input_shift_mm: float = 0.0,
) -> MethodRun:
    """Reconstruct the held-out slices of ``prepared`` at ``frames`` from the kept slices and score them.

    The :class:`MethodRun` holds one record per held-out slice and frame (fields :data:`RECORD_FIELDS`,
    plus :data:`SLICE_SEGMENTATION_FIELDS` with a ``segmenter``), the seconds the upsampler took for the whole
    stack (all frames at once; VAE encode / decode included) and the per-subject segmentation summary.

    For :class:`TrueSlices` the "reconstruction" is the true slices: image metrics are NaN (they would
    compare a slice with itself) and seconds 0. ``input_shift_mm`` > 0 misregisters the kept slices
    (:func:`shift_kept_slices`, seeded by ``seed`` and the subject) before the upsampler sees them.
    """
    factor, positions = heldout_positions(kept, heldout)
    kept_i, held_i, frames_i = list(map(int, kept)), list(map(int, heldout)), list(map(int, frames))
    stack = torch.from_numpy(np.ascontiguousarray(prepared.image[kept_i][:, frames_i])).unsqueeze(2)
    shift_seed = stable_int("input-shift", seed, prepared.subject_id)
    stack = shift_kept_slices(stack, input_shift_mm, prepared.spacing, shift_seed)
    assert not set(kept_i) & set(held_i), "a held-out slice would enter the sparse input"
    truth = torch.from_numpy(np.ascontiguousarray(prepared.image[held_i][:, frames_i])).unsqueeze(2)

    if isinstance(upsampler, TrueSlices):
        generated, seconds = truth, 0.0
    elif isinstance(upsampler, CodecCeiling):
        start = time.perf_counter()
        generated = upsampler.reconstruct(truth)
        seconds = time.perf_counter() - start
    else:
        start = time.perf_counter()
        spacing_mm = kept_spacing_mm(factor, prepared.spacing)
        generated = with_sampling(upsampler, steps, seed).at(stack, positions, spacing_mm)
        seconds = time.perf_counter() - start
    if generated.shape != truth.shape:
        raise ValueError(
            f"method {method_name!r} returned {tuple(generated.shape)}, expected {tuple(truth.shape)}"
        )
    generated = generated.cpu()

    labels = prepared.labels
    true_labels = None if labels is None else labels[held_i][:, frames_i].reshape(-1, *labels.shape[-2:])
    if isinstance(upsampler, TrueSlices):
        nan = torch.full((generated.shape[0] * generated.shape[1],), math.nan, dtype=torch.float64)
        scores: dict[str, Any] = dict.fromkeys(METRICS, nan)
    else:
        boxes = slice_heart_boxes(true_labels, labels, margin)
        scores = slice_metrics(generated.flatten(0, 1), truth.flatten(0, 1), boxes)
    summary: dict[str, float] = {}
    if segmenter is not None:
        segmented, summary = segment_reconstruction(
            segmenter, prepared, kept_i, held_i, frames_i, generated, stack
        )
        scores = scores | segmented
    records = []
    for i, (z, frame) in enumerate((z, f) for z in held_i for f in frames_i):
        record = {"subject": prepared.subject_id, "method": method_name, "factor": factor}
        record |= {"frame": frame, "z": z} | {k: float(v[i]) for k, v in scores.items()}
        records.append(record)
    return MethodRun(records, seconds, summary)


def segment_reconstruction(
    segmenter: Segmenter,
    prepared: PreparedSubject,
    kept: list[int],
    heldout: list[int],
    frames: list[int],
    generated: Tensor,
    acquired: Tensor,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Per-slice Dice / HD95 of the segmented reconstructions and the per-subject summary with LV volumes.

    ``generated`` is ``(len(heldout), len(frames), 1, H, W)``, clamped to the data range [0, 1] before the
    segmenter sees it. ``acquired`` ``(len(kept), len(frames), 1, H, W)`` is the sparse input the method saw
    (misregistered under ``input_shift_mm``): the LV volumes segment the dense stack a user would have,
    acquired slices plus generated ones, against the true labels. Slices of frames without true labels get
    NaN; the volumes need the subject's ED and ES frames among ``frames`` and labelled, else they are NaN.
    """
    n_held, n_frames, _, height, width = generated.shape
    per_slice = {key: np.full(n_held * n_frames, math.nan) for key in SLICE_SEGMENTATION_FIELDS}
    summary = dict.fromkeys(SUBJECT_SEGMENTATION_FIELDS, math.nan)
    labelled = set(labelled_frames(prepared))
    scored = [i for i, f in enumerate(frames) if f in labelled]
    if prepared.labels is None or not scored:
        return per_slice, summary
    images = generated.clamp(0.0, 1.0).flatten(0, 1).float()
    predicted = segmenter.predict(images).cpu().numpy().reshape(n_held, n_frames, height, width)
    true_held = prepared.labels[heldout][:, [frames[i] for i in scored]]
    metrics = segmentation_metrics(
        predicted[:, scored].reshape(-1, height, width),
        true_held.reshape(-1, height, width),
        prepared.spacing[:2],
    )
    mask = np.tile(np.isin(np.arange(n_frames), scored), n_held)
    for key in SLICE_SEGMENTATION_FIELDS:
        per_slice[key][mask] = metrics[key]
    aggregate = aggregate_segmentation(metrics)
    summary |= {key: aggregate[key] for key in SUBJECT_SEGMENTATION_FIELDS if key in aggregate}
    per_frame = [volume_dice(predicted[:, i], true_held[:, k]) for k, i in enumerate(scored)]
    summary |= {key: nan_mean([frame[key] for frame in per_frame]) for key in VOLUME_DICE_FIELDS}

    ed, es = prepared.ed_frame, prepared.es_frame
    if {ed, es} <= {frames[i] for i in scored}:
        columns = [frames.index(ed), frames.index(es)]
        kept_images = acquired[:, columns].reshape(-1, 1, height, width).float()
        kept_predicted = segmenter.predict(kept_images).cpu().numpy()
        volumes = stack_volume_errors(
            kept_predicted.reshape(len(kept), 2, height, width),
            predicted[:, columns],
            kept,
            heldout,
            prepared.labels[:, [ed, es]],
            prepared.spacing,
            ed=0,
            es=1,
        )
        summary |= {key: volumes[key] for key in VOLUME_FIELDS}
    return per_slice, summary
