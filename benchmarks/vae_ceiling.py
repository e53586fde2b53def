"""The VAE reconstruction ceiling on held-out slices: the best any latent-space method can score.

Encodes and decodes the TRUE held-out slices of the test subjects (the same slices and frames that
``calid evaluate`` scores) with a trained VAE checkpoint and reports PSNR/SSIM against the truth. If a
latent interpolator scores near this ceiling, its remaining error is the autoencoder's, not the diffusion's.

    .venv/bin/python benchmarks/vae_ceiling.py --vae runs/vae/quick/checkpoints/last.ckpt \\
        --data data_modules/phantom.yaml --factor 4
"""

from __future__ import annotations

import argparse
import statistics

import torch

from calid_lightning.data.config import build_datamodule, data_init_args
from calid_lightning.evaluation.heldout import select_frames
from calid_lightning.evaluation.metrics import METRICS, slice_heart_boxes, slice_metrics
from calid_lightning.models.checkpoints import load_model
from calid_lightning.models.vae import VAEModule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vae", required=True, help="VAE checkpoint (with its computed latent scale factor)")
    parser.add_argument("--data", default="data_modules/phantom.yaml")
    parser.add_argument("--factor", type=int, default=4)
    parser.add_argument("--split", default="test")
    parser.add_argument("--frames", default="ed_es")
    args = parser.parse_args()

    vae = load_model(args.vae, VAEModule)
    datamodule = build_datamodule(*data_init_args(args.data, [], args.factor))
    per_subject: dict[str, list[float]] = {name: [] for name in METRICS}
    for subject_id in datamodule.subjects(args.split):
        prepared = datamodule.prepared_subject(subject_id)
        _, heldout = datamodule.heldout(subject_id)
        frames = select_frames(prepared, args.frames)
        truth = torch.from_numpy(prepared.image[heldout][:, frames]).reshape(-1, 1, *prepared.image.shape[2:])
        with torch.no_grad():
            recon = vae.decode(vae.encode(truth)).clamp(0, 1)
        labels = None if prepared.labels is None else prepared.labels[heldout][:, frames]
        boxes = slice_heart_boxes(
            None if labels is None else labels.reshape(-1, *labels.shape[2:]), prepared.labels
        )
        scores = slice_metrics(recon, truth, boxes)
        for name in METRICS:
            per_subject[name].append(float(scores[name].nanmean()))
    print(f"VAE reconstruction of held-out slices ({args.split}, x{args.factor}, frames {args.frames}):")
    for name, values in per_subject.items():
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"  {name:11s} {statistics.mean(values):.3f} +- {spread:.3f}")


if __name__ == "__main__":
    main()
