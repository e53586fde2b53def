"""The interface every pairwise slice-interpolation method exposes to the whole-volume upsampler.

A method works in its own *representation* (identity for image-space baselines, scaled VAE latents for
CaLID): the upsampler encodes the acquired slices once, asks for each missing slice given the two known
slices that bracket it and its relative position ``r``, and decodes every generated slice once at the end.
Representations keep the leading batch dimension; the trailing dimensions are the method's own, so the same
engine drives 2D slices ``(N, 1, H, W)`` and cines ``(N, 1, T, H, W)``.
"""

from __future__ import annotations

import math
from typing import Literal, Protocol, runtime_checkable

import torch
from torch import Tensor

from calid_lightning.models.conditioning import expand_r, lerp, per_item

__all__ = [
    "DETAIL_WEIGHT",
    "ConditionalMean",
    "DetailTransfer",
    "ImageRepresentation",
    "InRepresentationOf",
    "LatentBlend",
    "SliceInterpolator",
    "expand_r",
    "lerp",
    "slerp",
]


@runtime_checkable
class SliceInterpolator(Protocol):
    """A pairwise slice interpolator (CaLID, latent lerp/slerp, image linear/nearest)."""

    size_multiple: int
    """H and W of the images must be divisible by this (1 for image-space baselines)."""

    def encode(self, x: Tensor) -> Tensor:
        """Images ``(N, 1, ..., H, W)`` in [0, 1] -> working representation."""
        ...

    def decode(self, z: Tensor) -> Tensor:
        """Working representation -> images ``(N, 1, ..., H, W)`` in [0, 1]."""
        ...

    def interpolate(
        self,
        below: Tensor,
        above: Tensor,
        r: Tensor,
        num_steps: int | None = None,
        generator: torch.Generator | None = None,
        gap_mm: Tensor | None = None,
    ) -> Tensor:
        """The representation at relative position ``r`` (``(N,)``, in (0, 1)) between two known ones.

        ``generator`` is a CPU generator: draw noise on the CPU, then move it to the device. ``gap_mm``
        ``(N,)`` is the distance in mm between the two known slices, for methods conditioned on it (CaLID
        with ``gap_conditioning``); the others ignore it.
        """
        ...


def slerp(below: Tensor, above: Tensor, r: Tensor, eps: float = 1e-7) -> Tensor:
    """Spherical interpolation per item (each item flattened to one vector); lerp where they are parallel.

    The norm is interpolated linearly, so two latents of different magnitude blend smoothly in both
    direction and length (the usual slerp for diffusion latents).
    """
    a, b = below.flatten(1), above.flatten(1)
    w = r.to(device=a.device, dtype=a.dtype).reshape(-1, 1)
    na, nb = a.norm(dim=1, keepdim=True), b.norm(dim=1, keepdim=True)
    ua, ub = a / na.clamp_min(eps), b / nb.clamp_min(eps)
    omega = torch.acos((ua * ub).sum(dim=1, keepdim=True).clamp(-1 + eps, 1 - eps))
    so = torch.sin(omega)
    direction = (torch.sin((1 - w) * omega) * ua + torch.sin(w * omega) * ub) / so
    out = direction * ((1 - w) * na + w * nb)
    parallel = (so.abs() < 1e-4) | (na < eps) | (nb < eps)
    out = torch.where(parallel, (1 - w) * a + w * b, out)
    return out.reshape(below.shape)


class ImageRepresentation:
    """Base of the interpolators whose representation is the image itself (the image-space baselines);
    subclasses define ``interpolate``."""

    size_multiple = 1

    def encode(self, x: Tensor) -> Tensor:
        """Images are the representation."""
        return x

    def decode(self, z: Tensor) -> Tensor:
        """Images are the representation."""
        return z


