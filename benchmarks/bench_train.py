"""Training throughput per model: samples/s of the optimizer steps (compute) and of the DataModule (data).

    .venv/bin/python benchmarks/bench_train.py                                   # every model, quick profile
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_train.py --threads 1 --steps 5 --batches 10
    .venv/bin/python benchmarks/bench_train.py --profile paper --models calid_spatial --out bench.csv  # GPU

What is measured and how (median step, serial vs overlapped loading, the data share) is said in
:mod:`calid_lightning.benchmarking.train_throughput`, which does the measuring; this is its command line.
The paper VAE trains without its discriminator for its first ``adv_warmup_steps``; time the adversarial phase
(two optimizer steps per batch) with ``--set model.init_args.adv_warmup_steps=0``.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from calid_lightning.benchmarking.train_throughput import (
    LATENT_MODELS,
    MODELS,
    Row,
    Timing,
    bench_model,
    quiet,
    throughput_table,
    untrained_vae_checkpoint,
    write_csv,
)

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--data", default=str(ROOT / "data_modules" / "phantom.yaml"), help="data config")
    parser.add_argument("--profile", default="quick", help="quick (the base configs) or paper")
    parser.add_argument(
        "--vae", help="VAE checkpoint for CaLID (default: runs/vae/<profile>/..., or untrained)"
    )
    parser.add_argument("--untrained-vae", action="store_true", help="always use an untrained VAE")
    parser.add_argument("--accelerator", choices=("cpu", "gpu", "auto"), default="auto")
    parser.add_argument(
        "--precisions", nargs="+", help="default: 32-true and bf16-mixed on a GPU, 32-true on CPU"
    )
    parser.add_argument("--steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed training steps first")
    parser.add_argument("--batches", type=int, default=20, help="timed loader batches")
    parser.add_argument("--data-warmup", type=int, default=2, help="untimed loader batches first")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--data-only", action="store_true", help="time the loaders only (no model steps)")
    parser.add_argument("--batch-size", type=int, help="override data.init_args.batch_size")
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides for every model (calid fit's --KEY=VALUE), e.g. data.init_args.crop_size=128",
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", help="also write the rows to this CSV")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    accelerator = args.accelerator
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    precisions = args.precisions or (["32-true", "bf16-mixed"] if accelerator == "gpu" else ["32-true"])
    quiet()
    overrides = list(args.set) + ([f"data.init_args.batch_size={args.batch_size}"] if args.batch_size else [])
    device = (
        torch.cuda.get_device_name(0) if accelerator == "gpu" else f"CPU, {torch.get_num_threads()} threads"
    )
    print(f"device {device}; profile {args.profile}; data {args.data}; precisions {precisions}")
    print(f"compute {args.warmup}+{args.steps} steps; data {args.data_warmup}+{args.batches} batches")
    timing = Timing(
        args.steps, args.warmup, args.batches, args.data_warmup, tuple(args.workers), args.data_only
    )
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        vae = None
        for name in args.models:
            model_overrides = list(overrides)
            if name in LATENT_MODELS:
                vae = vae or _vae_checkpoint(args, overrides, Path(tmp) / "vae.ckpt")
                model_overrides.append(f"model.init_args.vae_checkpoint={vae}")
            rows += bench_model(
                name, timing, model_overrides, accelerator, precisions, args.data, args.profile, EXPERIMENTS
            )
    print()
    print(throughput_table(rows))
    if args.out:
        print(f"wrote {write_csv(rows, args.out)}")
    return 0


def _vae_checkpoint(args: argparse.Namespace, overrides: Sequence[str], temp: Path) -> str:
    """``--vae``, else the profile's trained VAE when it exists, else an untrained one saved to ``temp``."""
    if args.vae:
        if not Path(args.vae).is_file():
            raise SystemExit(f"--vae {args.vae}: file not found")
        return args.vae
    trained = ROOT / "runs" / "vae" / args.profile / "checkpoints" / "last.ckpt"
    if trained.is_file() and not args.untrained_vae:
        print(f"CaLID models use the VAE {trained}")
        return str(trained)
    print("CaLID models use an untrained VAE of experiments/vae.yaml's shape")
    data_overrides = [item for item in overrides if item.startswith("data.")]
    return str(untrained_vae_checkpoint(temp, args.data, args.profile, data_overrides, EXPERIMENTS))


if __name__ == "__main__":
    raise SystemExit(main())
