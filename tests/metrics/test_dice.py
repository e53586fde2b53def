"""metrics/dice.py: the one Dice, against counts done by hand."""

from __future__ import annotations

import math

import pytest
import torch

from calid_lightning.metrics.dice import dice_per_class


def test_dice_per_class_is_twice_the_overlap_over_the_sizes() -> None:
    truth = torch.zeros(1, 4, 4, dtype=torch.long)
    truth[0, :2, :2] = 1  # 4 pixels of class 1
    pred = torch.zeros_like(truth)
    pred[0, :2, :1] = 1  # 2 of them found
    pred[0, 3, 3] = 2  # a false positive of class 2, which the truth lacks
    dice = dice_per_class(pred, truth, 4)
    assert dice.shape == (1, 4)
    assert dice[0, 1].item() == pytest.approx(2 * 2 / (2 + 4), rel=1e-6)  # float32
    assert dice[0, 2].item() == 0.0  # present in only one map: scores 0
    assert math.isnan(dice[0, 3].item())  # absent in both: nothing to score
    assert dice[0, 0].item() == pytest.approx(2 * 11 / (12 + 13), rel=1e-6)  # background: 12, 13, 11 shared


def test_ignore_empty_truth_leaves_false_positives_unscored() -> None:
    truth = torch.zeros(2, 4, 4, dtype=torch.long)
    truth[0, 1:3, 1:3] = 3
    pred = truth.clone()
    pred[1, 0, 0] = 3  # slice 1: the truth has no class 3
    dice = dice_per_class(pred, truth, 4, ignore_empty_truth=True)
    assert dice[0, 3].item() == 1.0 and math.isnan(dice[1, 3].item())
    assert dice_per_class(pred, truth, 4)[1, 3].item() == 0.0
