"""``calid figures``: the results figures of one test subject, one frame, one gap factor (PNG, Agg).

    calid figures --data data_modules/phantom.yaml --checkpoint CKPT --methods calid,lerp,linear,nearest \\
        --factor 4 --split test --frame ed --steps 50 --samples 4 --out results/figures

Writes under ``--out`` (``<tag>`` defaults to ``x<factor>``):

* ``comparison_<tag>.png``: one held-out slice near the middle of the stack; the sparse input (the nearest
  acquired slice), each method and the truth, with PSNR / SSIM in the titles, and below them the absolute
  error maps on one shared colour scale.
* ``through_plane_<tag>.png``: a long-axis-like cut (the image row through the heart centre) over the dense
  slices between the first and last acquired one, z down the page at its true aspect; acquired rows are
  ticked on the left and are the same acquired slices in every panel.
* ``uncertainty_<tag>.png`` (CaLID only): mean and per-pixel std of ``--samples`` generations (seeds
  ``seed .. seed + samples - 1``), the mean's absolute error and the truth; the title gives the Pearson
  correlation of std and error inside the heart box: is the uncertainty informative?

Only the kept slices enter a method (the held-out plan of ``calid evaluate``); methods that need a missing
checkpoint are skipped with a message.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from calid_lightning.cli_options import add_data_arguments, add_device_argument
from calid_lightning.data.config import build_datamodule, data_init_args
from calid_lightning.data.datamodule import CardiacDataModule
from calid_lightning.data.preprocess import PreparedSubject
from calid_lightning.data.subject import DataError
from calid_lightning.evaluation.heldout import kept_spacing_mm, with_sampling
from calid_lightning.evaluation.metrics import HEART_LABELS, Box, slice_heart_boxes, slice_metrics
from calid_lightning.inference.methods import (
    Upsampler,
    add_model_arguments,
    build_method,
    checked_methods,
    label_of,
    models_from_args,
    training_mismatches,
)
from calid_lightning.inference.upsample import EngineUpsampler, upsample_stack
from calid_lightning.io_safety import atomic_save

DEFAULT_METHODS = "calid,lerp,linear,nearest"


class UsageError(ValueError):
    """A command-line value that does not fit the data (exit status 2, like argparse's own errors)."""


PANEL_INCHES = 2.3
DPI = 150


# ---- pure pieces: arrays in, arrays out -------------------------------------------------------------------


def nearest_kept(z: int, kept: Sequence[int]) -> int:
    """The kept slice nearest to ``z`` (the lower one on a tie, as the ``nearest`` baseline)."""
    kept_a = np.asarray(kept, dtype=np.int64)
    return int(kept_a[np.argmin(np.abs(kept_a - z))])


def nearest_fill(stack: np.ndarray, kept: Sequence[int]) -> np.ndarray:
    """Slices ``kept[0] .. kept[-1]`` of ``stack`` ``(Z, ...)``, each replaced by its nearest kept slice.

    Only the kept slices are read: this is the sparse input as a viewer without interpolation shows it.
    """
    rows = [nearest_kept(z, kept) for z in range(int(kept[0]), int(kept[-1]) + 1)]
    return stack[rows]


def through_plane_image(
    stack: np.ndarray, kept: Sequence[int], row: int, nearest: bool = False
) -> np.ndarray:
    """Row ``row`` of the slices ``kept[0] .. kept[-1]`` of ``stack`` ``(Z, H, W)``: a ``(Zd, W)`` cut.

    z runs down the rows. ``nearest`` takes every row from the nearest kept slice (:func:`nearest_fill`).
    """
    source = nearest_fill(stack, kept) if nearest else stack[int(kept[0]) : int(kept[-1]) + 1]
    return np.asarray(source[:, row])


def heart_row(labels: np.ndarray | None, height: int) -> int:
    """The image row through the heart centre of ``labels`` ``(..., H, W)``; the middle row without labels."""
    if labels is not None:
        heart = np.isin(labels, HEART_LABELS).reshape(-1, *labels.shape[-2:]).sum(axis=(0, 2))
        if heart.sum() > 0:
            return round(float(np.average(np.arange(heart.size), weights=heart)))
    return height // 2


def pick_slice(kept: Sequence[int], heldout: Sequence[int]) -> int:
    """A held-out slice farthest from its acquired neighbours, of those the nearest the stack's middle."""
    held = np.asarray(heldout, dtype=np.int64)
    distance = np.array([abs(int(z) - nearest_kept(int(z), kept)) for z in held])
    candidates = held[distance == distance.max()]
    middle = (int(kept[0]) + int(kept[-1])) / 2
    return int(candidates[np.argmin(np.abs(candidates - middle))])


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two equally sized arrays (NaN when either is constant)."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def in_box(image: np.ndarray, box: Box | None) -> np.ndarray:
    """The ``box`` window of a 2D image (the whole image without a box)."""
    return image if box is None else image[box]


def scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Whole-slice PSNR and SSIM of one 2D slice (the metrics of ``calid evaluate``)."""
    as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]  # noqa: E731
    found = slice_metrics(as_tensor(pred), as_tensor(truth))
    return {"psnr": float(found["psnr"][0]), "ssim": float(found["ssim"][0])}


# ---- reconstruction ---------------------------------------------------------------------------------------


@dataclass
class SubjectView:
    """One frame of a subject over the dense range ``kept[0] .. kept[-1]`` (local z: 0 is ``kept[0]``)."""

    subject_id: str
    frame: int
    first: int
    truth: np.ndarray
    labels: np.ndarray | None
    kept: np.ndarray
    heldout: np.ndarray
    spacing: tuple[float, float, float]

    @classmethod
    def of(cls, prepared: PreparedSubject, kept: np.ndarray, heldout: np.ndarray, frame: int) -> SubjectView:
        first, last = int(kept[0]), int(kept[-1])
        labels = None
        if prepared.labels is not None:
            labels = prepared.labels[first : last + 1, frame]
            if not np.isin(labels, HEART_LABELS).any():
                labels = prepared.labels[first : last + 1].max(axis=1)
        return cls(
            prepared.subject_id,
            frame,
            first,
            np.asarray(prepared.image[first : last + 1, frame], dtype=np.float32),
            labels,
            np.asarray(kept, dtype=np.int64) - first,
            np.asarray(heldout, dtype=np.int64) - first,
            tuple(float(s) for s in prepared.spacing),
        )

    @property
    def factor(self) -> int:
        return int(self.kept[1] - self.kept[0])

    def sparse_stack(self) -> torch.Tensor:
        """The kept slices as the ``(Z, 1, 1, H, W)`` stack the methods take."""
        return torch.from_numpy(np.ascontiguousarray(self.truth[self.kept]))[:, None, None]

    @property
    def kept_spacing(self) -> float:
        """The distance in mm between two kept slices."""
        return kept_spacing_mm(self.factor, self.spacing)

    def positions(self) -> list[float]:
        """Every local slice as a position in kept-slice units (integers are the acquired slices)."""
        return [z / self.factor for z in range(self.truth.shape[0])]

    def box(self, z: int) -> Box | None:
        """The heart box of local slice ``z`` (its own labels, else the range's, else none)."""
        if self.labels is None:
            return None
        return slice_heart_boxes(self.labels[z : z + 1], self.labels)[0]


def reconstruct(upsampler: Upsampler, view: SubjectView, steps: int | None, seed: int) -> np.ndarray:
    """The method's dense slices ``(Zd, H, W)`` over the view's range, from its kept slices only."""
    dense = with_sampling(upsampler, steps, seed).at(view.sparse_stack(), view.positions(), view.kept_spacing)
    return dense[:, 0, 0].detach().float().cpu().numpy()


def sample_stats(
    engine: EngineUpsampler, view: SubjectView, steps: int | None, seed: int, samples: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and per-pixel std ``(Zd, H, W)`` of ``samples`` generations (seeds ``seed ..``)."""
    result = upsample_stack(
        view.sparse_stack(),
        view.positions(),
        engine.interpolator,
        order=engine.order,
        num_steps=steps,
        seed=seed,
        samples=samples,
        max_batch=engine.max_batch,
        device=engine.device,
        slice_spacing_mm=view.kept_spacing,
    )
    assert result.std is not None
    return result.dense[:, 0, 0].float().numpy(), result.std[:, 0, 0].float().numpy()


# ---- plotting: arrays in, Figure out ----------------------------------------------------------------------


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _bare(axis) -> None:
    axis.set_xticks([])
    axis.set_yticks([])


def comparison_figure(
    columns: Sequence[tuple[str, np.ndarray]], truth: np.ndarray, truth_title: str, row: int | None = None
) -> Figure:
    """Top: each ``(title, slice)`` column and the truth; bottom: ``|column - truth|`` on one colour scale.

    Titles get each slice's PSNR / SSIM against ``truth``; ``row`` (the through-plane cut) is dashed on the
    truth. Images are shown on [0, 1]; the error scale ends at the 99.5th percentile of all error pixels.
    """
    errors = [np.abs(image - truth) for _, image in columns]
    vmax = max(float(np.percentile(np.concatenate([e.ravel() for e in errors]), 99.5)), 1e-3)
    figure = _figure(PANEL_INCHES * (len(columns) + 1), 2 * PANEL_INCHES + 0.6)
    axes = figure.subplots(2, len(columns) + 1, squeeze=False)
    error_image = None
    for k, ((title, image), error) in enumerate(zip(columns, errors, strict=True)):
        found = scores(image, truth)
        axes[0, k].imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        axes[0, k].set_title(f"{title}\nPSNR {found['psnr']:.1f} dB, SSIM {found['ssim']:.3f}", fontsize=9)
        error_image = axes[1, k].imshow(error, cmap="magma", vmin=0, vmax=vmax, interpolation="nearest")
        axes[1, k].set_title(f"|error|, MAE {error.mean():.3f}", fontsize=9)
    axes[0, -1].imshow(truth, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    axes[0, -1].set_title(truth_title, fontsize=9)
    if row is not None:
        axes[0, -1].axhline(row, color="tab:cyan", lw=0.8, ls="--")
    axes[1, -1].set_axis_off()
    for axis in axes.flat:
        _bare(axis)
    bar_axis = axes[1, -1].inset_axes((0.0, 0.0, 0.08, 1.0))
    figure.colorbar(error_image, cax=bar_axis, extend="max", label="|method - truth|")
    return figure


def through_plane_figure(
    columns: Sequence[tuple[str, np.ndarray]],
    dz: float,
    dx: float,
    kept: Sequence[int],
    first: int = 0,
    title: str = "",
) -> Figure:
    """``(title, (Zd, W) cut)`` panels side by side at their true aspect (mm on both axes, z down).

    ``kept`` (local rows) are ticked on every panel and labelled with their slice index ``first + row``.
    """
    zd, width = columns[0][1].shape
    height_mm, width_mm = zd * dz, width * dx
    panel_h = PANEL_INCHES * min(2.5, max(0.4, height_mm / width_mm))
    figure = _figure(PANEL_INCHES * len(columns) + 0.4, panel_h + 0.5)
    axes = figure.subplots(1, len(columns), squeeze=False)[0]
    extent = (-0.5 * dx, (width - 0.5) * dx, (zd - 0.5) * dz, -0.5 * dz)
    for k, (name, cut) in enumerate(columns):
        axis = axes[k]
        axis.imshow(cut, cmap="gray", vmin=0, vmax=1, extent=extent, aspect="equal", interpolation="nearest")
        axis.set_title(name, fontsize=9)
        axis.set_xticks([])
        axis.set_yticks([int(z) * dz for z in kept])
        axis.tick_params(axis="y", length=4, color="tab:orange", width=1.5, labelsize=7)
        axis.set_yticklabels([str(first + int(z)) for z in kept] if k == 0 else [])
    axes[0].set_ylabel("acquired slice (z)", fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def uncertainty_figure(
    mean: np.ndarray,
    std: np.ndarray,
    truth: np.ndarray,
    box: Box | None,
    title: str,
) -> Figure:
    """Mean, std (the uncertainty map), ``|mean - truth|`` and truth of one slice; ``box`` is outlined."""
    error = np.abs(mean - truth)
    figure = _figure(PANEL_INCHES * 4 + 1.2, PANEL_INCHES + 0.6)
    axes = figure.subplots(1, 4, squeeze=False)[0]
    axes[0].imshow(mean, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    axes[0].set_title("CaLID mean", fontsize=9)
    shown = axes[1].imshow(std, cmap="viridis", vmin=0, interpolation="nearest")
    axes[1].set_title("std over samples", fontsize=9)
    figure.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.02)
    shown = axes[2].imshow(error, cmap="magma", vmin=0, interpolation="nearest")
    axes[2].set_title("|mean - truth|", fontsize=9)
    figure.colorbar(shown, ax=axes[2], fraction=0.046, pad=0.02)
    axes[3].imshow(truth, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    axes[3].set_title("truth", fontsize=9)
    if box is not None:
        rows, cols = box
        for axis in axes[1:3]:
            corner = (cols.start - 0.5, rows.start - 0.5)
            size = (cols.stop - cols.start, rows.stop - rows.start)
            axis.add_patch(Rectangle(corner, *size, fill=False, ec="white", lw=0.8, ls="--"))
    for axis in axes:
        _bare(axis)
    figure.suptitle(title, fontsize=10)
    return figure


# ---- the three figures of one subject ---------------------------------------------------------------------


def make_figures(
    datamodule: CardiacDataModule,
    subject_id: str,
    upsamplers: dict[str, Upsampler],
    out: Path,
    tag: str,
    frame: int,
    steps: int | None = None,
    seed: int = 0,
    samples: int = 4,
    z: int | None = None,
) -> list[Path]:
    """Write the comparison, through-plane and (with a ``calid`` engine, ``samples >= 2``) uncertainty PNGs.

    ``z`` is the held-out dense slice of the comparison (default: :func:`pick_slice`).
    """
    prepared = datamodule.prepared_subject(subject_id)
    kept, heldout = datamodule.heldout(subject_id)
    view = SubjectView.of(prepared, kept, heldout, frame)
    z_local = (pick_slice(kept, heldout) if z is None else z) - view.first
    if z_local not in set(view.heldout.tolist()):
        raise ValueError(f"slice {z} is not held out; held-out slices: {[int(h) for h in heldout]}")
    dense = {name: reconstruct(up, view, steps, seed) for name, up in upsamplers.items()}
    row = heart_row(view.labels, view.truth.shape[1])
    out.mkdir(parents=True, exist_ok=True)
    about = f"subject {subject_id}, frame {frame}, gap x{view.factor}"

    source = nearest_kept(z_local, view.kept)
    distance = abs(z_local - source)
    sparse_title = f"input: z={view.first + source} ({distance} slice{'s' * (distance != 1)} away)"
    columns = [(sparse_title, view.truth[source])]
    columns += [(label_of(n), d[z_local]) for n, d in dense.items()]
    truth_title = f"truth: z={view.first + z_local} (held out)\n{about}"
    written = [out / f"comparison_{tag}.png"]
    atomic_save(written[-1], comparison_figure(columns, view.truth[z_local], truth_title, row).savefig)

    cuts = [("sparse input (nearest)", through_plane_image(view.truth, view.kept, row, nearest=True))]
    cuts += [(label_of(n), through_plane_image(d, view.kept, row)) for n, d in dense.items()]
    cuts.append(("truth", through_plane_image(view.truth, view.kept, row)))
    dx, dz = view.spacing[1], view.spacing[2]
    title = f"through-plane cut at image row {row}, {about} ({dz:g} mm slices, {dx:.2f} mm pixels)"
    written.append(out / f"through_plane_{tag}.png")
    atomic_save(written[-1], through_plane_figure(cuts, dz, dx, view.kept, view.first, title).savefig)

    engine = upsamplers.get("calid")
    if isinstance(engine, EngineUpsampler) and samples >= 2:
        mean, std = sample_stats(engine, view, steps, seed, samples)
        error = np.abs(mean - view.truth)
        box = view.box(z_local)
        here = pearson(in_box(std[z_local], box), in_box(error[z_local], box))
        pooled = [
            (in_box(std[h], view.box(int(h))).ravel(), in_box(error[h], view.box(int(h))).ravel())
            for h in view.heldout
        ]
        overall = pearson(np.concatenate([p[0] for p in pooled]), np.concatenate([p[1] for p in pooled]))
        title = (
            f"CaLID, {samples} samples, z={view.first + z_local}, {about}\n"
            f"Pearson r(std, |error|) in the heart box: {here:.2f} (this slice), "
            f"{overall:.2f} (all {len(view.heldout)} held-out slices)"
        )
        written.append(out / f"uncertainty_{tag}.png")
        figure = uncertainty_figure(mean[z_local], std[z_local], view.truth[z_local], box, title)
        atomic_save(written[-1], figure.savefig)
        print(f"uncertainty: Pearson r(std, |error|) heart box {here:.3f} this slice, {overall:.3f} all")
    return written


# ---- command line -----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="calid figures", description=__doc__.split("\n\n")[0])
    add_data_arguments(parser)
    add_model_arguments(parser, "figures")
    parser.add_argument("--methods", default=DEFAULT_METHODS, help="comma-separated, in column order")
    parser.add_argument("--factor", type=int, default=4, help="gap factor: keep every k-th slice")
    parser.add_argument("--split", choices=("train", "val", "test"), default="test")
    parser.add_argument("--subject", help="subject id (default: the split's first)")
    parser.add_argument("--frame", default="ed", help="ed, es or a frame index")
    parser.add_argument("--z", type=int, help="held-out dense slice of the comparison (default: mid-gap)")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the model's)")
    parser.add_argument(
        "--samples", type=int, default=4, help="CaLID samples of the uncertainty map (0: none)"
    )
    parser.add_argument("--seed", type=int, default=0)
    add_device_argument(parser)
    parser.add_argument("--max-batch", type=int, default=64, help="slices per interpolator call")
    parser.add_argument("--tag", help="file-name tag (default: x<factor>)")
    parser.add_argument("--out", default="results/figures", help="folder for the PNGs")
    return parser


def resolve_frame(prepared: PreparedSubject, frame: str) -> int:
    """``ed``, ``es`` or an index checked against the subject's cine."""
    if frame in ("ed", "es"):
        return prepared.ed_frame if frame == "ed" else prepared.es_frame
    try:
        index = int(frame)
    except ValueError:
        raise UsageError(f"--frame {frame!r}: expected ed, es or a frame index") from None
    if not 0 <= index < prepared.num_frames:
        raise UsageError(
            f"--frame {index}: subject {prepared.subject_id} has frames 0..{prepared.num_frames - 1}"
        )
    return index


def main(argv: list[str] | None = None) -> int:
    """Run ``calid figures``; returns the exit status (2 for bad arguments, 1 for bad data)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    methods = checked_methods(parser, args, "figures")
    if args.samples == 1 or args.samples < 0:
        parser.error(f"--samples must be 0 (no uncertainty map) or >= 2 (std needs two), got {args.samples}")
    if "calid" not in methods:
        print(
            "calid figures: no uncertainty figure: it needs the method calid (and --checkpoint)",
            file=sys.stderr,
        )
    elif args.samples == 0:
        print("calid figures: no uncertainty figure: --samples 0", file=sys.stderr)
    start = time.perf_counter()
    try:
        models = models_from_args(args)
        class_path, init_args = data_init_args(args.data, args.data_override, args.factor)
        datamodule = build_datamodule(class_path, init_args)
        for warning in training_mismatches(models, datamodule.hparams):
            print(f"calid figures: warning: {warning}", file=sys.stderr)
        subjects = datamodule.subjects(args.split)
        subject = args.subject or (subjects[0] if subjects else None)
        if subject not in subjects:
            raise UsageError(
                f"--subject {args.subject!r} is not in split {args.split!r}; "
                f"available: {', '.join(subjects) or 'none'}"
            )
        prepared = datamodule.prepared_subject(subject)
        frame = resolve_frame(prepared, args.frame)
        _, heldout = datamodule.heldout(subject)
        if args.z is not None and args.z not in set(heldout.tolist()):
            raise UsageError(f"--z {args.z}: not a held-out slice of {subject}; choose {heldout.tolist()}")
        upsamplers = {m: build_method(m, models) for m in methods}
        written = make_figures(
            datamodule,
            subject,
            upsamplers,
            Path(args.out),
            args.tag or f"x{args.factor}",
            frame,
            args.steps,
            args.seed,
            args.samples,
            args.z,
        )
    except UsageError as exc:
        print(f"calid figures: error: {exc}", file=sys.stderr)
        return 2
    except (DataError, ValueError) as exc:
        print(f"calid figures: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {', '.join(map(str, written))} in {time.perf_counter() - start:.1f} s")
    return 0
