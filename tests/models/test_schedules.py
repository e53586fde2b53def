"""The learning-rate schedule: hand-computed factors, the decay's end point, refused settings."""

from __future__ import annotations

import math

import pytest
import torch

from calid_lightning.models.schedules import lr_factor, warmup_decay_scheduler


def test_warm_up_is_linear_then_constant() -> None:
    assert [lr_factor(s, 4, 100, "constant") for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_factor(10_000, 4, 100, "constant") == 1.0
    assert lr_factor(0, 0, 100, "constant") == 1.0  # no warm-up


def test_cosine_falls_from_one_to_a_tenth_at_max_steps_and_stays() -> None:
    warmup, total = 10, 110
    assert lr_factor(warmup - 1, warmup, total, "cosine") == 1.0
    halfway = warmup - 1 + 50  # 50 of the 100 decay steps done
    assert lr_factor(halfway, warmup, total, "cosine") == pytest.approx(0.1 + 0.9 * 0.5)
    quarter = warmup - 1 + 25
    assert lr_factor(quarter, warmup, total, "cosine") == pytest.approx(
        0.1 + 0.45 * (1 + math.cos(math.pi / 4))
    )
    assert lr_factor(total - 1, warmup, total, "cosine") == pytest.approx(0.1)
    assert lr_factor(5 * total, warmup, total, "cosine") == pytest.approx(0.1)
    factors = [lr_factor(s, warmup, total, "cosine") for s in range(warmup, total)]
    assert factors == sorted(factors, reverse=True)


def test_the_scheduler_sets_the_optimizer_rate_each_step() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    scheduler = warmup_decay_scheduler(optimizer, 2, 12, "cosine")
    rates = []
    for _ in range(12):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[:2] == [1.0, 2.0]
    assert rates[-1] == pytest.approx(0.2)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="lr_decay must be one of"):
        lr_factor(0, 0, 10, "linear")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match=r"trainer\.max_steps > 0"):
        warmup_decay_scheduler(optimizer, 0, -1, "cosine")
