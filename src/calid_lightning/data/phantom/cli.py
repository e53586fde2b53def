"""``calid phantom``: write phantom subjects in the ACDC layout (plus dense ground truth) to a folder.

    calid phantom --out data/phantom --subjects 20 --seed 0 [--frames 25 --size 128 128 ...]

Subjects already on disk with the same seed and settings are kept, so re-running is cheap.
"""

from __future__ import annotations

import argparse

from tqdm import tqdm

from calid_lightning.cli_options import (
    non_negative_float,
    non_negative_int,
    output_folder,
    positive_float,
    positive_int,
)
from calid_lightning.data.phantom import PATHOLOGIES, PhantomConfig, write_dataset
from calid_lightning.data.phantom.config import FILTERS


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``calid phantom``."""
    d = PhantomConfig()
    p = argparse.ArgumentParser(prog="calid phantom", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=output_folder, required=True, help="output folder (patientNNN/ sub-folders)")
    p.add_argument(
        "--subjects", type=positive_int, default=20, help="number of subjects (default: %(default)s)"
    )
    p.add_argument(
        "--seed",
        type=non_negative_int,
        default=0,
        help="data-set seed; subject i uses a seed derived from (seed, i)",
    )
    p.add_argument(
        "--start-index", type=non_negative_int, default=1, help="index of the first subject (default: 1)"
    )
    p.add_argument(
        "--frames", type=positive_int, default=d.frames, help="frames per cycle (default: %(default)s)"
    )
    p.add_argument(
        "--size", type=positive_int, nargs=2, default=list(d.size), metavar=("X", "Y"), help="in-plane voxels"
    )
    p.add_argument(
        "--pixel-spacing", type=positive_float, default=None, help="mm; default: sampled per subject"
    )
    p.add_argument(
        "--dense-spacing", type=positive_float, default=d.dense_spacing, help="mm between dense slices"
    )
    p.add_argument(
        "--dense-slices", type=positive_int, default=None, help="dense slices; default: cover the heart"
    )
    p.add_argument(
        "--sparse-factor", type=positive_int, default=d.sparse_factor, help="keep every k-th dense slice"
    )
    p.add_argument(
        "--pathologies",
        default=",".join(d.pathologies),
        help=f"comma-separated subset of {','.join(PATHOLOGIES)}",
    )
    p.add_argument(
        "--slice-profile",
        type=positive_float,
        default=d.slice_profile,
        help="acquired slice thickness in mm (default: %(default)s)",
    )
    p.add_argument(
        "--truth",
        choices=("acquired", "thin"),
        default=d.truth,
        help="dense truth: the same acquisition at the dense positions, or thin slabs (default: %(default)s)",
    )
    p.add_argument(
        "--supersample",
        type=positive_int,
        default=d.supersample,
        help="in-plane anatomy supersampling before k-space truncation (default: %(default)s)",
    )
    p.add_argument(
        "--kspace-filter",
        choices=FILTERS,
        default=d.kspace_filter,
        help="k-space window of the truncation (default: %(default)s)",
    )
    p.add_argument(
        "--breath-hold-mm",
        type=non_negative_float,
        default=0.0,
        help="sigma of per-slice in-plane shifts (mm)",
    )
    p.add_argument("--no-noise", action="store_true", help="noise-free images")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``calid phantom``; returns the exit status (2 for bad arguments)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.subjects < 1:
        parser.error(f"--subjects must be >= 1, got {args.subjects}")
    try:
        config = PhantomConfig(
            size=tuple(args.size),
            pixel_spacing=args.pixel_spacing,
            dense_spacing=args.dense_spacing,
            sparse_factor=args.sparse_factor,
            frames=args.frames,
            pathologies=tuple(p.strip() for p in args.pathologies.split(",") if p.strip()),
            slice_profile=args.slice_profile,
            truth=args.truth,
            supersample=args.supersample,
            kspace_filter=args.kspace_filter,
            breath_hold_shift_mm=args.breath_hold_mm,
            dense_slices=args.dense_slices,
            snr=None if args.no_noise else PhantomConfig().snr,
        )
    except ValueError as err:
        parser.error(str(err))
    with tqdm(total=args.subjects, desc="phantom subjects", unit="subject") as bar:
        folders = write_dataset(
            args.out, args.subjects, args.seed, config, args.start_index, progress=bar.update
        )
    print(f"wrote {len(folders)} subjects to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
