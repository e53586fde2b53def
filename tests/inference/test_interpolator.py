"""The conditional-mean wrapper: an average of the base's one-step estimates over noise draws."""

from __future__ import annotations

import pytest
import torch

from calid_lightning.inference.interpolator import ConditionalMean, lerp


class NoisyLerp:
    """A stochastic interpolator whose conditional mean is known: lerp plus unit noise from ``generator``."""

    size_multiple = 4

    def __init__(self) -> None:
        self.calls: list[tuple[int, int | None]] = []

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z / 2

    def interpolate(self, below, above, r, num_steps=None, generator=None):
        self.calls.append((below.shape[0], num_steps))
        return lerp(below, above, r) + torch.randn(below.shape, generator=generator)


def test_mean_of_draws_converges_to_the_conditional_mean_in_one_batched_call() -> None:
    base = NoisyLerp()
    below, above = torch.zeros(3, 2, 4, 4), torch.ones(3, 2, 4, 4)
    r = torch.tensor([0.25, 0.5, 0.75])
    mean = ConditionalMean(base, draws=400).interpolate(below, above, r, 50, torch.Generator().manual_seed(0))
    assert base.calls == [(3 * 400, 1)]  # one call, draws x items, one step whatever the caller asked
    expected = lerp(below, above, r)
    torch.testing.assert_close(mean, expected, atol=0.25, rtol=0)
    assert (mean - expected).abs().mean() < 0.06  # 1 / sqrt(400) noise per entry
    per_item = mean.mean(dim=(1, 2, 3))
    assert per_item[0] < per_item[1] < per_item[2]  # follows r item by item: no mixing across the batch


def test_one_draw_is_the_base_estimate_and_codec_is_the_base_codec() -> None:
    base, x = NoisyLerp(), torch.rand(2, 1, 8, 8)
    wrapped = ConditionalMean(base, draws=1, steps=3)
    assert wrapped.size_multiple == 4
    torch.testing.assert_close(wrapped.decode(wrapped.encode(x)), x)
    below, above, r = torch.zeros(2, 2, 4, 4), torch.ones(2, 2, 4, 4), torch.tensor([0.5, 0.5])
    got = wrapped.interpolate(below, above, r, generator=torch.Generator().manual_seed(1))
    want = NoisyLerp().interpolate(below, above, r, 3, torch.Generator().manual_seed(1))
    torch.testing.assert_close(got, want)
    assert base.calls == [(2, 3)]


@pytest.mark.parametrize("draws,steps", [(0, 1), (4, 0)])
def test_bad_draws_or_steps_are_refused(draws: int, steps: int) -> None:
    with pytest.raises(ValueError, match="draws >= 1 and steps >= 1"):
        ConditionalMean(NoisyLerp(), draws=draws, steps=steps)