class InRepresentationOf:
    """Base of the interpolators that work in another interpolator's representation: ``encode``, ``decode``
    and ``size_multiple`` are the wrapped ``base``'s; subclasses define ``interpolate``."""

    def __init__(self, base: SliceInterpolator) -> None:
        self.base = base
        self.size_multiple = int(getattr(base, "size_multiple", 1))

    def encode(self, x: Tensor) -> Tensor:
        return self.base.encode(x)

    def decode(self, z: Tensor) -> Tensor:
        return self.base.decode(z)


class LatentBlend(InRepresentationOf):
    """Fixed (lerp / slerp) interpolation in the representation of another interpolator.

    Wraps e.g. a trained CaLID model so that its VAE encodes and decodes while the missing latents are a
    fixed blend of the neighbours: the "latent lerp / slerp" baselines of the paper, in the same latent space.
    """

    def __init__(self, base: SliceInterpolator, mode: Literal["lerp", "slerp"] = "lerp") -> None:
        if mode not in ("lerp", "slerp"):
            raise ValueError(f"LatentBlend mode must be 'lerp' or 'slerp', got {mode!r}")
        super().__init__(base)
        self.mode = mode

    def interpolate(
        self,
        below: Tensor,
        above: Tensor,
        r: Tensor,
        num_steps: int | None = None,
        generator: torch.Generator | None = None,
        gap_mm: Tensor | None = None,
    ) -> Tensor:
        """Blend the neighbour representations; ``num_steps``, ``generator`` and ``gap_mm`` are ignored."""
        return (lerp if self.mode == "lerp" else slerp)(below, above, r)


class ConditionalMean(InRepresentationOf):
    """The conditional-mean estimate E[z | neighbours] of a diffusion interpolator, for distortion metrics.

    PSNR and SSIM reward the conditional mean, which one stochastic sample is not: a sample places plausible
    detail where the truth may not have it. The estimate here is the model's x0-prediction from pure noise
    at the noisiest timestep (``steps=1``: one network call, well conditioned under v-prediction), averaged
    over ``draws`` independent noise draws, all in one batch. Measured on the quick profile, 1, 4 and 16
    draws score within 0.02 dB of each other (docs/ablations.md), so one draw is the default.
    ``steps > 1`` averages full DDIM samples instead (slower, sharper). The caller's ``num_steps`` is
    ignored: the estimate fixes its own.
    """

    def __init__(self, base: SliceInterpolator, draws: int = 1, steps: int = 1) -> None:
        if draws < 1 or steps < 1:
            raise ValueError(f"ConditionalMean needs draws >= 1 and steps >= 1, got {draws} and {steps}")
        super().__init__(base)
        self.draws = draws
        self.steps = steps

    def interpolate(
        self,
        below: Tensor,
        above: Tensor,
        r: Tensor,
        num_steps: int | None = None,
        generator: torch.Generator | None = None,
        gap_mm: Tensor | None = None,
    ) -> Tensor:
        """Mean over ``draws`` estimates, drawn as one batch of ``draws x N`` items."""
        repeat = (self.draws, *([1] * (below.ndim - 1)))
        r = per_item(r, below).repeat(self.draws)
        if gap_mm is not None:
            gap_mm = per_item(gap_mm, below).repeat(self.draws)
        estimates = self.base.interpolate(
            below.repeat(repeat), above.repeat(repeat), r, self.steps, generator, gap_mm
        )
        return estimates.reshape(self.draws, *below.shape).mean(dim=0)


DETAIL_WEIGHT = 0.75
"""Weight of the neighbours' interpolated codec residual in :class:`DetailTransfer` unless told otherwise:
the best held-out PSNR on the quick profile's *validation* subjects at x4 (0.5 gave the best SSIM, 1.0 the
best PSNR at x2; docs/ablations.md)."""


