"""The wrappers around a base interpolator: the conditional mean over noise draws, and detail transfer."""

from __future__ import annotations

import pytest
import torch

from calid_lightning.inference.baselines import ImageLinear
from calid_lightning.inference.interpolator import (
    DETAIL_WEIGHT,
    ConditionalMean,
    DetailTransfer,
    calid_estimate,
    lerp,
)
from calid_lightning.inference.upsample import factor_positions, upsample_stack


class NoisyLerp:
    """A stochastic interpolator whose conditional mean is known: lerp plus unit noise from ``generator``."""

    size_multiple = 4

    def __init__(self) -> None:
        self.calls: list[tuple[int, int | None]] = []

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z / 2

    def interpolate(self, below, above, r, num_steps=None, generator=None, gap_mm=None):
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


class PoolCodec:
    """A lossy *linear* codec: 2x2 average pooling down, nearest-neighbour up (loses all detail finer
    than 2 pixels), with latent lerp as its interpolator; counts the batch sizes it sees."""

    size_multiple = 2

    def __init__(self) -> None:
        self.encoded: list[int] = []
        self.decoded: list[int] = []

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self.encoded.append(x.shape[0])
        return 3 * torch.nn.functional.avg_pool2d(x.flatten(0, -3), 2).reshape(
            *x.shape[:-2], -1, x.shape[-1] // 2
        )

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        self.decoded.append(z.shape[0])
        return z.repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2) / 3

    def interpolate(self, below, above, r, num_steps=None, generator=None, gap_mm=None):
        return lerp(below, above, r)


