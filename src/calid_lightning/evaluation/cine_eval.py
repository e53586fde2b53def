"""``calid evaluate-cine``: 2D+T vs frame-by-frame methods on the same held-out slice cines; CSVs, summary.

    calid evaluate-cine --data data_modules/phantom.yaml --inflated-checkpoint INFLATED.ckpt \\
        --checkpoint SPATIAL.ckpt --methods calid_inflated,calid,calid_shared,linear --factor 4 --frames 8 \\
        --steps 10 --out results/eval/cine_x4.csv --figure results/eval/cine_intensity.png

Every method gets the same sparse input: the kept slices (``heldout_plan``) of each subject over the same
frames (the cycle subsampled to ``--frames`` frames with ``cine_frame_indices``, or ``all``). The inflated
2D+T model (``calid_inflated*``, ``--inflated-checkpoint``) generates each held-out slice's whole cine at
once, as does ``calid_shared`` (the spatial model frame by frame with one noise for all frames); the other
spatial methods (``calid``, ``calid_mean``, ``calid_sequential``, ``lerp``, ``slerp`` from ``--checkpoint``)
and the image baselines (``linear``, ``cubic``, ``nearest``) work frame by frame. Only the held-out slices
are scored: PSNR / SSIM (whole slice and heart box) averaged over the slice's frames, and the
temporal-coherence error of its cine (cyclic: the frames cover the whole cycle).

Writes the per-slice CSV (``--out``), the per-subject means (``<out stem>_subjects.csv``) with
``seconds_per_volume`` = seconds to generate the subject's whole 3D+t stack (held-out slices x frames), and
prints a Markdown table: mean ± std over subjects, median seconds per volume. Each method first runs once,
untimed, on the first gap of the first subject (warm-up). Methods whose checkpoint is not given are skipped
with a message.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from calid_lightning.cli_options import add_data_arguments, add_device_argument
from calid_lightning.data.config import build_datamodule, data_init_args
from calid_lightning.data.preprocess import PreparedSubject
from calid_lightning.data.sampling import cine_frame_indices
from calid_lightning.data.subject import DataError
from calid_lightning.evaluation.heldout import heldout_positions, kept_spacing_mm, with_sampling
from calid_lightning.evaluation.metrics import METRICS, heart_box, slice_heart_boxes, slice_metrics
from calid_lightning.evaluation.records import nan_mean, subject_row, subjects_path, write_csv
from calid_lightning.evaluation.table import summary_table
from calid_lightning.evaluation.temporal import plot_methods_over_time, temporal_coherence_error
from calid_lightning.inference.methods import (
    METHODS,
    MethodModels,
    Upsampler,
    add_model_arguments,
    build_method,
    checked_methods,
    models_from_args,
    training_mismatches,
)
from calid_lightning.inference.upsample import EngineUpsampler

CINE_METRICS = (*METRICS, "temporal_error")
RECORD_FIELDS = ("subject", "method", "factor", "z", "frames", *CINE_METRICS)
SUBJECT_KEYS = ("subject", "method", "factor", "frames")
SUBJECT_FIELDS = ("subject", "method", "factor", "slices", "frames", *CINE_METRICS, "seconds_per_volume")


@dataclasses.dataclass(frozen=True)
class CineMethod:
    """An upsampler and its item layout: whole cines per slice (2D+T) or every frame as its own item."""

    upsampler: Upsampler
    whole_cine: bool

    def generate(
        self,
        cines: Tensor,
        positions: Sequence[float],
        steps: int | None,
        seed: int,
        slice_spacing_mm: float | None = None,
    ) -> Tensor:
        """Cines ``(Zh, T, H, W)`` at ``positions`` from the kept cines ``(Zk, T, H, W)``, which lie
        ``slice_spacing_mm`` apart.

        An engine's ``max_batch`` counts 2D frames: a whole-cine method gets ``max_batch // T`` cines per
        call (at least one), so memory stays that of ``max_batch`` slices whatever the frame count.
        """
        upsampler = with_sampling(self.upsampler, steps, seed)
        if self.whole_cine:
            if isinstance(upsampler, EngineUpsampler):
                cines_per_call = max(1, upsampler.max_batch // cines.shape[1])
                upsampler = dataclasses.replace(upsampler, max_batch=cines_per_call)
            return upsampler.at(cines[:, None, None], positions, slice_spacing_mm)[:, 0, 0]
        return upsampler.at(cines[:, :, None], positions, slice_spacing_mm)[:, :, 0]


def parse_frames(value: str) -> int | None:
    """``--frames``: ``all`` (``None``) or a frame count >= 2 (temporal coherence needs two frames)."""
    if value == "all":
        return None
    try:
        count = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a frame count >= 2 or 'all', got {value!r}") from None
    if count < 2:
        raise argparse.ArgumentTypeError(f"expected a frame count >= 2 or 'all', got {count}")
    return count


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="calid evaluate-cine", description=__doc__.split("\n\n")[0])
    add_data_arguments(parser)
    add_model_arguments(parser, "evaluate-cine")
    parser.add_argument(
        "--methods", default="calid_inflated,calid,calid_shared,linear", help="comma-separated"
    )
    parser.add_argument("--factor", type=int, default=4, help="gap factor: keep every k-th slice")
    parser.add_argument(
        "--frames", type=parse_frames, default=8, help="frames subsampled over the cycle (>= 2), or all"
    )
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the model's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", choices=("train", "val", "test"), default="test")
    add_device_argument(parser)
    parser.add_argument(
        "--max-batch",
        type=int,
        default=64,
        help="2D frames per interpolator call (2D+T: max-batch // T whole cines)",
    )
    parser.add_argument("--out", default="results/eval/cine_x4.csv", help="per-slice CSV to write")
    parser.add_argument(
        "--figure", help="PNG: mean heart-box intensity over time of one held-out slice (first subject)"
    )
    parser.add_argument(
        "--figure-methods",
        default="calid_inflated,calid,linear",
        help="comma-separated methods drawn in --figure (those evaluated; all evaluated when none is)",
    )
    parser.add_argument(
        "--no-warmup", dest="warmup", action="store_false", help="skip the untimed warm-up run of each method"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def build_cine_methods(methods: Sequence[str], models: MethodModels) -> dict[str, CineMethod]:
    """The methods by name; raises ``ValueError`` naming the option whose checkpoint is unreadable or holds
    the wrong model."""
    return {name: CineMethod(build_method(name, models), METHODS[name].cine) for name in methods}


def cine_frames(prepared: PreparedSubject, count: int | None) -> list[int]:
    """``count`` frame indices spread over the subject's whole cycle from ED (frame 0), or all frames."""
    return cine_frame_indices(prepared.num_frames, count, 1)[0]


