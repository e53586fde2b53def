"""Image-space baselines (nearest, linear, cubic along z) against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from calid_lightning.inference.baselines import (
    IMAGE_BASELINES,
    ImageLinear,
    ImageNearest,
    cubic_upsample,
    linear_upsample,
    nearest_upsample,
)
from calid_lightning.inference.upsample import factor_positions, upsample_stack


def constant_stack(values: list[float]) -> torch.Tensor:
    """Slice j is a 2x2 image filled with values[j]; shape (Z, 1, 1, 2, 2)."""
    return torch.tensor(values, dtype=torch.float32).reshape(-1, 1, 1, 1, 1).expand(-1, 1, 1, 2, 2).clone()


def profile(dense: torch.Tensor) -> list[float]:
    assert torch.all(dense == dense[..., :1, :1]), "each slice of a constant stack stays constant"
    return [round(v, 6) for v in dense[:, 0, 0, 0, 0].tolist()]


def test_nearest_linear_cubic_hand_computed() -> None:
    stack, positions = constant_stack([0.0, 10.0, 40.0]), [0, 0.5, 0.75, 1, 1.25, 1.5, 2]
    assert profile(nearest_upsample(stack, positions)) == [0, 0, 10, 10, 10, 10, 40]
    assert profile(linear_upsample(stack, positions)) == [0, 5, 7.5, 10, 17.5, 25, 40]
    # three slices: the not-a-knot spline is the parabola 10 z^2 through (0, 0), (1, 10), (2, 40)
    assert profile(cubic_upsample(stack, positions)) == [0, 2.5, 5.625, 10, 15.625, 22.5, 40]


def test_cubic_reproduces_a_cubic_polynomial_from_all_slices() -> None:
    def f(z: float) -> float:
        return z**3 - 2 * z**2 + 3

    stack = constant_stack([f(z) for z in range(5)])
    positions = [0.5, 1.0, 2.25, 3.75]
    assert profile(cubic_upsample(stack, positions)) == pytest.approx([f(p) for p in positions], abs=1e-5)
    assert profile(linear_upsample(stack, [2.25]))[0] != pytest.approx(f(2.25), abs=1e-2)


@pytest.mark.parametrize("name", ["nearest", "linear", "cubic"])
def test_uniform_wrapper_shapes_and_exact_acquired_slices(name: str) -> None:
    stack = torch.rand((4, 3, 1, 2, 5, 6), generator=torch.Generator().manual_seed(0))
    dense = IMAGE_BASELINES[name].upsample(stack, 3)
    assert dense.shape == (10, 3, 1, 2, 5, 6) and dense.dtype == stack.dtype
    assert torch.equal(dense[::3], stack)
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        IMAGE_BASELINES[name].at(stack, [0.0, 3.5])


def test_pairwise_interpolators() -> None:
    below, above = torch.zeros(3, 1, 2, 2), torch.full((3, 1, 2, 2), 8.0)
    r = torch.tensor([0.25, 0.5, 0.75])
    assert ImageNearest().interpolate(below, above, r)[:, 0, 0, 0].tolist() == [0, 0, 8]
    assert ImageLinear().interpolate(below, above, r)[:, 0, 0, 0].tolist() == [2, 4, 6]
    x = torch.rand(2, 1, 3, 3)
    assert torch.equal(ImageLinear().decode(ImageLinear().encode(x)), x) and ImageLinear.size_multiple == 1


def test_pairwise_nearest_through_engine_matches_whole_stack_for_one_level() -> None:
    stack = torch.rand((4, 2, 1, 3, 3), generator=torch.Generator().manual_seed(1))
    positions = factor_positions(4, 2)
    engine = upsample_stack(stack, positions, ImageNearest()).dense
    assert torch.equal(engine, nearest_upsample(stack, positions))
