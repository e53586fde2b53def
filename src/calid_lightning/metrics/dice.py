"""Dice of label maps per slice and class: the one Dice of the project.

The segmenter's validation (``models/segmenter.py``) and the evaluation tables
(``evaluation/segmentation.py``) both call :func:`dice_per_class`; they differ only in how a class the truth
lacks is scored (``ignore_empty_truth``).
"""

from __future__ import annotations

import torch
from monai.metrics import compute_dice
from monai.networks.utils import one_hot
from torch import Tensor


def dice_per_class(pred: Tensor, truth: Tensor, num_classes: int, ignore_empty_truth: bool = False) -> Tensor:
    """Dice ``2 |P & T| / (|P| + |T|)`` of label maps ``(N, H, W)`` per slice and class: ``(N, num_classes)``.

    A class absent in both ``pred`` and ``truth`` is NaN (nothing to score); one present in only one of them
    scores 0, so a false positive counts. With ``ignore_empty_truth`` every class the truth lacks is NaN
    (MONAI's ``ignore_empty``). Computed by MONAI ``compute_dice`` on the one-hot maps (float32).
    """
    pred_1h = one_hot(pred[:, None], num_classes, dim=1)
    truth_1h = one_hot(truth[:, None], num_classes, dim=1)
    dice = compute_dice(pred_1h, truth_1h, include_background=True, ignore_empty=ignore_empty_truth)
    either = pred_1h.flatten(2).any(2) | truth_1h.flatten(2).any(2)
    return torch.where(either, dice, torch.full_like(dice, float("nan")))
