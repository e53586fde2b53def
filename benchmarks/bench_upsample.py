"""Seconds per whole-volume upsampling (default x4): image baselines, CaLID and the pixel-space interpolator.

    .venv/bin/python benchmarks/bench_upsample.py                      # untrained models, quick configs
    .venv/bin/python benchmarks/bench_upsample.py --checkpoint CALID.ckpt --pixel-checkpoint PIXEL.ckpt
    .venv/bin/python benchmarks/bench_upsample.py --device cuda --precision bf16 --size 128

CaLID (latent diffusion) and the pixel-space diffusion interpolator (same denoiser design, no VAE) run at the
SAME image size and the SAME number of DDIM steps on the same synthetic stack, in one process; the table ends
with the ratio pixel / CaLID of their median times (claim 3 of the paper). Without checkpoints both models
are freshly initialised from the quick configs' hyperparameters (experiments/vae.yaml,
calid_spatial.yaml, pixel_spatial.yaml): untrained weights cost exactly the same time as trained ones, and the
output says so. Each method runs ``--warmup`` times untimed, then ``--repeats`` timed runs; the table shows
the median (and min) wall time per volume, VAE encode/decode included for latent methods.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from calid_lightning.inference.baselines import IMAGE_BASELINES, ImageLinear
from calid_lightning.inference.interpolator import ConditionalMean, LatentBlend
from calid_lightning.inference.upsample import EngineUpsampler, factor_positions
from calid_lightning.models.calid_spatial import CaLIDSpatial
from calid_lightning.models.checkpoints import load_model
from calid_lightning.models.latent_interpolator import DENOISER_HPARAMS, LatentInterpolatorBase
from calid_lightning.models.pixel_diffusion import PixelSpatial

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
QUICK_CONFIGS = {
    "vae": EXPERIMENTS / "vae.yaml",
    "calid": EXPERIMENTS / "calid_spatial.yaml",
    "pixel": EXPERIMENTS / "pixel_spatial.yaml",
}
Method = Callable[[torch.Tensor, list[float]], torch.Tensor]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64, help="in-plane H = W (the quick profiles' 64)")
    parser.add_argument("--slices", type=int, default=10, help="acquired slices Z")
    parser.add_argument("--frames", type=int, default=1, help="cine frames (upsampled frame by frame)")
    parser.add_argument("--factor", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--checkpoint", help="CaLIDSpatial checkpoint (default: untrained, quick config)")
    parser.add_argument(
        "--pixel-checkpoint", help="PixelSpatial checkpoint (default: untrained, quick config)"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="DDIM steps for both diffusion models (default: CaLID's)"
    )
    parser.add_argument("--no-diffusion", action="store_true", help="time the image baselines only")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=("32", "bf16"), default="32", help="bf16: autocast")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return parser.parse_args(argv)


def config_init_args(path: str | Path) -> dict[str, Any]:
    """``model.init_args`` of an experiment YAML (its ``defaults`` composed) as a plain dict."""
    from calid_lightning.experiment_config import compose

    config = OmegaConf.create(compose(path))
    init = OmegaConf.select(config, "model.init_args")
    if init is None:
        raise ValueError(f"{path}: no model.init_args section (expected an experiment config)")
    return OmegaConf.to_container(init, resolve=True)


def untrained_models(
    configs: dict[str, str | Path] | None = None,
    vae_overrides: dict[str, Any] | None = None,
    denoiser_overrides: dict[str, Any] | None = None,
) -> tuple[CaLIDSpatial, PixelSpatial]:
    """Freshly initialised CaLID and pixel interpolators built from the experiment configs' hyperparameters.

    ``configs`` maps ``vae``, ``calid``, ``pixel`` to YAML paths (default :data:`QUICK_CONFIGS`); the
    overrides replace hyperparameters of the VAE and of both denoisers (e.g. tiny sizes in tests). The VAE is
    built from its hyperparameters (scale factor 1): no VAE checkpoint is read.
    """
    paths = {**QUICK_CONFIGS, **(configs or {})}
    vae_args = config_init_args(paths["vae"]) | (vae_overrides or {})
    calid_args = config_init_args(paths["calid"]) | (denoiser_overrides or {})
    pixel_args = config_init_args(paths["pixel"]) | (denoiser_overrides or {})
    calid_args.pop("vae_checkpoint", None)
    calid = CaLIDSpatial(vae_hparams=vae_args, **calid_args)
    if calid.residual:  # fitted at the start of training; any positive value costs the same time
        calid.residual_scale.fill_(1.0)
    return calid.eval(), PixelSpatial(**pixel_args).eval()


def bench_models(
    checkpoint: str | None, pixel_checkpoint: str | None, device: str
) -> tuple[CaLIDSpatial, PixelSpatial, bool]:
    """``(calid, pixel, both_trained)``: the given checkpoints, untrained quick-config models otherwise."""
    calid = load_model(checkpoint, CaLIDSpatial, map_location=device) if checkpoint else None
    pixel = load_model(pixel_checkpoint, PixelSpatial, map_location=device) if pixel_checkpoint else None
    if calid is None or pixel is None:
        fresh_calid, fresh_pixel = untrained_models()
        calid = fresh_calid if calid is None else calid
        pixel = fresh_pixel if pixel is None else pixel
    return calid, pixel, bool(checkpoint and pixel_checkpoint)


def autocast(device: str, precision: str) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on ``device`` for ``precision == "bf16"``, else nothing."""
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def time_method(run: Callable[[], torch.Tensor], warmup: int, repeats: int, device: str) -> list[float]:
    """Wall seconds of ``repeats`` runs after ``warmup`` untimed ones (CUDA synchronised)."""
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
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