class DetailTransfer:
    """A latent interpolator's decoded estimate plus the acquired slices' codec residual, interpolated in z.

    A latent method cannot score above its autoencoder: whatever the VAE loses of the true slice (edges,
    fine texture) is lost. The acquired slices show what the VAE loses near a missing one: ``x -
    decode(encode(x))``. This method carries that residual beside the latent and adds it back::

        out(z) = decode(latent(z)) + weight * residual(z)

    where ``latent(z)`` is exactly the ``inner`` interpolator's own chain (the plain estimate's latents, level
    by level) and ``residual(z)`` is the image-space linear interpolation in z of the acquired slices'
    residuals (interpolating linearly between known residuals, level after level, stays on that piecewise-
    linear field). At ``weight`` 1 this is ``linear + (decoded estimate - linear of the decoded acquired
    slices)``: image-space linear interpolation corrected by what the model changes in the decoder's space, so
    the VAE's error cancels to first order. With a lossless codec it is ``inner`` itself; with a linear codec
    and latent lerp as ``inner`` (``weight`` 1) it is exactly image-space linear interpolation, so the gain
    over linear comes from the model. ``weight`` < 1 trades the copied detail (and its noise) for smoothness.

    The representation is each item's latent and residual, flattened and concatenated; :meth:`encode`
    records their shapes, so it must see a batch before :meth:`interpolate` and :meth:`decode` (the engine
    encodes the acquired slices first). Compared with the plain estimate it costs one extra decode per
    acquired slice. Results are clamped to the data range [0, 1].
    """

    def __init__(self, inner: SliceInterpolator, weight: float = DETAIL_WEIGHT) -> None:
        if not weight >= 0:
            raise ValueError(f"DetailTransfer needs a weight >= 0, got {weight}")
        self.inner = inner
        self.weight = float(weight)
        self.size_multiple = int(getattr(inner, "size_multiple", 1))
        self._shapes: tuple[torch.Size, torch.Size] | None = None

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Images -> per item, the inner latent and the codec residual ``x - D(E(x))``, flattened, joined."""
        z = self.inner.encode(x)
        residual = x - self.inner.decode(z).to(x.dtype)
        self._shapes = (z.shape[1:], residual.shape[1:])
        return torch.cat([z.flatten(1), residual.to(z.dtype).flatten(1)], dim=1)

    def _split(self, rep: Tensor) -> tuple[Tensor, Tensor]:
        if self._shapes is None:
            raise RuntimeError("DetailTransfer.encode must see a batch before interpolate or decode")
        latent, residual = self._shapes
        n = math.prod(latent)
        return rep[:, :n].reshape(-1, *latent), rep[:, n:].reshape(-1, *residual)

    @torch.no_grad()
    def interpolate(
        self,
        below: Tensor,
        above: Tensor,
        r: Tensor,
        num_steps: int | None = None,
        generator: torch.Generator | None = None,
        gap_mm: Tensor | None = None,
    ) -> Tensor:
        """The inner estimate of the latent at ``r`` beside the linear blend of the two residuals."""
        z_below, res_below = self._split(below)
        z_above, res_above = self._split(above)
        z = self.inner.interpolate(z_below, z_above, r, num_steps, generator, gap_mm)
        residual = lerp(res_below, res_above, r)
        return torch.cat([z.flatten(1), residual.to(z.dtype).flatten(1)], dim=1)

    @torch.no_grad()
    def decode(self, rep: Tensor) -> Tensor:
        """``decode(latent) + weight * residual``, clamped to [0, 1]."""
        z, residual = self._split(rep)
        return (self.inner.decode(z).to(residual.dtype) + self.weight * residual).clamp(0.0, 1.0)


def calid_estimate(
    model: SliceInterpolator, mean: bool, draws: int = 1, detail_weight: float | None = None
) -> SliceInterpolator:
    """The interpolator of one CaLID estimate: the model's sample or (``mean``) its conditional mean over
    ``draws`` noise draws, wrapped in :class:`DetailTransfer` when a ``detail_weight`` is given.

    The one composition of ``calid upsample`` and the scoring tools' ``calid*`` methods, so an upsampled scan
    and a table row of the same settings are the same computation.
    """
    inner = ConditionalMean(model, draws=draws) if mean else model
    return inner if detail_weight is None else DetailTransfer(inner, detail_weight)
