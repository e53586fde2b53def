"""Seconds per whole-volume upsampling (default x4) for the image baselines and, with --checkpoint, CaLID.

    .venv/bin/python benchmarks/bench_upsample.py --size 128 --slices 10 --frames 1 --factor 4
    .venv/bin/python benchmarks/bench_upsample.py --checkpoint runs/calid_spatial/last.ckpt --steps 50

Each method runs ``--warmup`` times untimed, then ``--repeats`` timed runs; the table shows the median (and
min) wall time per volume, VAE encode/decode included for latent methods, on one synthetic stack.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from calid_lightning.inference.interpolator import LatentBlend
from calid_lightning.inference.upsample import EngineUpsampler, factor_positions
from calid_lightning.models.baselines import IMAGE_BASELINES, ImageLinear


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128, help="in-plane H = W")
    parser.add_argument("--slices", type=int, default=10, help="acquired slices Z")
    parser.add_argument("--frames", type=int, default=1, help="cine frames (upsampled frame by frame)")
    parser.add_argument("--factor", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--checkpoint", help="CaLIDSpatial checkpoint: also time CaLID and latent lerp/slerp")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps for CaLID (default: the model's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return parser.parse_args(argv)


def time_method(run: Callable[[], torch.Tensor], warmup: int, repeats: int, device: str) -> list[float]:
    """Wall seconds of ``repeats`` runs after ``warmup`` untimed ones (CUDA synchronised)."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(warmup):
        run()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - start)
    return times


def methods(args: argparse.Namespace) -> dict[str, Callable[[torch.Tensor, list[float]], torch.Tensor]]:
    """Every method as ``(stack, positions) -> dense``."""
    table = {name: baseline.at for name, baseline in IMAGE_BASELINES.items()}
    table["linear (engine)"] = EngineUpsampler(ImageLinear(), max_batch=args.max_batch).at
    if args.checkpoint:
        from calid_lightning.models.calid_spatial import CaLIDSpatial

        model = CaLIDSpatial.load_from_checkpoint(args.checkpoint, map_location=args.device)
        model = model.to(args.device).eval()
        common = {"max_batch": args.max_batch, "device": args.device}
        table["latent lerp"] = EngineUpsampler(LatentBlend(model, "lerp"), **common).at
        table["latent slerp"] = EngineUpsampler(LatentBlend(model, "slerp"), **common).at
        table["calid"] = EngineUpsampler(model, num_steps=args.steps, **common).at
    return table


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = (args.slices, args.frames, 1, args.size, args.size)
    stack = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    positions = factor_positions(args.slices, args.factor)
    generated = (len(positions) - args.slices) * args.frames
    print(
        f"x{args.factor} upsampling of {args.slices} slices x {args.frames} frame(s) at {args.size}^2 "
        f"({generated} generated slices), device {args.device}, threads {torch.get_num_threads()}, "
        f"median of {args.repeats} after {args.warmup} warm-up"
    )
    print(f"{'method':<18} {'s/volume':>10} {'min s':>10} {'ms/slice':>10}")
    with torch.no_grad():
        for name, run in methods(args).items():
            times = time_method(lambda run=run: run(stack, positions), args.warmup, args.repeats, args.device)
            median = statistics.median(times)
            print(f"{name:<18} {median:>10.4f} {min(times):>10.4f} {1000 * median / generated:>10.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
