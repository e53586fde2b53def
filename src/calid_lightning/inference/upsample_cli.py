"""``calid upsample``: a sparse short-axis NIfTI in, the dense NIfTI out (CaLID or an image-space baseline).

    calid upsample --checkpoint CKPT --input SPARSE.nii.gz --output DENSE.nii.gz --factor 4
    calid upsample --method linear --input SPARSE.nii.gz --output DENSE.nii.gz --spacing 2.5

The checkpoint's kind is read from the file: a spatial CaLID upsamples a 4D cine frame by frame, a 2D+T
CaLID generates each missing slice's whole cine at once (temporally coherent; the time spacing is kept).
``--samples N > 1`` also writes ``<output stem>_std.nii.gz``, the
per-voxel standard deviation over N generations (an uncertainty map).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from calid_lightning.cli_options import add_device_argument
from calid_lightning.data.subject import DataError
from calid_lightning.inference.nifti_io import (
    frames_from_cine,
    read_sparse_stack,
    std_path,
    write_dense_stack,
    write_std_map,
)
from calid_lightning.inference.upsample import factor_positions, spacing_positions, upsample_stack

METHODS = ("calid", "linear", "nearest", "cubic")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="calid upsample", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="sparse 3D (X,Y,Z) or 4D (X,Y,Z,T) NIfTI stack")
    parser.add_argument("--output", required=True, help="dense NIfTI to write (.nii or .nii.gz)")
    grid = parser.add_mutually_exclusive_group(required=True)
    grid.add_argument("--factor", type=int, help="K: insert K-1 slices in every gap ((Z-1)*K+1 slices)")
    grid.add_argument("--spacing", type=float, help="target slice spacing in mm (instead of --factor)")
    parser.add_argument("--method", choices=METHODS, default="calid", help="calid needs --checkpoint")
    parser.add_argument("--checkpoint", help="CaLID checkpoint (.ckpt), spatial or 2D+T (read from the file)")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the model's)")
    parser.add_argument("--order", choices=("bisection", "sequential"), default="bisection")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=1, help="> 1: mean of N samples plus a std map")
    add_device_argument(parser)
    parser.add_argument(
        "--max-batch",
        type=int,
        default=64,
        help="2D frames per interpolator call (a 2D+T model gets max-batch // T whole cines, at least one)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _interpolator(args: argparse.Namespace):
    """The SliceInterpolator for ``--method`` (None for the whole-stack nearest / cubic baselines)."""
    if args.method == "calid":
        from calid_lightning.models.latent_interpolator import load_interpolator

        return load_interpolator(args.checkpoint, map_location=args.device).to(args.device)
    if args.method == "linear":
        from calid_lightning.models.baselines import ImageLinear

        return ImageLinear()
    return None


def main(argv: list[str] | None = None) -> int:
    """Run ``calid upsample``; returns the exit status (2 for bad arguments, 1 for bad input files)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.method == "calid" and not args.checkpoint:
        parser.error("--method calid needs --checkpoint CKPT (or pick --method linear|nearest|cubic)")
    if not args.output.endswith((".nii", ".nii.gz")):
        parser.error(f"--output {args.output}: must end in .nii or .nii.gz")
    if args.checkpoint and not Path(args.checkpoint).is_file():
        parser.error(f"--checkpoint {args.checkpoint}: file not found")
    if args.factor is not None and args.factor < 1:
        parser.error(f"--factor must be a positive integer, got {args.factor}")
    if args.samples < 1:
        parser.error(f"--samples must be >= 1, got {args.samples}")
    try:
        sparse = read_sparse_stack(args.input)
        dz = sparse.spacing[2]
        if args.spacing is not None:
            if args.spacing <= 0:
                parser.error(f"--spacing must be positive, got {args.spacing}")
            positions, new_dz = spacing_positions(sparse.num_slices, dz, args.spacing), args.spacing
        else:
            positions, new_dz = factor_positions(sparse.num_slices, args.factor), dz / args.factor
        start = time.perf_counter()
        interpolator = _interpolator(args)
        cine = getattr(interpolator, "task", None) == "cine"
        if interpolator is None:
            from calid_lightning.models.baselines import IMAGE_BASELINES

            dense, std = IMAGE_BASELINES[args.method].at(sparse.stack, positions), None
            if args.samples > 1:
                std = torch.zeros_like(dense)
        else:
            stack = sparse.cine_stack if cine else sparse.stack
            max_batch = max(1, args.max_batch // stack.shape[3]) if cine else args.max_batch
            result = upsample_stack(
                stack,
                positions,
                interpolator,
                order=args.order,
                num_steps=args.steps,
                seed=args.seed,
                samples=args.samples,
                progress=not args.quiet,
                max_batch=max_batch,
                device=args.device,
            )
            dense, std = result.dense, result.std
            if cine:
                dense = frames_from_cine(dense)
                std = frames_from_cine(std) if std is not None else None
        seconds = time.perf_counter() - start
        written = write_dense_stack(args.output, sparse, dense, positions, new_dz)
        method = f"{args.method} 2D+T" if cine else args.method
        print(f"wrote {written} ({len(positions)} slices at {new_dz:g} mm, {method}, {seconds:.2f} s)")
        if std is not None:
            print(f"wrote {write_std_map(std_path(args.output), sparse, std, positions, new_dz)} (std map)")
    except DataError as exc:
        print(f"calid upsample: error: {exc}", file=sys.stderr)
        return 1
    return 0
