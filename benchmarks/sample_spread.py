"""How much CaLID's samples differ from each other, per DDIM step count: the variety PSNR does not see.

With the fixed DDIM loop fewer steps score higher PSNR because the sample moves toward the conditional mean;
the Laplacian "HF energy" of the table does not see that move. This measures it: for every held-out slice of
the split (the slices and frames ``calid evaluate`` scores) the per-pixel std over ``--seeds`` samples (seeds
0..), averaged over the slice and over its heart box, then over slices and subjects (``calid evaluate --steps
N`` gives the PSNR side).

    .venv/bin/python benchmarks/sample_spread.py --split val --factor 4 --steps 2 5 10 50 \
        --checkpoint runs/table/quick/phantom/calid_spatial/checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np

from calid_lightning.data.config import build_datamodule, data_init_args
from calid_lightning.evaluation.figures import SubjectView, in_box, sample_stats
from calid_lightning.evaluation.heldout import select_frames
from calid_lightning.inference.methods import MethodModels, build_method


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="CaLID spatial checkpoint")
    parser.add_argument("--data", default="data_modules/phantom.yaml")
    parser.add_argument("--split", default="val")
    parser.add_argument("--factor", type=int, default=4)
    parser.add_argument("--frames", default="ed_es")
    parser.add_argument("--steps", type=int, nargs="+", default=[2, 5, 10, 50])
    parser.add_argument("--seeds", type=int, default=4, help="samples per slice (>= 2)")
    args = parser.parse_args()
    if args.seeds < 2:
        parser.error(f"--seeds must be >= 2 (a std needs two samples), got {args.seeds}")

    engine = build_method("calid", MethodModels(checkpoint=args.checkpoint))
    datamodule = build_datamodule(*data_init_args(args.data, [], args.factor))
    print(
        f"CaLID sample spread over {args.seeds} seeds ({args.split}, x{args.factor}, frames {args.frames}):"
    )
    print("steps | std whole slice | std heart box")
    for steps in args.steps:
        per_subject: dict[str, list[float]] = {"std": [], "std_heart": []}
        for subject_id in datamodule.subjects(args.split):
            prepared = datamodule.prepared_subject(subject_id)
            kept, heldout = datamodule.heldout(subject_id)
            values: dict[str, list[float]] = {key: [] for key in per_subject}
            for frame in select_frames(prepared, args.frames):
                view = SubjectView.of(prepared, kept, heldout, frame)
                _, std = sample_stats(engine, view, steps, 0, args.seeds)
                for z in view.heldout:
                    values["std"].append(float(std[z].mean()))
                    values["std_heart"].append(float(in_box(std[z], view.box(int(z))).mean()))
            for key, subject_values in values.items():
                per_subject[key].append(float(np.mean(subject_values)))
        means = {key: statistics.fmean(v) for key, v in per_subject.items()}
        print(f"{steps:5d} | {means['std']:.4f} | {means['std_heart']:.4f}")


if __name__ == "__main__":
    main()
