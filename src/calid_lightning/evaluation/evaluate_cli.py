"""``calid evaluate``: every method on the same held-out slices of the same subjects; CSVs and a summary.

    calid evaluate --data data_modules/phantom.yaml --checkpoint CKPT --methods calid,lerp,slerp,linear \\
        --factor 4 --split test --frames ed_es --steps 50 --out results/eval/spatial_x4.csv
    calid evaluate --data data_modules/phantom.yaml --pixel-checkpoint PIXEL.ckpt --methods pixel,linear
    calid evaluate --data data_modules/phantom.yaml --segmenter SEG.ckpt --methods truth,linear,nearest

Writes the per-slice CSV (``--out``), the per-subject means (``<out stem>_subjects.csv``) and prints a
Markdown table (:func:`~calid_lightning.evaluation.table.summary_table`): mean ± std over subjects of each
metric and the median seconds per volume (one frame's 3D stack; a subject's frames are generated as one
batch, so this is the batch time divided by its frames).
Each method first runs once, untimed, on one frame of the first subject (warm-up). Methods that need a
CaLID checkpoint are skipped, with a message, when ``--checkpoint`` is not given; ``pixel`` (the pixel-space
diffusion interpolator) likewise without ``--pixel-checkpoint``.

With ``--segmenter CKPT`` (a trained ``SegmenterModule``) every method's reconstructed slices are also
segmented and scored against the true labels: the per-slice CSV gains ``dice_<c>`` / ``hd95_<c>`` (mm) and
``present_<c>`` (1 where the true label holds the class) for ``c`` in lv, myo, rv, the per-subject CSV the
means of the first two over the slices whose truth holds the class plus ``dice_mean`` / ``hd95_mean``,
``dice3d_<c>`` (each frame's held-out slices pooled into one stack, so a class found where the truth has none
counts; mean over frames), and the LV volume errors ``edv_error_ml``, ``esv_error_ml``, ``ef_error`` (signed,
prediction - truth) and ``abs_ef_error`` of the reconstructed stack (NaN unless the frames include ED and ES).
The method ``truth`` (the true held-out slices: the segmenter's ceiling; NaN image metrics, 0 seconds) needs
``--segmenter``. Without ``--segmenter`` these columns are absent from both CSVs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from calid_lightning.cli_options import (
    add_data_arguments,
    add_device_argument,
    non_negative_float,
)
from calid_lightning.data.config import build_datamodule, data_init_args
from calid_lightning.data.datamodule import CardiacDataModule
from calid_lightning.data.subject import DataError
from calid_lightning.evaluation.heldout import (
    RECORD_FIELDS,
    SLICE_SEGMENTATION_FIELDS,
    SUBJECT_SEGMENTATION_FIELDS,
    evaluate_run,
    select_frames,
)
from calid_lightning.evaluation.metrics import METRICS
from calid_lightning.evaluation.records import subject_row, subjects_path, write_csv
from calid_lightning.evaluation.table import summary_table
from calid_lightning.inference.methods import (
    Upsampler,
    add_model_arguments,
    build_method,
    checked_methods,
    models_from_args,
    training_mismatches,
)
from calid_lightning.models.checkpoints import load_model
from calid_lightning.models.segmenter import SegmenterModule

SUBJECT_KEYS = ("subject", "method", "factor")
SUBJECT_FIELDS = (*SUBJECT_KEYS, "slices", *METRICS, "seconds_per_volume")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="calid evaluate", description=__doc__.split("\n\n")[0])
    add_data_arguments(parser)
    add_model_arguments(parser, "evaluate")
    parser.add_argument("--methods", default="calid,lerp,slerp,linear,cubic,nearest", help="comma-separated")
    parser.add_argument("--factor", type=int, default=4, help="gap factor: keep every k-th slice")
    parser.add_argument("--split", choices=("train", "val", "test"), default="test")
    parser.add_argument("--frames", default="ed_es", help="ed_es, ed, es, all or frame indices (0,5)")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the model's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--input-shift-mm",
        type=non_negative_float,
        default=0.0,
        help="misregister the kept slices: each moved in plane by N(0, S) mm per axis (clipped to 6 mm), "
        "like breath-hold offsets; the held-out truth stays put (default 0: off)",
    )
    add_device_argument(parser)
    parser.add_argument("--max-batch", type=int, default=64, help="slices per interpolator call")
    parser.add_argument("--out", default="results/eval/spatial_x4.csv", help="per-slice CSV to write")
    parser.add_argument(
        "--no-warmup",
        dest="warmup",
        action="store_false",
        help="skip the untimed warm-up run of each method (first subject, first frame)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def warm_up(
    datamodule: CardiacDataModule,
    subject_id: str,
    upsamplers: dict[str, Upsampler],
    frames: str,
    steps: int | None,
    seed: int,
) -> None:
    """Run each method once, untimed, on one frame of a subject: lazy initialisation stays out of timings."""
    prepared = datamodule.prepared_subject(subject_id)
    kept, heldout = datamodule.heldout(subject_id)
    first = select_frames(prepared, frames)[:1]
    for method, upsampler in upsamplers.items():
        evaluate_run(method, upsampler, prepared, kept, heldout, first, steps, seed)


def main(argv: list[str] | None = None) -> int:
    """Run ``calid evaluate``; returns the exit status (2 for bad arguments, 1 for bad data)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    methods = checked_methods(parser, args, "evaluate")
    try:
        models = models_from_args(args)
        class_path, init_args = data_init_args(args.data, args.data_override, args.factor)
        datamodule = build_datamodule(class_path, init_args)
        for warning in training_mismatches(models, datamodule.hparams):
            print(f"calid evaluate: warning: {warning}", file=sys.stderr)
        subjects = datamodule.subjects(args.split)
        upsamplers = {m: build_method(m, models) for m in methods}
        segmenter = (
            load_model(args.segmenter, SegmenterModule, map_location=args.device).to(args.device)
            if args.segmenter
            else None
        )
        records: list[dict[str, Any]] = []
        rows: list[dict[str, Any]] = []
        if args.warmup and subjects:
            warm_up(datamodule, subjects[0], upsamplers, args.frames, args.steps, args.seed)
        bar = tqdm(total=len(subjects) * len(methods), disable=args.quiet, desc="evaluate", unit="run")
        for subject_id in subjects:
            prepared = datamodule.prepared_subject(subject_id)
            kept, heldout = datamodule.heldout(subject_id)
            frames = select_frames(prepared, args.frames)
            for method in methods:
                bar.set_postfix_str(f"{subject_id} {method}")
                run = evaluate_run(
                    method,
                    upsamplers[method],
                    prepared,
                    kept,
                    heldout,
                    frames,
                    args.steps,
                    args.seed,
                    segmenter=segmenter,
                    input_shift_mm=args.input_shift_mm,
                )
                records += run.records
                seconds = run.seconds / len(frames)
                rows.append(subject_row(run.records, SUBJECT_KEYS, METRICS, seconds, run.summary))
                bar.update()
        bar.close()
    except (DataError, ValueError) as exc:
        print(f"calid evaluate: error: {exc}", file=sys.stderr)
        return 1
    out = Path(args.out)
    seg_records, seg_subjects = (
        (SLICE_SEGMENTATION_FIELDS, SUBJECT_SEGMENTATION_FIELDS) if segmenter else ((), ())
    )
    write_csv(out, (*RECORD_FIELDS, *seg_records), records)
    write_csv(subjects_path(out), (*SUBJECT_FIELDS, *seg_subjects), rows)
    print(f"wrote {out} ({len(records)} slices) and {subjects_path(out)} ({len(rows)} subject runs)")
    print(f"\nHeld-out slices, gap factor {args.factor}, split {args.split}, frames {args.frames}:\n")
    print(summary_table(rows, methods))
    return 0
