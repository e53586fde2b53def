"""Autoregressive whole-volume upsampling: sparse stack in, dense stack out, through any SliceInterpolator.

The acquired slices are encoded once and copied (never re-decoded) into the output, so they stay bit-exact.
Each missing slice is generated from the two *known* slices that bracket it; once generated it joins the
known set and conditions the slices generated after it. The schedule (:func:`plan_levels`) depends only on
the positions, so it is computed up front: one level = one target per gap, and all targets of a level (every
gap, every item) go to the interpolator as one batch. Generated representations are decoded once, at the end.
Progress (:class:`~calid_lightning.inference.progress.UpsampleProgress`) counts generated images per
interpolator call, then the decode pass; it never changes what is computed.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from calid_lightning.inference.interpolator import SliceInterpolator
from calid_lightning.inference.progress import UpsampleProgress

Order = Literal["bisection", "sequential"]
_INTEGER_TOL = 1e-6


@dataclass(frozen=True)
class Step:
    """Generate the slice at ``z`` from the known slices at ``below`` and ``above`` (slice-index units)."""

    z: float
    below: float
    above: float

    @property
    def r(self) -> float:
        """Relative position of ``z`` between its two conditioning slices, in (0, 1)."""
        return (self.z - self.below) / (self.above - self.below)


@dataclass
class UpsampleResult:
    """The dense stack ``(Znew, N, ...)`` and, for several samples, the per-voxel standard deviation."""

    dense: Tensor
    std: Tensor | None
    positions: list[float]


def factor_positions(num_slices: int, factor: int) -> list[float]:
    """``(Z - 1) * K + 1`` positions: every acquired slice and ``K - 1`` evenly spaced ones in each gap."""
    if factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor}")
    return [j / factor for j in range((num_slices - 1) * factor + 1)]


def spacing_positions(num_slices: int, dz: float, target_dz: float) -> list[float]:
    """Positions of a grid with spacing ``target_dz`` mm starting at slice 0 (acquired spacing ``dz`` mm).

    The grid ends at or before the last acquired slice; values within 1e-6 of an integer are snapped to it,
    so an acquired slice on the grid is recognised as acquired.
    """
    if dz <= 0 or target_dz <= 0:
        raise ValueError(f"slice spacings must be positive, got dz={dz} target_dz={target_dz}")
    count = math.floor((num_slices - 1) * dz / target_dz + _INTEGER_TOL) + 1
    positions = [k * target_dz / dz for k in range(count)]
    return [float(round(p)) if abs(p - round(p)) < _INTEGER_TOL else p for p in positions]


def split_positions(positions: Sequence[float]) -> tuple[dict[int, int], dict[int, float]]:
    """Split output positions into ``{output index: acquired slice}`` and ``{output index: position}``."""
    acquired: dict[int, int] = {}
    generated: dict[int, float] = {}
    for i, p in enumerate(positions):
        if abs(p - round(p)) < _INTEGER_TOL:
            acquired[i] = round(p)
        else:
            generated[i] = float(p)
    return acquired, generated


def plan_levels(num_slices: int, positions: Sequence[float], order: Order = "bisection") -> list[list[Step]]:
    """The generation schedule: per level, one :class:`Step` for every gap that still has a missing target.

    ``bisection`` picks in each gap the target closest to the gap's midpoint (the lower one on a tie, up to
    float rounding);
    ``sequential`` picks the target closest to the gap's lower known slice.
    """
    if order not in ("bisection", "sequential"):
        raise ValueError(f"order must be 'bisection' or 'sequential', got {order!r}")
    _, generated = split_positions(positions)
    known = [float(j) for j in range(num_slices)]
    unknown = sorted(generated.values())
    levels: list[list[Step]] = []
    while unknown:
        level: list[Step] = []
        for a, b in itertools.pairwise(known):
            in_gap = unknown[bisect.bisect_right(unknown, a) : bisect.bisect_left(unknown, b)]
            if not in_gap:
                continue
            mid = (a + b) / 2
            z = min(in_gap, key=lambda p: (round(abs(p - mid), 9), p)) if order == "bisection" else in_gap[0]
            level.append(Step(z, a, b))
        for step in level:
            bisect.insort(known, step.z)
            unknown.remove(step.z)
        levels.append(level)
    return levels


def _check_inputs(stack: Tensor, positions: Sequence[float]) -> None:
    if stack.ndim < 5:
        raise ValueError(f"stack must be (Z, N, 1, [T,] H, W), got shape {tuple(stack.shape)}")
    z = stack.shape[0]
    if z < 2:
        raise ValueError(f"need at least 2 acquired slices to interpolate between, got {z}")
    if not positions:
        raise ValueError("no target positions given")
    if any(b <= a for a, b in itertools.pairwise(positions)):
        raise ValueError("target positions must be strictly increasing")
    if positions[0] < -_INTEGER_TOL or positions[-1] > z - 1 + _INTEGER_TOL:
        raise ValueError(f"target positions must lie in [0, {z - 1}], got {positions[0]}..{positions[-1]}")


def pad_to_multiple(x: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int]]:
    """Edge-pad the last two dims up to a multiple (split evenly); return the padded tensor and offsets."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if ph == 0 and pw == 0:
        return x, (0, 0)
    top, left = ph // 2, pw // 2
    flat = x.reshape(-1, 1, h, w)
    padded = F.pad(flat, (left, pw - left, top, ph - top), mode="replicate")
    return padded.reshape(*x.shape[:-2], h + ph, w + pw), (top, left)


