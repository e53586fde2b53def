"""The autoregressive engine: schedule, batching, conditioning, exact copies, samples, padding."""

from __future__ import annotations

import pytest
import torch

from calid_lightning.inference.baselines import ImageLinear, linear_upsample
from calid_lightning.inference.interpolator import LatentBlend, SliceInterpolator, lerp, slerp
from calid_lightning.inference.progress import UpsampleProgress
from calid_lightning.inference.upsample import (
    EngineUpsampler,
    factor_positions,
    plan_levels,
    spacing_positions,
    upsample_stack,
)


def assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


class Recorder(ImageLinear):
    """Image-space lerp that records every interpolate call (below, above, r) and checks shapes."""

    def __init__(self, size_multiple: int = 1, noise: float = 0.0) -> None:
        self.size_multiple = size_multiple
        self.noise = noise
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.encoded_shapes: list[tuple[int, ...]] = []

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-1] % self.size_multiple == 0 and x.shape[-2] % self.size_multiple == 0
        self.encoded_shapes.append(tuple(x.shape))
        return x

    def interpolate(self, below, above, r, num_steps=None, generator=None, gap_mm=None):
        self.calls.append((below.clone(), above.clone(), r.clone()))
        out = lerp(below, above, r)
        if self.noise:
            out = out + self.noise * torch.randn(out.shape, generator=generator)
        return out


def position_stack(z: int, n: int = 1, h: int = 4, w: int = 5) -> torch.Tensor:
    """Slice j is constant j, so a representation's value tells which position it stands for."""
    return torch.arange(z, dtype=torch.float32).reshape(z, 1, 1, 1, 1).expand(z, n, 1, h, w).clone()


def random_stack(z: int = 4, n: int = 2, h: int = 6, w: int = 7, seed: int = 0) -> torch.Tensor:
    return torch.rand((z, n, 1, h, w), generator=torch.Generator().manual_seed(seed))


def call_positions(call: tuple[torch.Tensor, torch.Tensor, torch.Tensor], n: int) -> list[tuple]:
    """(below position, above position, r) of each gap in one call (items of a gap are consecutive)."""
    below, above, r = call
    return [
        (round(below[g].mean().item(), 4), round(above[g].mean().item(), 4), round(r[g].item(), 4))
        for g in range(0, below.shape[0], n)
    ]


def test_positions_helpers() -> None:
    assert factor_positions(3, 4) == [0, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 1.75, 2]
    assert len(factor_positions(10, 3)) == 28
    assert spacing_positions(3, 10.0, 4.0) == pytest.approx([0, 0.4, 0.8, 1.2, 1.6, 2.0])
    grid = spacing_positions(4, 10.0, 2.5)
    assert grid == factor_positions(4, 4) and all(isinstance(p, float) for p in grid)
    with pytest.raises(ValueError, match="spacing"):
        spacing_positions(3, 10.0, 0.0)