def _slices(n: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    below, above = torch.rand(n, 1, 8, 8, generator=g) * 0.8, torch.rand(n, 1, 8, 8, generator=g) * 0.8
    return below, above, torch.linspace(0.2, 0.8, n)


def _detail(method: DetailTransfer, below, above, r, **kwargs) -> torch.Tensor:
    """One slice through the method's own representation: encode both neighbours, interpolate, decode."""
    z_below, z_above = method.encode(torch.cat([below, above])).chunk(2)
    return method.decode(method.interpolate(z_below, z_above, r, **kwargs))


def test_detail_transfer_over_a_linear_codec_and_latent_lerp_is_image_linear_interpolation() -> None:
    codec = PoolCodec()
    below, above, r = _slices()
    got = _detail(DetailTransfer(codec, weight=1.0), below, above, r)
    torch.testing.assert_close(got, lerp(below, above, r))
    assert codec.encoded == [6] and codec.decoded == [6, 3]  # the neighbours' residuals, then the estimate
    plain = codec.decode(codec.interpolate(codec.encode(below), codec.encode(above), r))
    assert (plain - lerp(below, above, r)).abs().max() > 0.1  # the codec alone loses the detail


@pytest.mark.parametrize("weight", [0.5, 1.0])
def test_detail_transfer_through_the_engine_adds_the_acquired_residuals_linear_field(weight: float) -> None:
    """x4 is two bisection levels; the second conditions on generated slices, whose residual must stay on
    the acquired slices' linear field (re-encoding a generated image shrinks it by ``weight`` again). Over
    the linear codec the result is ``(1 - w) linear(D(E(x))) + w linear(x)``: at weight 1, image linear."""
    g = torch.Generator().manual_seed(5)
    stack = torch.rand(3, 2, 1, 8, 8, generator=g) * 0.8
    codec = PoolCodec()
    positions = factor_positions(3, 4)
    got = upsample_stack(stack, positions, DetailTransfer(codec, weight=weight)).dense
    assert codec.encoded == [6]  # the acquired slices, once
    recon = codec.decode(codec.encode(stack.flatten(0, 1))).reshape(stack.shape)

    def linear(x: torch.Tensor) -> torch.Tensor:
        return upsample_stack(x, positions, ImageLinear()).dense

    want = ((1 - weight) * linear(recon) + weight * linear(stack)).clamp(0, 1)
    torch.testing.assert_close(got[1:4], want[1:4])  # the generated slices of the first gap
    torch.testing.assert_close(got[5:8], want[5:8])


def test_detail_transfer_keeps_the_inner_latent_chain() -> None:
    """Weight 0 is the plain estimate to the bit, through two levels of generated neighbours."""
    stack = torch.rand(4, 3, 1, 8, 8, generator=torch.Generator().manual_seed(6))
    positions = factor_positions(4, 4)
    inner = ConditionalMean(NoisyLerp(), draws=2)
    got = upsample_stack(stack, positions, DetailTransfer(inner, weight=0.0), seed=3).dense
    want = upsample_stack(stack, positions, inner, seed=3).dense
    torch.testing.assert_close(got[1:-1], want[1:-1].clamp(0, 1))


def test_detail_weight_scales_the_blended_residual_and_zero_is_the_decoded_estimate() -> None:
    codec = PoolCodec()
    below, above, r = _slices(seed=1)
    decoded = codec.decode(codec.interpolate(codec.encode(below), codec.encode(above), r))
    residual = lerp(below - codec.decode(codec.encode(below)), above - codec.decode(codec.encode(above)), r)
    for weight in (0.0, 0.5, 0.75):
        got = _detail(DetailTransfer(codec, weight=weight), below, above, r)
        torch.testing.assert_close(got, (decoded + weight * residual).clamp(0, 1))
    assert DetailTransfer(codec).weight == DETAIL_WEIGHT
    assert DetailTransfer(codec).size_multiple == 2


def test_detail_transfer_over_a_lossless_codec_is_the_inner_method() -> None:
    below, above, r = _slices(seed=2)
    inner = ConditionalMean(NoisyLerp(), draws=3)
    got = _detail(
        DetailTransfer(inner, weight=1.0), below, above, r, generator=torch.Generator().manual_seed(4)
    )
    want = inner.decode(
        inner.interpolate(2 * below, 2 * above, r, generator=torch.Generator().manual_seed(4))
    )
    torch.testing.assert_close(got, want.clamp(0, 1))


def test_detail_transfer_is_mirror_symmetric_and_clamped_to_the_data_range() -> None:
    codec = PoolCodec()
    below, above, r = _slices(seed=3)
    method = DetailTransfer(codec, weight=4.0)
    forward = _detail(method, below, above, r)
    torch.testing.assert_close(_detail(method, above, below, 1 - r), forward)
    torch.testing.assert_close(_detail(method, below.flip(-1), above.flip(-1), r), forward.flip(-1))
    assert forward.min() == 0.0 and forward.max() == 1.0  # a large weight overshoots; the result is clamped


def test_detail_transfer_refuses_to_decode_before_it_has_encoded() -> None:
    with pytest.raises(RuntimeError, match="encode must see a batch"):
        DetailTransfer(PoolCodec()).decode(torch.zeros(1, 80))


@pytest.mark.parametrize("weight", [-0.1, float("nan")])
def test_bad_detail_weight_is_refused(weight: float) -> None:
    with pytest.raises(ValueError, match="weight >= 0"):
        DetailTransfer(PoolCodec(), weight=weight)


def test_calid_estimate_composes_sample_mean_and_detail() -> None:
    """The one composition of upsample and the table: the model, its mean of draws, the residual on top."""
    below, above, r = _slices(n=2, seed=2)
    model = NoisyLerp()
    assert calid_estimate(model, mean=False) is model

    def run(interpolator) -> torch.Tensor:
        z_below, z_above = interpolator.encode(torch.cat([below, above])).chunk(2)
        z = interpolator.interpolate(z_below, z_above, r, generator=torch.Generator().manual_seed(3))
        return interpolator.decode(z)

    torch.testing.assert_close(run(calid_estimate(model, True, 8)), run(ConditionalMean(model, draws=8)))
    detail = calid_estimate(model, True, 8, detail_weight=0.5)
    torch.testing.assert_close(run(detail), run(DetailTransfer(ConditionalMean(model, draws=8), 0.5)))
    sample_detail = calid_estimate(model, False, detail_weight=0.0)
    assert isinstance(sample_detail, DetailTransfer) and sample_detail.inner is model
