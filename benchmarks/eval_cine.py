"""2D+T vs frame-by-frame: held-out slice cines of the test subjects, PSNR/SSIM and temporal coherence.

Every method gets the same sparse input (the kept slices of ``heldout_plan``) over the same frames (the
cycle subsampled to ``--frames`` frames, as the 2D+T quick profile trains) and is scored on the held-out
slices only: the 2D+T model generates each held-out slice's whole cine at once, the spatial model and linear
interpolation work frame by frame.

    .venv/bin/python benchmarks/eval_cine.py --cine runs/calid_2dt/quick/checkpoints/last.ckpt \\
        --spatial runs/calid_spatial/quick/checkpoints/last.ckpt --factor 4 --frames 8
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from calid_lightning.data.sampling import cine_frame_indices
from calid_lightning.evaluation.evaluate_cli import build_datamodule, data_init_args
from calid_lightning.evaluation.heldout import heldout_positions
from calid_lightning.evaluation.metrics import slice_heart_boxes, slice_metrics
from calid_lightning.evaluation.temporal import temporal_coherence_error
from calid_lightning.inference.upsample import EngineUpsampler
from calid_lightning.models.baselines import IMAGE_BASELINES
from calid_lightning.models.latent_interpolator import load_interpolator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cine", required=True, help="CaLID 2D+T checkpoint")
    parser.add_argument("--spatial", help="CaLID spatial checkpoint (frame-by-frame rows)")
    parser.add_argument("--data", default="data_modules/phantom.yaml")
    parser.add_argument("--factor", type=int, default=4)
    parser.add_argument("--frames", type=int, default=8, help="frames over the cycle (2D+T training count)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--split", default="test")
    args = parser.parse_args()

    methods = {"calid_2dt": EngineUpsampler(load_interpolator(args.cine), num_steps=args.steps)}
    if args.spatial:
        methods["calid_spatial"] = EngineUpsampler(load_interpolator(args.spatial), num_steps=args.steps)
    methods["linear"] = IMAGE_BASELINES["linear"]
    datamodule = build_datamodule(*data_init_args(args.data, [], args.factor))
    scores: dict[str, dict[str, list[float]]] = {m: {} for m in methods}
    for subject_id in datamodule.subjects(args.split):
        prepared = datamodule.prepared_subject(subject_id)
        kept, heldout = datamodule.heldout(subject_id)
        _, positions = heldout_positions(kept, heldout)
        frames, _ = cine_frame_indices(prepared.num_frames, args.frames, 1)
        image = torch.from_numpy(prepared.image[:, frames])  # (Z, T, H, W)
        truth = image[heldout]
        labels = None if prepared.labels is None else prepared.labels[heldout][:, frames]
        boxes = slice_heart_boxes(
            None if labels is None else labels.reshape(-1, *labels.shape[2:]), prepared.labels
        )
        for name, method in methods.items():
            sparse = image[kept]
            cine = name == "calid_2dt"
            stack = sparse[:, None, None] if cine else sparse[:, :, None]  # (Z,1,1,T,H,W) or (Z,T,1,H,W)
            start = time.perf_counter()
            pred = method.at(stack, positions)
            seconds = time.perf_counter() - start
            pred = pred[:, 0, 0] if cine else pred[:, :, 0]  # (Zh, T, H, W)
            flat = slice_metrics(
                pred.reshape(-1, 1, *pred.shape[2:]), truth.reshape(-1, 1, *truth.shape[2:]), boxes
            )
            row = scores[name]
            for key in ("psnr", "ssim", "psnr_heart", "ssim_heart"):
                row.setdefault(key, []).append(float(np.nanmean(flat[key].numpy())))
            row.setdefault("temporal_error", []).append(temporal_coherence_error(pred, truth, cyclic=True))
            row.setdefault("s/volume", []).append(seconds)
    keys = ("psnr", "ssim", "psnr_heart", "ssim_heart", "temporal_error", "s/volume")
    print(f"Held-out slice cines, x{args.factor}, {args.frames} frames, split {args.split}:\n")
    print("| method | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for name, row in scores.items():
        cells = []
        for key in keys:
            values = row[key]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.4g} +- {spread:.2g}")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