def _chunked(fn: Callable[..., Tensor], tensors: Sequence[Tensor], max_batch: int) -> Tensor:
    """Apply ``fn`` to batch chunks of at most ``max_batch`` items and concatenate."""
    n = tensors[0].shape[0]
    return torch.cat([fn(*(t[i : i + max_batch] for t in tensors)) for i in range(0, n, max_batch)])


def upsample_stack(
    stack: Tensor,
    target_positions: Sequence[float],
    interpolator: SliceInterpolator,
    order: Order = "bisection",
    num_steps: int | None = None,
    seed: int = 0,
    samples: int = 1,
    progress: bool | UpsampleProgress = False,
    max_batch: int = 64,
    device: torch.device | str | None = None,
    slice_spacing_mm: float | None = None,
) -> UpsampleResult:
    """Upsample ``stack`` ``(Z, N, 1, [T,] H, W)`` in [0, 1] to the slices at ``target_positions``.

    ``N`` holds independent items (e.g. the frames of a cine, upsampled frame by frame). Positions are in
    acquired-slice-index units, strictly increasing; integer ones are the acquired slices, copied bit-exactly.
    ``samples > 1`` runs with seeds ``seed .. seed + samples - 1`` and returns the mean and the per-voxel
    (unbiased) standard deviation. The interpolator runs on ``device`` (default: the stack's) and gets a CPU
    ``torch.Generator`` (draw on the CPU, then move: a seed gives the same result on CPU and GPU); the result
    is on the stack's device. Deterministic for a fixed seed and ``max_batch``.

    ``progress=True`` shows a bar of its own; an :class:`UpsampleProgress` (made by a caller that also
    counts its file writes) is advanced by :meth:`UpsampleProgress.engine_units` and left open.

    ``slice_spacing_mm`` (the acquired slices' spacing) gives each call the distance in mm between its two
    known slices (``gap_mm``), which a gap-conditioned CaLID needs; without it ``gap_mm`` is None.
    """
    positions = [float(p) for p in target_positions]
    _check_inputs(stack, positions)
    if slice_spacing_mm is not None and not slice_spacing_mm > 0:
        raise ValueError(f"slice_spacing_mm must be > 0, got {slice_spacing_mm}")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    device = torch.device(device) if device is not None else stack.device
    z_count, n_items = stack.shape[:2]
    h, w = stack.shape[-2:]
    acquired, generated = split_positions(positions)
    plan = plan_levels(z_count, positions, order)
    dense = torch.empty((len(positions), *stack.shape[1:]), dtype=stack.dtype, device=stack.device)
    for i, j in acquired.items():
        dense[i] = stack[j]
    if not generated:
        return UpsampleResult(dense, torch.zeros_like(dense) if samples > 1 else None, positions)

    frames = stack.shape[3] if stack.ndim == 6 else 1
    own_bar = UpsampleProgress(len(generated), n_items * frames, samples, enabled=progress is True)
    bar = progress if isinstance(progress, UpsampleProgress) else own_bar
    multiple = int(getattr(interpolator, "size_multiple", 1))
    needed = sorted({int(p) for level in plan for s in level for p in (s.below, s.above) if p == int(p)})
    with own_bar, torch.no_grad():
        bar.phase("encoding")
        images, (top, left) = pad_to_multiple(stack[needed].to(device), multiple)
        reps = _chunked(interpolator.encode, [images.flatten(0, 1)], max_batch)
        reps = reps.reshape(len(needed), n_items, *reps.shape[1:])
        known = {float(j): reps[k] for k, j in enumerate(needed)}
        out_index = sorted(generated)
        mean = m2 = None
        for s in range(samples):
            generator = torch.Generator().manual_seed(seed + s)
            bar.phase("sampling")
            made = _run_plan(
                plan,
                known,
                interpolator,
                num_steps,
                generator,
                max_batch,
                n_items,
                bar,
                frames,
                slice_spacing_mm,
            )
            flat = torch.cat([made[generated[i]] for i in out_index])
            bar.phase("decoding")
            images = _chunked(interpolator.decode, [flat], max_batch)
            bar.advance()
            images = images[..., top : top + h, left : left + w].reshape(
                len(out_index), n_items, *stack.shape[2:]
            )
            images = images.to(device=stack.device, dtype=torch.float32)
            if mean is None:
                mean, m2 = images, torch.zeros_like(images)
            else:
                delta = images - mean
                mean = mean + delta / (s + 1)
                m2 = m2 + delta * (images - mean)
    dense[out_index] = mean.to(stack.dtype)
    std = None
    if samples > 1:
        std = torch.zeros_like(dense)
        std[out_index] = (m2 / (samples - 1)).sqrt().to(stack.dtype)
    return UpsampleResult(dense, std, positions)


