"""models/ema.py: the EMA arithmetic against a hand computation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from calid_lightning.models.ema import EMA


def scalar_model(value: float) -> nn.Module:
    """One parameter holding ``value`` and one buffer (a BatchNorm's running stats)."""
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.BatchNorm1d(1))
    with torch.no_grad():
        model[0].weight.fill_(value)
    return model


def set_weight(model: nn.Module, value: float) -> None:
    with torch.no_grad():
        model[0].weight.fill_(value)


def shadow_weight(ema: EMA) -> float:
    return ema.module[0].weight.item()


@pytest.mark.parametrize("decay", [0.0, 0.5, 0.9, 0.999])
def test_warm_up_ramp_is_min_of_decay_and_one_plus_n_over_ten_plus_n(decay: float) -> None:
    ema = EMA(scalar_model(0.0), decay=decay)
    model = scalar_model(0.0)
    for n in range(6):
        assert ema.current_decay() == pytest.approx(min(decay, (1 + n) / (10 + n)))
        ema.update(model)
    assert int(ema.num_updates) == 6
    assert EMA(scalar_model(0.0), decay=decay, warmup=False).current_decay() == decay


def test_update_moves_the_shadow_by_one_minus_decay_towards_the_model() -> None:
    ema = EMA(scalar_model(1.0), decay=0.5, warmup=False)
    model = scalar_model(3.0)
    ema.update(model)  # 0.5 * 1 + 0.5 * 3
    assert shadow_weight(ema) == pytest.approx(2.0)
    set_weight(model, 0.0)
    ema.update(model)  # 0.5 * 2 + 0.5 * 0
    assert shadow_weight(ema) == pytest.approx(1.0)


def test_warm_up_weights_by_hand() -> None:
    decay = 0.95
    ema = EMA(scalar_model(0.0), decay=decay)
    model, expected = scalar_model(0.0), 0.0
    for n, value in enumerate([10.0, -4.0, 2.0, 8.0]):
        set_weight(model, value)
        d = min(decay, (1 + n) / (10 + n))  # 0.1, 0.1818, 0.25, 0.3077
        expected = d * expected + (1 - d) * value
        ema.update(model)
        assert shadow_weight(ema) == pytest.approx(expected, rel=1e-6)
    assert shadow_weight(ema) == pytest.approx(5.874126, rel=1e-5)  # 9, -1.6364, 1.0909, 5.8741 by hand


def test_buffers_are_copied_not_averaged() -> None:
    ema = EMA(scalar_model(0.0), decay=0.9, warmup=False)
    model = scalar_model(0.0)
    model[1].running_mean.fill_(5.0)
    model[1].num_batches_tracked.fill_(7)
    ema.update(model)
    assert ema.module[1].running_mean.item() == 5.0 and ema.module[1].num_batches_tracked.item() == 7


def test_the_shadow_is_a_frozen_eval_copy() -> None:
    model = scalar_model(2.0)
    ema = EMA(model, decay=0.9)
    set_weight(model, 9.0)  # a deep copy: later changes of the model do not leak in
    assert shadow_weight(ema) == 2.0
    assert not any(p.requires_grad for p in ema.module.parameters())
    assert not ema.train().module.training and not ema.module.training
    x = torch.ones(2, 1)
    torch.testing.assert_close(ema(x), ema.module(x))
    assert "num_updates" in ema.state_dict() and ema.num_updates.dtype == torch.long


@pytest.mark.parametrize("decay", [1.0, -0.1, 1.5])
def test_decay_outside_zero_one_is_rejected(decay: float) -> None:
    with pytest.raises(ValueError, match=rf"EMA decay must be in \[0, 1\), got {decay}"):
        EMA(scalar_model(0.0), decay=decay)
