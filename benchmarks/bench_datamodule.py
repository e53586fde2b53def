"""CardiacDataModule throughput: training samples per second per task and worker count, on phantom subjects.

    .venv/bin/python benchmarks/bench_datamodule.py [--root data/bench_phantom --subjects 6 --workers 0 2]

Generates the phantom subjects when the root lacks them (cached), times ``setup`` (read + prepare every
subject once), then iterates the training loader: the first batches (worker start-up, cold caches) are
warm-up, the rate is measured over the next ``--batches``.
"""

from __future__ import annotations

import argparse
import time

import torch

from calid_lightning.data.datamodule import CardiacDataModule


def measure(dm: CardiacDataModule, batches: int, warmup: int) -> float:
    """Samples per second of the training loader after ``warmup`` batches."""
    iterator = iter(dm.train_dataloader())
    for _ in range(warmup):
        next(iterator)
    start, samples = time.perf_counter(), 0
    for _ in range(batches):
        samples += len(next(iterator)["subject_id"])
    return samples / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--root", default="data/bench_phantom")
    parser.add_argument("--subjects", type=int, default=6)
    parser.add_argument("--size", type=int, default=128, help="phantom in-plane size")
    parser.add_argument("--frames", type=int, default=25, help="phantom frames per cycle")
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--tasks", nargs="+", default=["slice", "spatial"])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--augment", action="store_true")
    args = parser.parse_args(argv)

    phantom = {"subjects": args.subjects, "seed": 0, "size": [args.size, args.size], "frames": args.frames}
    print(f"torch threads {torch.get_num_threads()}; phantom {phantom}; crop {args.crop}")
    print(f"batch {args.batch_size}, augment {args.augment}, {args.warmup}+{args.batches} batches")
    for task in args.tasks:
        for workers in args.workers:
            dm = CardiacDataModule(
                root=args.root,
                phantom=phantom,
                task=task,
                crop_size=args.crop,
                batch_size=args.batch_size,
                num_workers=workers,
                train_factors=[2, 3, 4],
                augment=args.augment,
                samples_per_epoch=args.batch_size * (args.batches + args.warmup),
            )
            start = time.perf_counter()
            dm.prepare_data()
            prepared = time.perf_counter()
            dm.setup("fit")
            ready = time.perf_counter()
            rate = measure(dm, args.batches, args.warmup)
            print(
                f"task {task:8s} workers {workers}: {rate:8.1f} samples/s "
                f"(prepare_data {prepared - start:.1f} s, setup {ready - prepared:.1f} s)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