def diffusion_methods(
    calid: CaLIDSpatial,
    pixel: PixelSpatial,
    steps: int,
    device: str,
    max_batch: int = 64,
    slice_spacing_mm: float = 10.0,
) -> dict[str, Method]:
    """CaLID (one sample; the conditional mean), its latent lerp / slerp and the pixel interpolator as
    ``(stack, positions) -> dense`` over acquired slices ``slice_spacing_mm`` apart."""
    common = {"max_batch": max_batch, "device": device}
    calid, pixel = calid.to(device), pixel.to(device)
    engines = {
        "latent lerp": EngineUpsampler(LatentBlend(calid, "lerp"), **common),
        "latent slerp": EngineUpsampler(LatentBlend(calid, "slerp"), **common),
        "calid": EngineUpsampler(calid, num_steps=steps, **common),
        "calid mean": EngineUpsampler(ConditionalMean(calid), **common),
        "pixel diffusion": EngineUpsampler(pixel, num_steps=steps, **common),
    }
    return {name: functools.partial(e.at, slice_spacing_mm=slice_spacing_mm) for name, e in engines.items()}


def image_methods(max_batch: int = 64) -> dict[str, Method]:
    """The image-space baselines as ``(stack, positions) -> dense``."""
    table: dict[str, Method] = {name: baseline.at for name, baseline in IMAGE_BASELINES.items()}
    table["linear (engine)"] = EngineUpsampler(ImageLinear(), max_batch=max_batch).at
    return table


def time_methods(
    methods: dict[str, Method],
    stack: torch.Tensor,
    positions: Sequence[float],
    warmup: int = 1,
    repeats: int = 3,
    device: str = "cpu",
    precision: str = "32",
) -> Iterator[tuple[str, list[float]]]:
    """Yield ``(name, seconds per run)`` for each method on the same stack, under ``precision``."""
    for name, method in methods.items():

        def run(method: Method = method) -> torch.Tensor:
            with torch.no_grad(), autocast(device, precision):
                return method(stack, list(positions))

        yield name, time_method(run, warmup, repeats, device)


def speed_ratio(times: dict[str, list[float]]) -> float:
    """Median pixel-space time over median CaLID time (how many times faster the latent model is)."""
    return statistics.median(times["pixel diffusion"]) / statistics.median(times["calid"])


def architecture_differences(calid: LatentInterpolatorBase, pixel: LatentInterpolatorBase) -> list[str]:
    """Names of the denoiser hyperparameters in which the two models differ (empty: same U-Net)."""

    def plain(value: Any) -> Any:
        return list(value) if isinstance(value, (list, tuple)) else value

    return [n for n in DENOISER_HPARAMS if plain(calid.hparams[n]) != plain(pixel.hparams[n])]


def parameter_count(model: torch.nn.Module) -> float:
    """Parameters of the trained denoiser (U-Net + ControlNet), in millions."""
    return sum(p.numel() for p in model.denoiser.parameters()) / 1e6


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = (args.slices, args.frames, 1, args.size, args.size)
    stack = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    positions = factor_positions(args.slices, args.factor)
    generated = (len(positions) - args.slices) * args.frames
    methods = image_methods(args.max_batch)
    if not args.no_diffusion:
        calid, pixel, trained = bench_models(args.checkpoint, args.pixel_checkpoint, args.device)
        steps = args.steps or int(calid.hparams.num_inference_steps)
        methods |= diffusion_methods(calid, pixel, steps, args.device, args.max_batch)
        latent = args.size // int(calid.vae.downsample_factor)
        print(
            f"CaLID: {args.checkpoint or 'untrained (experiments/calid_spatial.yaml, vae.yaml)'}; "
            f"denoiser {parameter_count(calid):.2f} M params on {latent}^2 latents"
        )
        print(
            f"pixel: {args.pixel_checkpoint or 'untrained (experiments/pixel_spatial.yaml)'}; "
            f"denoiser {parameter_count(pixel):.2f} M params on {args.size}^2 images"
        )
        if not trained:
            print("untrained weights time exactly like trained ones of the same configuration")
        differ = architecture_differences(calid, pixel)
        if differ:
            print(f"note: the two denoisers differ in {differ}: the ratio is not like for like")
        print(f"both diffusion models: {steps} DDIM steps, precision {args.precision}")
    print(
        f"x{args.factor} upsampling of {args.slices} slices x {args.frames} frame(s) at {args.size}^2 "
        f"({generated} generated slices), device {args.device}, threads {torch.get_num_threads()}, "
        f"median of {args.repeats} after {args.warmup} warm-up"
    )
    print(f"{'method':<18} {'s/volume':>10} {'min s':>10} {'ms/slice':>10}", flush=True)
    times: dict[str, list[float]] = {}
    run = time_methods(methods, stack, positions, args.warmup, args.repeats, args.device, args.precision)
    for name, seconds in run:
        times[name] = seconds
        median = statistics.median(seconds)
        print(
            f"{name:<18} {median:>10.4f} {min(seconds):>10.4f} {1000 * median / generated:>10.3f}", flush=True
        )
    if "calid" in times:
        print(f"\npixel / CaLID time ratio: {speed_ratio(times):.1f}x (same size, steps, device, precision)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