def score_cines(
    pred: Tensor,
    truth: Tensor,
    true_labels: np.ndarray | None = None,
    subject_labels: np.ndarray | None = None,
    margin: int = 4,
) -> list[dict[str, float]]:
    """Per slice of ``(Zh, T, H, W)`` cines: :data:`METRICS` averaged over frames and the temporal error.

    ``true_labels`` ``(Zh, T, H, W)`` give each frame's heart box (falling back to ``subject_labels``, as in
    :func:`~calid_lightning.evaluation.metrics.slice_heart_boxes`). The temporal error is cyclic: the frames
    cover the whole cardiac cycle. Heart metrics are NaN-aware means (NaN when no frame has a box).
    """
    if pred.shape != truth.shape or pred.ndim != 4:
        raise ValueError(
            f"pred and truth must both be (Z, T, H, W), got {tuple(pred.shape)}, {tuple(truth.shape)}"
        )
    pred, truth = pred.detach().cpu(), truth.detach().cpu()
    z, t = truth.shape[:2]
    flat_labels = None if true_labels is None else np.asarray(true_labels).reshape(z * t, *truth.shape[-2:])
    boxes = slice_heart_boxes(flat_labels, subject_labels, margin)
    scores = slice_metrics(
        pred.reshape(z * t, 1, *pred.shape[-2:]), truth.reshape(z * t, 1, *truth.shape[-2:]), boxes
    )
    records = []
    for i in range(z):
        record = {}
        for metric in METRICS:
            record[metric] = nan_mean(scores[metric][i * t : (i + 1) * t].numpy())
        record["temporal_error"] = temporal_coherence_error(pred[i], truth[i], cyclic=True)
        records.append(record)
    return records


def evaluate_cine_method(
    name: str,
    method: CineMethod,
    prepared: PreparedSubject,
    kept: Sequence[int],
    heldout: Sequence[int],
    frames: Sequence[int],
    steps: int | None = None,
    seed: int = 0,
    margin: int = 4,
) -> tuple[list[dict[str, Any]], float, Tensor]:
    """Generate the held-out slice cines of ``prepared`` from its kept ones at ``frames`` and score them.

    Returns one record per held-out slice (:data:`RECORD_FIELDS`), the seconds the method took for the whole
    3D+t stack (VAE encode / decode included) and the generated cines ``(Zh, T, H, W)``.
    """
    factor, positions = heldout_positions(kept, heldout)
    kept_i, held_i, frames_i = list(map(int, kept)), list(map(int, heldout)), list(map(int, frames))
    cines = torch.from_numpy(np.ascontiguousarray(prepared.image[:, frames_i]))
    truth = cines[held_i]
    start = time.perf_counter()
    pred = method.generate(cines[kept_i], positions, steps, seed, kept_spacing_mm(factor, prepared.spacing))
    seconds = time.perf_counter() - start
    if pred.shape != truth.shape:
        raise ValueError(f"method {name!r} returned {tuple(pred.shape)}, expected {tuple(truth.shape)}")
    labels = prepared.labels
    true_labels = None if labels is None else labels[held_i][:, frames_i]
    records = []
    for z, scores in zip(held_i, score_cines(pred, truth, true_labels, labels, margin), strict=True):
        records.append(
            {
                "subject": prepared.subject_id,
                "method": name,
                "factor": factor,
                "z": z,
                "frames": len(frames_i),
            }
            | scores
        )
    return records, seconds, pred.float()


