"""The DDIM sampler fix on a trained CaLID: MONAI 1.6's set_timesteps/step loop against ours, per step count.

MONAI 1.6 ``DDIMScheduler.set_timesteps(n)`` lists ``linspace(999, 0, n)`` while ``step()`` jumps by
``1000 // n``, so the sample lands at another noise level than the one the model is told next (and keeps
noise at the end). ``calid_lightning.models.diffusion.ddim_sample`` steps to the next listed timestep. This
scores CaLID on the test subjects' held-out slices with both loops at each ``--steps`` value.

    .venv/bin/python benchmarks/sampler_ablation.py \\
        --checkpoint runs/table/quick/phantom/calid_spatial/checkpoints/last.ckpt --factor 4 --steps 5 20 50
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
from monai.networks.schedulers import DDIMScheduler
from torch import Tensor

import calid_lightning.models.latent_interpolator as latent_interpolator
from calid_lightning.data.config import build_datamodule, data_init_args
from calid_lightning.evaluation.heldout import evaluate_run, select_frames
from calid_lightning.inference.methods import MethodModels, build_method


@torch.no_grad()
def monai_ddim_sample(
    model_fn: Callable[[Tensor, Tensor], Tensor], scheduler: DDIMScheduler, noise: Tensor, num_steps: int
) -> Tensor:
    """The loop this project used before the fix: MONAI's own ``set_timesteps`` and ``step``."""
    scheduler.set_timesteps(num_steps, device=noise.device)
    sample = noise
    for t in scheduler.timesteps:
        timesteps = torch.full((noise.shape[0],), int(t), device=noise.device, dtype=torch.long)
        sample, _ = scheduler.step(model_fn(sample, timesteps), int(t), sample)
    return sample


def score(args: argparse.Namespace, steps: int) -> dict[str, float]:
    """Mean over test subjects of CaLID's held-out PSNR and SSIM with ``steps`` DDIM steps."""
    datamodule = build_datamodule(*data_init_args(args.data, [], args.factor))
    calid = build_method("calid", MethodModels(checkpoint=args.checkpoint))
    psnr, ssim = [], []
    for subject_id in datamodule.subjects(args.split):
        prepared = datamodule.prepared_subject(subject_id)
        kept, heldout = datamodule.heldout(subject_id)
        frames = select_frames(prepared, args.frames)
        run = evaluate_run("calid", calid, prepared, kept, heldout, frames, steps, seed=0)
        psnr.append(statistics.fmean(r["psnr"] for r in run.records))
        ssim.append(statistics.fmean(r["ssim"] for r in run.records))
    return {"psnr": statistics.fmean(psnr), "ssim": statistics.fmean(ssim)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="CaLIDSpatial checkpoint")
    parser.add_argument("--data", default="data_modules/phantom.yaml")
    parser.add_argument("--factor", type=int, default=4)
    parser.add_argument("--split", default="test")
    parser.add_argument("--frames", default="ed_es")
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 20, 50])
    args = parser.parse_args()

    fixed = latent_interpolator.ddim_sample
    print(f"CaLID held-out slices, {args.split}, x{args.factor}, frames {args.frames}")
    print("| DDIM steps | MONAI 1.6 loop PSNR / SSIM | fixed loop PSNR / SSIM |")
    print("|---:|---|---|")
    for steps in args.steps:
        latent_interpolator.ddim_sample = monai_ddim_sample
        try:
            before = score(args, steps)
        finally:
            latent_interpolator.ddim_sample = fixed
        after = score(args, steps)
        cells = [f"{run['psnr']:.2f} / {run['ssim']:.3f}" for run in (before, after)]
        print(f"| {steps} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
