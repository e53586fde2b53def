"""``calid upsample``: a sparse short-axis NIfTI in, the dense NIfTI out (CaLID or an image-space baseline).

    calid upsample --checkpoint CKPT --input SPARSE.nii.gz --output DENSE.nii.gz --factor 4
    calid upsample --method linear --input SPARSE.nii.gz --output DENSE.nii.gz --spacing 2.5

The checkpoint's kind is read from the file: a spatial CaLID upsamples a 4D cine frame by frame, a 2D+T
CaLID generates each missing slice's whole cine at once (temporally coherent; the time spacing is kept).
``--samples N > 1`` also writes ``<output stem>_std.nii.gz``, the
per-voxel standard deviation over N generations (an uncertainty map).

Everything that can be checked is checked before the model runs: the options, the input file and its
geometry, the checkpoint, and every output path (never the input itself, never an existing file without
``--overwrite``, a writable folder with room for the result). Outputs are written to a temporary file and
renamed into place, so an interrupted run (Ctrl-C, SIGTERM, full disk) leaves the old file or the new one.

One progress bar (stderr, ``--quiet`` hides it) counts the generated slices (x frames for a cine) with an
ETA, then the decode pass and the file writes: at 100 % the output is in place.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

from calid_lightning.cli_options import (
    add_device_argument,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from calid_lightning.data.subject import DataError
from calid_lightning.inference.interpolator import (
    DETAIL_WEIGHT,
    SliceInterpolator,
    calid_estimate,
)
from calid_lightning.inference.methods import MEAN_DRAWS, methods_of
from calid_lightning.inference.nifti_io import (
    TrainedPreprocessing,
    frames_from_cine,
    read_sparse_stack,
    std_path,
    trained_preprocessing,
    write_dense_stack,
    write_std_map,
)
from calid_lightning.inference.progress import UpsampleProgress
from calid_lightning.inference.upsample import (
    factor_positions,
    spacing_positions,
    split_positions,
    upsample_stack,
)
from calid_lightning.io_safety import OutputPathError, check_output_path, sigterm_as_exit

MAX_OUTPUT_SLICES = 1000
"""More output slices than this is almost surely a typo in ``--spacing`` / ``--factor`` (``--force``)."""
DISK_MARGIN_BYTES = 16 * 2**20


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="calid upsample", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="sparse 3D (X,Y,Z) or 4D (X,Y,Z,T) NIfTI stack")
    parser.add_argument("--output", required=True, help="dense NIfTI to write (.nii or .nii.gz)")
    grid = parser.add_mutually_exclusive_group(required=True)
    grid.add_argument(
        "--factor", type=positive_int, help="K: insert K-1 slices in every gap ((Z-1)*K+1 slices)"
    )
    grid.add_argument(
        "--spacing",
        type=positive_float,
        help="target slice spacing in mm (instead of --factor); must divide the acquired spacing",
    )
    parser.add_argument(
        "--method", choices=methods_of("upsample"), default="calid", help="calid needs --checkpoint"
    )
    parser.add_argument("--checkpoint", help="CaLID checkpoint (.ckpt), spatial or 2D+T (read from the file)")
    parser.add_argument("--steps", type=positive_int, default=None, help="DDIM steps (default: the model's)")
    parser.add_argument("--order", choices=("bisection", "sequential"), default="bisection")
    parser.add_argument(
        "--estimate",
        choices=("sample", "mean"),
        default="sample",
        help="calid: one DDIM sample (realistic texture; for segmentation and viewing) or the conditional "
        "mean (the x0-prediction averaged over --mean-draws noise draws: best PSNR/SSIM, smoother)",
    )
    parser.add_argument(
        "--mean-draws",
        type=positive_int,
        default=MEAN_DRAWS,
        help=f"noise draws of --estimate mean (default {MEAN_DRAWS})",
    )
    parser.add_argument(
        "--detail-weight",
        type=non_negative_float,
        default=0.0,
        help="calid: add this weight of the neighbours' VAE residual, blended in image space, to each "
        f"generated slice (0: off; {DETAIL_WEIGHT} scored best on the phantom, see docs/ablations.md)",
    )
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument(
        "--samples", type=positive_int, default=1, help="> 1: mean of N samples plus a std map"
    )
    add_device_argument(parser)
    parser.add_argument(
        "--max-batch",
        type=positive_int,
        default=64,
        help="2D frames per interpolator call (a 2D+T model gets max-batch // T whole cines, at least one)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output (and std map)")
    parser.add_argument(
        "--force",
        action="store_true",
        help=f"allow more than {MAX_OUTPUT_SLICES} output slices, or a --spacing whose grid misses acquired "
        "slices (they then condition the gaps but are not copied to the output)",
    )
    return parser


def _interpolator(args: argparse.Namespace):
    """The SliceInterpolator for ``--method`` (None for the whole-stack nearest / cubic baselines)."""
    if args.method == "calid":
        from calid_lightning.models.calid_inflated import CaLIDInflated
        from calid_lightning.models.calid_spatial import CaLIDSpatial
        from calid_lightning.models.checkpoints import load_model
        from calid_lightning.models.pixel_diffusion import PixelSpatial

        interpolators = (CaLIDSpatial, CaLIDInflated, PixelSpatial)
        model = load_model(args.checkpoint, interpolators, map_location=args.device).to(args.device)
        detail = args.detail_weight if args.detail_weight > 0 else None
        return calid_estimate(model, args.estimate == "mean", args.mean_draws, detail)
    if args.method == "linear":
        from calid_lightning.inference.baselines import ImageLinear

        return ImageLinear()
    return None


def _grid(parser: argparse.ArgumentParser, args: argparse.Namespace, num_slices: int, dz: float) -> tuple:
    """Output positions and slice spacing; a grid that drops acquired slices or is absurd is refused."""
    if args.spacing is None:
        positions, new_dz = factor_positions(num_slices, args.factor), dz / args.factor
    else:
        if args.spacing > dz * (1 + 1e-6):
            parser.error(
                f"--spacing {args.spacing:g} is larger than the acquired spacing {dz:g} mm "
                "(that would drop acquired slices; this tool only adds slices)"
            )
        ratio = dz / args.spacing
        if abs(ratio - round(ratio)) > 1e-6 * max(1.0, ratio) and not args.force:
            lower, upper = dz / math.ceil(ratio), dz / max(1, math.floor(ratio))
            parser.error(
                f"--spacing {args.spacing:g} does not divide the acquired spacing {dz:g} mm, so acquired "
                f"slices would be resampled away; use --spacing {lower:g} or {upper:g} (or --force)"
            )
        positions, new_dz = spacing_positions(num_slices, dz, args.spacing), args.spacing
        missed = num_slices - len(split_positions(positions)[0])
        if missed:
            print(
                f"calid upsample: warning: {missed} acquired slice(s) are not on the output grid",
                file=sys.stderr,
            )
    if len(positions) > MAX_OUTPUT_SLICES and not args.force:
        option = f"--spacing {args.spacing:g}" if args.spacing is not None else f"--factor {args.factor}"
        parser.error(
            f"{option} asks for {len(positions)} output slices (more than {MAX_OUTPUT_SLICES}); "
            "pass --force if that is meant"
        )
    return positions, new_dz


def _check_outputs(args: argparse.Namespace, sparse, num_slices: int) -> None:
    """The dense volume (and std map) may be written: not the input, not existing unless --overwrite, room."""
    x, y, _, t = sparse.values.shape
    volume_bytes = x * y * num_slices * t * 4 + 352
    outputs = [Path(args.output)] + ([std_path(args.output)] if args.samples > 1 else [])
    needed = volume_bytes * len(outputs) + DISK_MARGIN_BYTES
    for path in outputs:
        check_output_path(path, inputs=[sparse.path], overwrite=args.overwrite, needed_bytes=needed)


def _generate(
    args: argparse.Namespace,
    stack: torch.Tensor,
    positions: list[float],
    interpolator: SliceInterpolator | None,
    bar: UpsampleProgress,
    slice_spacing_mm: float,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The dense stack (and the std map for ``--samples > 1``) in the layout of ``stack``, whose slices are
    ``slice_spacing_mm`` apart."""
    if interpolator is None:
        from calid_lightning.inference.baselines import IMAGE_BASELINES

        bar.phase("interpolating")
        dense = IMAGE_BASELINES[args.method].at(stack, positions)
        bar.advance(UpsampleProgress.engine_units(bar.slices, bar.frames, 1, decode=False))
        return dense, torch.zeros_like(dense) if args.samples > 1 else None
    cine = stack.ndim == 6
    max_batch = max(1, args.max_batch // stack.shape[3]) if cine else args.max_batch
    result = upsample_stack(
        stack,
        positions,
        interpolator,
        order=args.order,
        num_steps=args.steps,
        seed=args.seed,
        samples=args.samples,
        progress=bar,
        max_batch=max_batch,
        device=args.device,
        slice_spacing_mm=slice_spacing_mm,
    )
    return result.dense, result.std


def main(argv: list[str] | None = None) -> int:
    """Run ``calid upsample``; returns the exit status (2 for bad arguments, 1 for bad input files).

    SIGTERM is handled like Ctrl-C (exit 143 / 130): a file being written is removed, the old one stays.
    """
    with sigterm_as_exit():
        try:
            return _run(argv)
        except KeyboardInterrupt:
            print("calid upsample: interrupted; no partial output left", file=sys.stderr)
            return 130


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.method == "calid" and not args.checkpoint:
        parser.error("--method calid needs --checkpoint CKPT (or pick --method linear|nearest|cubic)")
    if args.detail_weight > 0 and args.method != "calid":
        parser.error(f"--detail-weight {args.detail_weight:g} applies to --method calid only")
    if not args.output.endswith((".nii", ".nii.gz")):
        parser.error(f"--output {args.output}: must end in .nii or .nii.gz")
    if args.checkpoint and not Path(args.checkpoint).is_file():
        parser.error(f"--checkpoint {args.checkpoint}: file not found")
    try:
        calid = args.method == "calid"
        preprocessing = trained_preprocessing(args.checkpoint) if calid else TrainedPreprocessing()
        sparse = read_sparse_stack(args.input, preprocessing.percentiles)
        positions, new_dz = _grid(parser, args, sparse.num_slices, sparse.spacing[2])
        try:
            _check_outputs(args, sparse, len(positions))
        except OutputPathError as exc:
            parser.error(f"--output {exc}")
        start = time.perf_counter()
        interpolator = _interpolator(args)
        for warning in preprocessing.warnings(sparse):  # once the checkpoint is known to be a model
            print(f"calid upsample: warning: {warning}", file=sys.stderr)
        cine = getattr(interpolator, "task", None) == "cine"
        stack = sparse.cine_stack if cine else sparse.stack
        files = 2 if args.samples > 1 else 1
        generated = len(split_positions(positions)[1])
        frames = stack.shape[1] * (stack.shape[3] if stack.ndim == 6 else 1)
        samples = args.samples if interpolator is not None else 1
        with UpsampleProgress(
            generated, frames, samples, files, decode=interpolator is not None, enabled=not args.quiet
        ) as bar:
            dense, std = _generate(args, stack, positions, interpolator, bar, float(sparse.spacing[2]))
            if cine:
                dense = frames_from_cine(dense)
                std = frames_from_cine(std) if std is not None else None
            seconds = time.perf_counter() - start
            bar.phase("writing")
            written = write_dense_stack(args.output, sparse, dense, positions, new_dz)
            bar.advance()
            std_written = None
            if std is not None:
                std_written = write_std_map(std_path(args.output), sparse, std, positions, new_dz)
                bar.advance()
        method = f"{args.method} 2D+T" if cine else args.method
        print(f"wrote {written} ({len(positions)} slices at {new_dz:g} mm, {method}, {seconds:.2f} s)")
        if std_written is not None:
            print(f"wrote {std_written} (std map)")
    except DataError as exc:
        print(f"calid upsample: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a full disk or a folder that vanished while writing: the old file is kept
        print(
            f"calid upsample: error: {args.output}: cannot write ({exc.strerror or exc}); nothing replaced",
            file=sys.stderr,
        )
        return 1
    return 0