def _run_plan(
    plan: list[list[Step]],
    known: dict[float, Tensor],
    interpolator: SliceInterpolator,
    num_steps: int | None,
    generator: torch.Generator,
    max_batch: int,
    n_items: int,
    bar: UpsampleProgress,
    frames: int,
    slice_spacing_mm: float | None,
) -> dict[float, Tensor]:
    """Run the schedule once; return the generated representations by position.

    ``bar`` advances by ``frames`` per generated item after every interpolator call.
    """
    reps = dict(known)
    made: dict[float, Tensor] = {}

    def interpolate(below: Tensor, above: Tensor, r: Tensor, *gap_mm: Tensor) -> Tensor:
        out = interpolator.interpolate(
            below, above, r, num_steps=num_steps, generator=generator, gap_mm=gap_mm[0] if gap_mm else None
        )
        bar.advance(below.shape[0] * frames)
        return out

    for level in plan:
        below = torch.cat([reps[s.below] for s in level])
        above = torch.cat([reps[s.above] for s in level])
        r = torch.tensor([s.r for s in level], device=below.device).repeat_interleave(n_items)
        tensors = [below, above, r]
        if slice_spacing_mm is not None:  # the distance between each step's known slices
            gaps = [(s.above - s.below) * slice_spacing_mm for s in level]
            tensors.append(torch.tensor(gaps, device=below.device).repeat_interleave(n_items))
        out = _chunked(interpolate, tensors, max_batch)
        for k, step in enumerate(level):
            reps[step.z] = made[step.z] = out[k * n_items : (k + 1) * n_items]
    return made


@dataclass
class EngineUpsampler:
    """A SliceInterpolator driven by the engine, with the call shapes of the image baselines."""

    interpolator: SliceInterpolator
    order: Order = "bisection"
    num_steps: int | None = None
    seed: int = 0
    max_batch: int = 64
    device: torch.device | str | None = None

    def at(self, stack: Tensor, positions: Sequence[float], slice_spacing_mm: float | None = None) -> Tensor:
        """Slices at ``positions`` of a ``(Z, N, 1, [T,] H, W)`` stack."""
        return upsample_stack(
            stack,
            positions,
            self.interpolator,
            order=self.order,
            num_steps=self.num_steps,
            seed=self.seed,
            max_batch=self.max_batch,
            device=self.device,
            slice_spacing_mm=slice_spacing_mm,
        ).dense

    def upsample(self, stack: Tensor, factor: int, slice_spacing_mm: float | None = None) -> Tensor:
        """The ``(Z - 1) * factor + 1`` slices of a ``factor``-times denser stack."""
        return self.at(stack, factor_positions(int(stack.shape[0]), factor), slice_spacing_mm)
