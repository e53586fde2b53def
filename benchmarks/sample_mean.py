"""One CaLID sample against the mean of N samples on the held-out slices: what stochasticity costs in PSNR.

A diffusion sample is a draw from the model's conditional distribution; PSNR rewards the conditional mean.
This scores, on the test subjects' held-out slices, a single sample (seed 0) and the mean of ``--samples``
samples (seeds 0..N-1), with the same checkpoint and DDIM steps, next to linear interpolation.

    .venv/bin/python benchmarks/sample_mean.py \\
        --checkpoint runs/table/quick/phantom/calid_spatial/checkpoints/last.ckpt --factor 4 --samples 4
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch

from calid_lightning.evaluation.evaluate_cli import build_datamodule, data_init_args, select_frames
from calid_lightning.evaluation.heldout import build_method, heldout_positions, with_sampling
from calid_lightning.evaluation.metrics import METRICS, slice_heart_boxes, slice_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="CaLIDSpatial checkpoint")
    parser.add_argument("--data", default="data_modules/phantom.yaml")
    parser.add_argument("--factor", type=int, default=4)
    parser.add_argument("--split", default="test")
    parser.add_argument("--frames", default="ed")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()

    datamodule = build_datamodule(*data_init_args(args.data, [], args.factor))
    calid, linear = build_method("calid", args.checkpoint), build_method("linear")
    rows: dict[str, dict[str, list[float]]] = {}
    for subject_id in datamodule.subjects(args.split):
        prepared = datamodule.prepared_subject(subject_id)
        kept, heldout = datamodule.heldout(subject_id)
        frames = select_frames(prepared, args.frames)
        _, positions = heldout_positions(kept, heldout)
        stack = torch.from_numpy(np.ascontiguousarray(prepared.image[kept][:, frames])).unsqueeze(2)
        truth = torch.from_numpy(np.ascontiguousarray(prepared.image[heldout][:, frames])).unsqueeze(2)
        labels = prepared.labels
        true_labels = None if labels is None else labels[heldout][:, frames].reshape(-1, *labels.shape[-2:])
        boxes = slice_heart_boxes(true_labels, labels)
        with torch.no_grad():
            samples = [
                with_sampling(calid, args.steps, seed).at(stack, positions) for seed in range(args.samples)
            ]
        outputs = {
            "calid, 1 sample": samples[0],
            f"calid, mean of {args.samples}": torch.stack(samples).mean(0),
            "linear": linear.at(stack, positions),
        }
        for name, generated in outputs.items():
            scores = slice_metrics(generated.flatten(0, 1), truth.flatten(0, 1), boxes)
            for metric in METRICS:
                rows.setdefault(name, {}).setdefault(metric, []).append(float(np.nanmean(scores[metric])))
    print(
        f"held-out slices, x{args.factor}, frames {args.frames}, {args.steps} DDIM steps, mean over subjects"
    )
    print("| method | " + " | ".join(METRICS) + " |\n|---" * 1 + "|---" * len(METRICS) + "|")
    for name, metrics in rows.items():
        cells = " | ".join(f"{statistics.fmean(metrics[m]):.3f}" for m in METRICS)
        print(f"| {name} | {cells} |")


if __name__ == "__main__":
    main()