def warm_up(
    prepared: PreparedSubject,
    kept: Sequence[int],
    heldout: Sequence[int],
    frames: Sequence[int],
    methods: dict[str, CineMethod],
    steps: int | None,
    seed: int,
) -> None:
    """Run each method once, untimed, on the first gap only: lazy initialisation stays out of timings."""
    gap = [int(z) for z in heldout if kept[0] < z < kept[1]]
    for name, method in methods.items():
        evaluate_cine_method(name, method, prepared, kept[:2], gap, frames, steps, seed)


def write_figure(
    path: str,
    prepared: PreparedSubject,
    heldout: Sequence[int],
    frames: Sequence[int],
    preds: dict[str, Tensor],
    margin: int = 4,
) -> Path:
    """Intensity over time of the middle held-out slice: mean over its heart box, each method vs the truth."""
    index = len(heldout) // 2
    z = int(heldout[index])
    truth = torch.from_numpy(np.ascontiguousarray(prepared.image[z, list(frames)]))
    mask = None
    labels = prepared.labels
    box = None if labels is None else heart_box(labels[z][list(frames)], margin) or heart_box(labels, margin)
    if box is not None:
        mask = torch.zeros(truth.shape[1:], dtype=torch.bool)
        mask[box] = True
    title = f"{prepared.subject_id}, held-out slice z={z}: intensity over the cycle"
    cines = {name: pred[index] for name, pred in preds.items()}
    region = "heart box" if mask is not None else None
    return plot_methods_over_time(
        cines, truth, path, mask=mask, frames=frames, cyclic=True, title=title, region=region
    )


def main(argv: list[str] | None = None) -> int:
    """Run ``calid evaluate-cine``; returns the exit status (2 for bad arguments, 1 for bad data)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    names = checked_methods(parser, args, "evaluate-cine")
    models = models_from_args(args)
    try:
        methods = build_cine_methods(names, models)
    except (DataError, ValueError) as exc:
        parser.error(str(exc))
    try:
        class_path, init_args = data_init_args(args.data, args.data_override, args.factor)
        datamodule = build_datamodule(class_path, init_args)
        for warning in training_mismatches(models, datamodule.hparams):
            print(f"calid evaluate-cine: warning: {warning}", file=sys.stderr)
        subjects = datamodule.subjects(args.split)
        records: list[dict[str, Any]] = []
        rows: list[dict[str, Any]] = []
        figure: Path | None = None
        bar = tqdm(total=len(subjects) * len(methods), disable=args.quiet, desc="evaluate-cine", unit="run")
        for number, subject_id in enumerate(subjects):
            prepared = datamodule.prepared_subject(subject_id)
            kept, heldout = datamodule.heldout(subject_id)
            frames = cine_frames(prepared, args.frames)
            if number == 0 and args.warmup:
                warm_up(prepared, kept, heldout, frames, methods, args.steps, args.seed)
            preds = {}
            for name, method in methods.items():
                bar.set_postfix_str(f"{subject_id} {name}")
                found, seconds, preds[name] = evaluate_cine_method(
                    name, method, prepared, kept, heldout, frames, args.steps, args.seed
                )
                records += found
                rows.append(subject_row(found, SUBJECT_KEYS, CINE_METRICS, seconds))
                bar.update()
            if number == 0 and args.figure:
                drawn = {m: preds[m] for m in args.figure_methods.split(",") if m in preds} or preds
                figure = write_figure(args.figure, prepared, heldout, frames, drawn)
        bar.close()
    except (DataError, ValueError) as exc:
        print(f"calid evaluate-cine: error: {exc}", file=sys.stderr)
        return 1
    out = Path(args.out)
    write_csv(out, RECORD_FIELDS, records)
    write_csv(subjects_path(out), SUBJECT_FIELDS, rows)
    print(f"wrote {out} ({len(records)} slice cines) and {subjects_path(out)} ({len(rows)} subject runs)")
    if figure is not None:
        print(f"wrote {figure}")
    frames_text = "all frames" if args.frames is None else f"{args.frames} frames over the cycle"
    print(f"\nHeld-out slice cines, gap factor {args.factor}, split {args.split}, {frames_text}:\n")
    print(summary_table(rows, list(methods), CINE_METRICS))
    return 0
