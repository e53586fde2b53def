"""Downstream segmentation metrics: per-class Dice and HD95 (mm) per slice, LV volumes and ejection fraction.

Labels use the internal convention (0 background, 1 LV cavity, 2 myocardium, 3 RV cavity); slices are
``(N, H, W)`` with ``H, W`` the image's ``X, Y`` axes, so ``spacing = (dx, dy)`` is the pixel size along
``(H, W)`` in mm. Dice comes from :func:`~calid_lightning.metrics.dice.dice_per_class` (MONAI), HD95 from
MONAI ``HausdorffDistanceMetric`` (symmetric, 95th percentile of the boundary-to-boundary distances of each
direction, the larger of the two).

Empty classes, per slice and class (MONAI alone would give Dice 1 or NaN and HD95 NaN or inf):

- absent in both prediction and truth: Dice and HD95 are NaN (nothing to score);
- present in only one of them: Dice is 0 and HD95 is the slice diagonal in mm (the largest distance the
  slice can hold: a finite worst case, so a missed structure never improves a mean).

:func:`aggregate_segmentation` averages each class over the slices whose *truth* holds the class only; a
false-positive blob on a slice without the class is not counted in the aggregate. :func:`volume_dice` is the
other reading, the cardiac challenges' (ACDC, M&Ms): one Dice per class over a whole stack's voxels, where
such a blob counts and a slice weighs by its voxels.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import HausdorffDistanceMetric
from monai.networks.utils import one_hot

from calid_lightning.data.subject import CLASS_KEYS, LV_CAVITY, NUM_CLASSES
from calid_lightning.metrics.dice import dice_per_class


def _as_labels(array: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    labels = torch.as_tensor(np.asarray(array) if not isinstance(array, torch.Tensor) else array)
    if labels.ndim != 3:
        raise ValueError(f"{name} must be (N, H, W) label slices, got shape {tuple(labels.shape)}")
    if labels.is_floating_point() and not torch.equal(labels, labels.round()):
        raise ValueError(f"{name} must hold integer labels 0..3, got non-integer values")
    labels = labels.long().cpu()
    if labels.numel() and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise ValueError(f"{name} holds labels outside 0..3: {sorted(torch.unique(labels).tolist())}")
    return labels


def _label_pair(
    pred: np.ndarray | torch.Tensor, truth: np.ndarray | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``pred`` and ``truth`` as checked label slices ``(N, H, W)`` of the same shape."""
    pred_t, truth_t = _as_labels(pred, "pred"), _as_labels(truth, "truth")
    if pred_t.shape != truth_t.shape:
        raise ValueError(f"pred {tuple(pred_t.shape)} and truth {tuple(truth_t.shape)} shapes differ")
    return pred_t, truth_t


def segmentation_metrics(
    pred: np.ndarray | torch.Tensor,
    truth: np.ndarray | torch.Tensor,
    spacing: Sequence[float],
) -> dict[str, np.ndarray]:
    """Per-slice, per-class Dice and HD95 (mm) of predicted label slices against the truth.

    Args:
        pred: predicted labels ``(N, H, W)``, values 0..3.
        truth: true labels ``(N, H, W)``.
        spacing: ``(dx, dy)`` pixel size in mm along ``(H, W)``.

    Returns ``dice_<c>``, ``hd95_<c>`` (float ``(N,)``, NaN where the class is absent in both) and
    ``present_<c>`` (bool ``(N,)``: the truth holds the class) for ``c`` in ``lv``, ``myo``, ``rv``.
    """
    pred_t, truth_t = _label_pair(pred, truth)
    if len(spacing) != 2 or min(spacing) <= 0:
        raise ValueError(f"spacing must be (dx, dy) in mm, both > 0, got {tuple(spacing)}")
    spacing = (float(spacing[0]), float(spacing[1]))
    h, w = truth_t.shape[1:]
    diagonal = math.hypot(h * spacing[0], w * spacing[1])
    pred_1h = one_hot(pred_t[:, None], NUM_CLASSES, dim=1)
    truth_1h = one_hot(truth_t[:, None], NUM_CLASSES, dim=1)
    dice = dice_per_class(pred_t, truth_t, NUM_CLASSES)
    hd95 = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")
    out: dict[str, np.ndarray] = {}
    for label, key in CLASS_KEYS.items():
        in_pred = pred_1h[:, label].flatten(1).any(1).numpy()
        in_truth = truth_1h[:, label].flatten(1).any(1).numpy()
        both, either = in_pred & in_truth, in_pred | in_truth
        class_dice = dice[:, label].numpy().astype(np.float64)
        class_hd = np.where(either, diagonal, np.nan)
        if both.any():
            index = torch.from_numpy(np.flatnonzero(both))
            channel = slice(label, label + 1)
            with warnings.catch_warnings():  # MONAI 1.6 warns about its own use of a deprecated argument
                warnings.filterwarnings("ignore", ".*always_return_as_numpy", FutureWarning)
                values = hd95(pred_1h[index, channel], truth_1h[index, channel], spacing=spacing)
            class_hd[both] = values[:, 0].numpy()
        out[f"dice_{key}"], out[f"hd95_{key}"], out[f"present_{key}"] = class_dice, class_hd, in_truth
    return out