def test_linear_engine_is_analytic_linear_and_copies_acquired_bit_exact() -> None:
    stack = random_stack(z=4, n=2)
    result = upsample_stack(stack, factor_positions(4, 4), ImageLinear())
    assert result.dense.shape == (13, 2, 1, 6, 7) and result.std is None
    assert torch.equal(result.dense[::4], stack)
    expected = torch.stack(
        [
            (1 - (p - int(min(p, 2)))) * stack[int(min(p, 2))]
            + (p - int(min(p, 2))) * stack[int(min(p, 2)) + 1]
            for p in factor_positions(4, 4)
        ]
    )
    torch.testing.assert_close(result.dense, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(
        result.dense, linear_upsample(stack, factor_positions(4, 4)), atol=1e-6, rtol=0
    )


def test_bisection_levels_batched_autoregressive_with_right_r() -> None:
    fake, n = Recorder(), 3
    result = upsample_stack(position_stack(3, n), factor_positions(3, 4), fake, order="bisection")
    assert len(fake.calls) == 2, "one interpolate call per level"
    assert fake.calls[0][0].shape[0] == 2 * n, "all gaps and all items of a level in one batch"
    assert call_positions(fake.calls[0], n) == [(0, 1, 0.5), (1, 2, 0.5)]
    assert call_positions(fake.calls[1], n) == [(0, 0.5, 0.5), (0.5, 1, 0.5), (1, 1.5, 0.5), (1.5, 2, 0.5)]
    torch.testing.assert_close(result.dense[:, 0, 0, 0, 0], torch.tensor(factor_positions(3, 4)))


def test_sequential_order_generates_from_the_lower_slice_up() -> None:
    fake, n = Recorder(), 2
    upsample_stack(position_stack(3, n), factor_positions(3, 4), fake, order="sequential")
    got = [call_positions(c, n) for c in fake.calls]
    assert got == [
        [(0, 1, 0.25), (1, 2, 0.25)],
        [(0.25, 1, 0.3333), (1.25, 2, 0.3333)],
        [(0.5, 1, 0.5), (1.5, 2, 0.5)],
    ]


def test_factor_three_and_plan_shapes() -> None:
    levels = plan_levels(3, factor_positions(3, 3), "bisection")
    assert [[(round(s.z, 4), round(s.below, 4), round(s.above, 4)) for s in lvl] for lvl in levels] == [
        [(0.3333, 0.0, 1.0), (1.3333, 1.0, 2.0)],
        [(0.6667, 0.3333, 1.0), (1.6667, 1.3333, 2.0)],
    ]
    assert levels[1][0].r == pytest.approx(0.5)
    assert len(plan_levels(5, factor_positions(5, 8), "bisection")) == 3
    assert len(plan_levels(5, factor_positions(5, 8), "sequential")) == 7


def test_non_integer_spacing_grid_uses_every_acquired_slice() -> None:
    stack = random_stack(z=3, n=1)
    positions = spacing_positions(3, 10.0, 4.0)
    fake = Recorder()
    result = upsample_stack(stack, positions, fake)
    assert result.dense.shape[0] == 6
    assert torch.equal(result.dense[0], stack[0]) and torch.equal(result.dense[5], stack[2])
    torch.testing.assert_close(result.dense, linear_upsample(stack, positions), atol=1e-6, rtol=0)
    conditioned_on_slice_1 = any(
        torch.equal(c[0][:1], stack[1]) or torch.equal(c[1][:1], stack[1]) for c in fake.calls
    )
    assert conditioned_on_slice_1, (
        "acquired slice 1 is not on the output grid but must still condition its gaps"
    )


def test_samples_give_std_map_zero_when_deterministic_positive_when_stochastic() -> None:
    stack = random_stack(z=3, n=2)
    positions = factor_positions(3, 2)
    det = upsample_stack(stack, positions, ImageLinear(), samples=3)
    assert det.std is not None and det.std.shape == det.dense.shape and torch.count_nonzero(det.std) == 0
    sto = upsample_stack(stack, positions, Recorder(noise=0.1), samples=4, seed=3)
    assert torch.all(sto.std[1::2] > 0) and torch.count_nonzero(sto.std[::2]) == 0
    assert torch.equal(sto.dense[::2], stack)
    again = upsample_stack(stack, positions, Recorder(noise=0.1), samples=4, seed=3)
    other = upsample_stack(stack, positions, Recorder(noise=0.1), samples=4, seed=4)
    assert torch.equal(sto.dense, again.dense) and not torch.equal(sto.dense, other.dense)


def test_frames_are_independent_items() -> None:
    stack = random_stack(z=3, n=4)
    positions = factor_positions(3, 4)
    together = upsample_stack(stack, positions, ImageLinear()).dense
    for t in range(4):
        alone = upsample_stack(stack[:, t : t + 1], positions, ImageLinear()).dense
        torch.testing.assert_close(together[:, t : t + 1], alone, atol=0, rtol=0)


def test_padding_to_size_multiple_and_crop_back() -> None:
    stack = random_stack(z=3, n=2, h=10, w=13)
    fake = Recorder(size_multiple=8)
    result = upsample_stack(stack, factor_positions(3, 2), fake)
    assert fake.encoded_shapes and all(s[-2:] == (16, 16) for s in fake.encoded_shapes)
    assert result.dense.shape == (5, 2, 1, 10, 13)
    assert torch.equal(result.dense[::2], stack)
    torch.testing.assert_close(
        result.dense, linear_upsample(stack, factor_positions(3, 2)), atol=1e-6, rtol=0
    )


def test_cine_items_with_time_axis_and_max_batch_chunking() -> None:
    stack = torch.rand((3, 2, 1, 4, 6, 5), generator=torch.Generator().manual_seed(1))
    fake = Recorder(size_multiple=4)
    result = upsample_stack(stack, factor_positions(3, 2), fake, max_batch=3)
    assert result.dense.shape == (5, 2, 1, 4, 6, 5)
    assert [c[0].shape[0] for c in fake.calls] == [3, 1], "a 4-item level is split into chunks of max_batch"
    torch.testing.assert_close(
        result.dense, linear_upsample(stack, factor_positions(3, 2)), atol=1e-6, rtol=0
    )


def test_bad_inputs_are_rejected() -> None:
    stack = random_stack(z=3, n=1)
    with pytest.raises(ValueError, match="increasing"):
        upsample_stack(stack, [0.0, 0.5, 0.5, 1.0], ImageLinear())
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        upsample_stack(stack, [0.0, 2.5], ImageLinear())
    with pytest.raises(ValueError, match="at least 2"):
        upsample_stack(stack[:1], [0.0], ImageLinear())
    with pytest.raises(ValueError, match="order"):
        upsample_stack(stack, factor_positions(3, 2), ImageLinear(), order="random")


def test_latent_blend_adapter_and_uniform_wrapper() -> None:
    assert isinstance(ImageLinear(), SliceInterpolator)
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    half = slerp(a, b, torch.tensor([0.5]))
    torch.testing.assert_close(half.norm(), torch.tensor(1.5))
    torch.testing.assert_close(half[0, 0], half[0, 1])
    torch.testing.assert_close(slerp(a, b, torch.tensor([0.0])), a)
    stack = random_stack(z=3, n=1)
    blend = EngineUpsampler(LatentBlend(ImageLinear(), "lerp")).upsample(stack, 2)
    torch.testing.assert_close(blend, linear_upsample(stack, factor_positions(3, 2)), atol=1e-6, rtol=0)
    assert EngineUpsampler(LatentBlend(ImageLinear(), "slerp")).upsample(stack, 2).shape == (5, 1, 1, 6, 7)


class CountingProgress(UpsampleProgress):
    """A silent progress bar that records every advance and the phase it happened in."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs, enabled=False)
        self.advances: list[tuple[str, int]] = []

    def advance(self, units: int = 1) -> None:
        super().advance(units)
        self.advances.append((self._phase, units))


def test_progress_counts_generated_slices_times_frames_per_call_then_decode() -> None:
    """Total = samples x (generated slices x items x frames + a decode); each call advances; same result."""
    stack = torch.rand((3, 2, 1, 4, 8, 8), generator=torch.Generator().manual_seed(2))
    positions = factor_positions(3, 4)  # 6 generated slices in 2 levels (2 gaps, then 4)
    bar = CountingProgress(slices=6, frames=2 * 4, samples=2)
    fake = Recorder(noise=0.1)
    with_bar = upsample_stack(stack, positions, fake, samples=2, seed=5, max_batch=3, progress=bar)
    plain = upsample_stack(stack, positions, Recorder(noise=0.1), samples=2, seed=5, max_batch=3)
    assert bar.total == 2 * (6 * 2 * 4 + 1) and bar.n == bar.total
    # level 1: 2 gaps x 2 items = 4 -> chunks of 3 and 1; level 2: 4 gaps x 2 items = 8 -> 3, 3, 2
    per_sample = [("sampling", k * 4) for k in (3, 1, 3, 3, 2)] + [("decoding", 1)]
    assert bar.advances == per_sample * 2
    assert [c[0].shape[0] for c in fake.calls] == [3, 1, 3, 3, 2] * 2
    assert torch.equal(with_bar.dense, plain.dense) and torch.equal(with_bar.std, plain.std)


def test_progress_of_a_3d_stack_counts_slices() -> None:
    stack = random_stack(z=4, n=1)
    bar = CountingProgress(slices=9, frames=1)
    upsample_stack(stack, factor_positions(4, 4), ImageLinear(), progress=bar)
    assert bar.n == bar.total == 9 + 1
    assert sum(units for phase, units in bar.advances if phase == "sampling") == 9


@pytest.mark.parametrize(
    ("shape", "positions", "message"),
    [
        ((3, 1, 4, 5), [0.5], r"stack must be \(Z, N, 1, \[T,\] H, W\), got shape \(3, 1, 4, 5\)"),
        ((1, 1, 1, 4, 5), [0.0], "need at least 2 acquired slices to interpolate between, got 1"),
        ((2, 1, 1, 4, 5), [], "no target positions given"),
        ((2, 1, 1, 4, 5), [0.0, 0.5, 0.5], "target positions must be strictly increasing"),
        ((2, 1, 1, 4, 5), [-0.5, 0.5], r"target positions must lie in \[0, 1\], got -0.5..0.5"),
        ((2, 1, 1, 4, 5), [0.25, 0.5, 1.5], r"target positions must lie in \[0, 1\], got 0.25..1.5"),
    ],
    ids=["ndim", "one-slice", "no-positions", "not-increasing", "below-0", "above-last"],
)
def test_bad_stacks_and_positions_are_rejected_with_the_reason(shape, positions, message) -> None:
    with pytest.raises(ValueError, match=message):
        upsample_stack(torch.zeros(shape), positions, ImageLinear())


def test_two_slices_and_the_end_positions_are_valid() -> None:
    stack = random_stack(z=2, n=1)
    result = upsample_stack(stack, [0.0, 0.5, 1.0], ImageLinear())
    assert torch.equal(result.dense[0], stack[0]) and torch.equal(result.dense[2], stack[1])
    with pytest.raises(ValueError, match="samples must be >= 1, got 0"):
        upsample_stack(stack, [0.5], ImageLinear(), samples=0)
    with pytest.raises(ValueError, match="factor must be a positive integer, got 0"):
        factor_positions(3, 0)
    assert factor_positions(3, 1) == [0, 1, 2]


def test_only_acquired_positions_copy_the_stack() -> None:
    stack = random_stack(z=3, n=2)
    one = upsample_stack(stack, [0.0, 2.0], Recorder())
    assert torch.equal(one.dense, stack[[0, 2]]) and one.std is None and one.positions == [0.0, 2.0]
    two = upsample_stack(stack, [1.0], Recorder(), samples=2)
    assert torch.equal(two.dense, stack[[1]]) and torch.equal(two.std, torch.zeros_like(two.dense))
    assert upsample_stack(stack, [1.0], Recorder(), samples=3).std is not None


def test_seeds_steps_and_sample_statistics_by_hand() -> None:
    stack, positions = random_stack(z=3, n=2), factor_positions(3, 2)

    def run(**kwargs):
        return upsample_stack(stack, positions, Recorder(noise=0.1), **kwargs).dense

    torch.testing.assert_close(run(), run(seed=0), atol=0, rtol=0)  # the default seed is 0
    assert not torch.allclose(run(seed=0), run(seed=1))
    three = upsample_stack(stack, positions, Recorder(noise=0.1), seed=5, samples=3)
    runs = torch.stack([run(seed=s) for s in (5, 6, 7)])  # samples use seeds seed .. seed + samples - 1
    torch.testing.assert_close(three.dense, runs.mean(0), atol=1e-6, rtol=0)
    torch.testing.assert_close(three.std, runs.std(0), atol=1e-6, rtol=0)  # unbiased: / (samples - 1)
    assert three.positions == positions
    wide = upsample_stack(stack.double(), positions, Recorder(noise=0.1), seed=5, samples=3)
    assert wide.dense.dtype == wide.std.dtype == torch.float64  # the stack's dtype, not float32
    torch.testing.assert_close(wide.dense.float(), three.dense, atol=1e-6, rtol=0)

    class StepRecorder(Recorder):
        def interpolate(self, below, above, r, num_steps=None, generator=None, gap_mm=None):
            self.steps = [*getattr(self, "steps", []), num_steps]
            return super().interpolate(below, above, r)

    fake = StepRecorder()
    upsample_stack(stack, positions, fake, num_steps=7)
    assert fake.steps == [7]
    EngineUpsampler(fake, num_steps=3, seed=2).upsample(stack, 2)
    assert fake.steps == [7, 3]


def test_engine_upsampler_passes_order_seed_and_batch() -> None:
    stack = random_stack(z=3, n=2)
    engine = EngineUpsampler(Recorder(noise=0.1), order="sequential", seed=3, max_batch=1)
    expected = upsample_stack(
        stack, factor_positions(3, 4), Recorder(noise=0.1), "sequential", seed=3, max_batch=1
    )
    torch.testing.assert_close(engine.upsample(stack, 4), expected.dense, atol=0, rtol=0)
    fake = Recorder()
    EngineUpsampler(fake, order="sequential").upsample(position_stack(3, 1), 4)
    assert len(fake.calls) == 3, "sequential: three levels"


def test_pad_to_multiple_pads_each_axis_by_replicating_edges_split_evenly() -> None:
    from calid_lightning.inference.upsample import pad_to_multiple

    x = torch.arange(2 * 3 * 1 * 5 * 8, dtype=torch.float32).reshape(2, 3, 1, 5, 8)
    padded, (top, left) = pad_to_multiple(x, 4)  # rows 5 -> 8 (1 above, 2 below), columns already 8
    assert padded.shape == (2, 3, 1, 8, 8) and (top, left) == (1, 0)
    assert torch.equal(padded[..., 1:6, :], x)
    assert torch.equal(padded[..., 0, :], x[..., 0, :]) and torch.equal(padded[..., 7, :], x[..., 4, :])
    wide, (top, left) = pad_to_multiple(x[..., :4, :7], 4)  # columns 7 -> 8 only
    assert wide.shape == (2, 3, 1, 4, 8) and (top, left) == (0, 0)
    assert torch.equal(wide[..., :7], x[..., :4, :7]) and torch.equal(wide[..., 7], x[..., :4, 6])
    odd, (top, left) = pad_to_multiple(torch.zeros(1, 1, 3, 3), 8)
    assert odd.shape == (1, 1, 8, 8) and (top, left) == (2, 2)
    same, offsets = pad_to_multiple(x[..., :4, :], 4)
    assert same is not None and offsets == (0, 0) and torch.equal(same, x[..., :4, :])


def test_an_interpolator_without_size_multiple_is_not_padded() -> None:
    class Bare:
        """Encodes by identity, records the shapes, has no ``size_multiple``."""

        def __init__(self) -> None:
            self.encoded_shapes: list[tuple[int, ...]] = []

        def encode(self, x):
            self.encoded_shapes.append(tuple(x.shape))
            return x

        def decode(self, z):
            return z

        def interpolate(self, below, above, r, num_steps=None, generator=None, gap_mm=None):
            return lerp(below, above, r)

    fake = Bare()
    upsample_stack(random_stack(z=2, n=1, h=5, w=7), [0.5], fake)
    assert fake.encoded_shapes == [(2, 1, 5, 7)]


def test_own_progress_bar_only_when_asked_with_the_run_totals(capsys: pytest.CaptureFixture[str]) -> None:
    stack, positions = random_stack(z=3, n=2), factor_positions(3, 4)  # 6 generated slices, 2 items
    upsample_stack(stack, positions, Recorder(noise=0.1), samples=3)
    assert capsys.readouterr().err == ""  # no bar by default
    upsample_stack(stack, positions, Recorder(noise=0.1), samples=3, progress=True)
    err = capsys.readouterr().err
    # 3 samples x (6 slices x 2 items + 1 decode pass) = 39 units, the last phase in the description
    assert "upsample 6 slices x 2 frames (decoding)" in err and "39/39" in err


class GapRecorder(Recorder):
    """Records the ``gap_mm`` of every interpolate call as well."""

    def __init__(self) -> None:
        super().__init__()
        self.gaps: list[torch.Tensor | None] = []

    def interpolate(self, below, above, r, num_steps=None, generator=None, gap_mm=None):
        self.gaps.append(None if gap_mm is None else gap_mm.clone())
        return super().interpolate(below, above, r, num_steps, generator)


def test_each_call_gets_the_distance_in_mm_between_its_known_slices() -> None:
    """x4 bisection of 10 mm slices: the first level bridges 10 mm, the second 5 mm (one generated end)."""
    fake, n = GapRecorder(), 2
    upsample_stack(position_stack(3, n), factor_positions(3, 4), fake, slice_spacing_mm=10.0)
    assert [g.tolist() for g in fake.gaps] == [[10.0] * 2 * n, [5.0] * 4 * n]
    fake = GapRecorder()
    upsample_stack(
        position_stack(3, n), factor_positions(3, 3), fake, order="sequential", slice_spacing_mm=9.0
    )
    assert [g.tolist() for g in fake.gaps] == [[9.0] * 2 * n, [6.0] * 2 * n]  # 0..1, then 1/3..1
    fake = GapRecorder()
    upsample_stack(position_stack(3, n), factor_positions(3, 2), fake)
    assert fake.gaps == [None], "no slice spacing given: no gap"
    with pytest.raises(ValueError, match="slice_spacing_mm must be > 0"):
        upsample_stack(position_stack(3, n), factor_positions(3, 2), fake, slice_spacing_mm=0.0)