def volume_dice(pred: np.ndarray | torch.Tensor, truth: np.ndarray | torch.Tensor) -> dict[str, float]:
    """Dice per class of two label stacks ``(Z, H, W)`` with their voxels pooled: ``dice3d_<c>`` per class.

    Every slice counts, including those whose truth lacks the class (a false positive there lowers the Dice)
    and each in proportion to its voxels. NaN where neither stack holds the class. The slices are stacked into
    one tall map for :func:`~calid_lightning.metrics.dice.dice_per_class`: Dice only counts voxels.
    """
    pred_t, truth_t = _label_pair(pred, truth)
    width = truth_t.shape[-1]
    dice = dice_per_class(pred_t.reshape(1, -1, width), truth_t.reshape(1, -1, width), NUM_CLASSES)[0]
    return {f"dice3d_{key}": float(dice[label]) for label, key in CLASS_KEYS.items()}


def aggregate_segmentation(per_slice: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean Dice and HD95 per class over the slices whose truth holds the class, and their class means.

    Takes the output of :func:`segmentation_metrics` (or several concatenated along the slices). A class no
    truth slice holds gives NaN; ``dice_mean`` / ``hd95_mean`` average the classes that are not NaN.
    Also returns ``slices_<c>``, the number of slices each class mean is over.
    """
    summary: dict[str, float] = {}
    for key in CLASS_KEYS.values():
        present = np.asarray(per_slice[f"present_{key}"], dtype=bool)
        summary[f"slices_{key}"] = float(present.sum())
        for metric in ("dice", "hd95"):
            values = np.asarray(per_slice[f"{metric}_{key}"], dtype=np.float64)[present]
            summary[f"{metric}_{key}"] = float(values.mean()) if values.size else math.nan
    for metric in ("dice", "hd95"):
        values = [summary[f"{metric}_{key}"] for key in CLASS_KEYS.values()]
        finite = [v for v in values if not math.isnan(v)]
        summary[f"{metric}_mean"] = float(np.mean(finite)) if finite else math.nan
    return summary


def lv_volumes(
    labels: np.ndarray | torch.Tensor, spacing: Sequence[float], ed: int, es: int
) -> tuple[float, float, float]:
    """LV end-diastolic and end-systolic cavity volumes (mL) and ejection fraction (%) of a label cine.

    ``labels`` is ``(Z, T, H, W)`` (the prepared-subject layout), ``spacing`` ``(dx, dy, dz)`` in mm with
    ``dz`` the slice spacing of that stack, ``ed`` / ``es`` 0-based frame indices. The volume is the count of
    LV cavity voxels times the voxel volume (papillary muscles inside the cavity count as cavity when
    labelled so). EF = 100 (EDV - ESV) / EDV; NaN when EDV is 0.
    """
    array = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if array.ndim != 4:
        raise ValueError(f"labels must be (Z, T, H, W), got shape {array.shape}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be (dx, dy, dz) in mm, all > 0, got {tuple(spacing)}")
    frames = array.shape[1]
    for name, frame in (("ed", ed), ("es", es)):
        if not 0 <= frame < frames:
            raise ValueError(f"{name} frame {frame} is out of range 0..{frames - 1}")
    voxel_ml = float(np.prod(spacing)) / 1000.0
    edv = float((array[:, ed] == LV_CAVITY).sum()) * voxel_ml
    esv = float((array[:, es] == LV_CAVITY).sum()) * voxel_ml
    ef = 100.0 * (edv - esv) / edv if edv > 0 else math.nan
    return edv, esv, ef


def volume_errors(
    pred: np.ndarray | torch.Tensor,
    truth: np.ndarray | torch.Tensor,
    spacing: Sequence[float],
    ed: int,
    es: int,
) -> dict[str, float]:
    """Signed errors (prediction - truth) of EDV, ESV (mL) and EF (percentage points), with both values.

    Arguments as :func:`lv_volumes`; ``pred`` and ``truth`` are ``(Z, T, H, W)`` label cines of one subject.
    """
    p_edv, p_esv, p_ef = lv_volumes(pred, spacing, ed, es)
    t_edv, t_esv, t_ef = lv_volumes(truth, spacing, ed, es)
    return {
        "edv_ml": p_edv,
        "esv_ml": p_esv,
        "ef_percent": p_ef,
        "true_edv_ml": t_edv,
        "true_esv_ml": t_esv,
        "true_ef_percent": t_ef,
        "edv_error_ml": p_edv - t_edv,
        "esv_error_ml": p_esv - t_esv,
        "ef_error": p_ef - t_ef,
    }


def _as_numpy(array: np.ndarray | torch.Tensor) -> np.ndarray:
    return array.cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)


def stack_volume_errors(
    kept_labels: np.ndarray | torch.Tensor,
    heldout_labels: np.ndarray | torch.Tensor,
    kept: Sequence[int],
    heldout: Sequence[int],
    truth: np.ndarray | torch.Tensor,
    spacing: Sequence[float],
    ed: int,
    es: int,
) -> dict[str, float]:
    """Volume errors of a reconstructed stack against the truth over the same slices, plus ``abs_ef_error``.

    The predicted stack interleaves, by slice index, ``kept_labels`` ``(K, T, H, W)`` (labels at the
    acquired slices ``kept``) and ``heldout_labels`` ``(M, T, H, W)`` (at the reconstructed slices
    ``heldout``); together they must fill every slice from ``min(kept)`` to ``max(kept)``, the range a
    reconstruction covers. ``truth`` is the ``(Z, T, H, W)`` label cine of the whole stack (same frames),
    cut to that range. ``spacing``, ``ed`` and ``es`` as :func:`volume_errors`. Raises ``ValueError``
    when the slices leave a gap or overlap.
    """
    kept_a, held_a = np.asarray(kept, dtype=np.int64), np.asarray(heldout, dtype=np.int64)
    kept_l, held_l, true = (_as_numpy(x) for x in (kept_labels, heldout_labels, truth))
    if kept_l.shape[0] != kept_a.size or held_l.shape[0] != held_a.size:
        raise ValueError(
            f"labels for {kept_l.shape[0]} kept / {held_l.shape[0]} held-out slices, "
            f"but {kept_a.size} / {held_a.size} slice indices"
        )
    z = np.concatenate([kept_a, held_a])
    first, last = int(kept_a.min()), int(kept_a.max())
    if not np.array_equal(np.sort(z), np.arange(first, last + 1)):
        raise ValueError(
            f"kept {kept_a.tolist()} and held-out {held_a.tolist()} slices must fill "
            f"{first}..{last} exactly once"
        )
    pred = np.concatenate([kept_l, held_l])[np.argsort(z)]
    errors = volume_errors(pred, true[first : last + 1], spacing, ed, es)
    return errors | {"abs_ef_error": abs(errors["ef_error"])}
