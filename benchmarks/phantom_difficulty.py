"""How hard is the phantom? Rebuild dense labels from every k-th slice by nearest / linear interpolation.

On held-out subjects (seeds disjoint from the training ones), the acquired stack keeps every k-th dense
slice; the dropped dense slices between the first and last kept slice are predicted by the nearest kept
slice, by linear interpolation of the one-hot labels along z (then argmax; for two slices this picks the
nearer one, so it equals nearest up to ties) and by linear interpolation of per-class signed distance
maps (shape-based interpolation, the stronger classical baseline), at ED and ES. Prints the mean Dice per
class on the dropped slices only (the project's Dice, ``metrics.dice.dice_per_class``, of all dropped slices
of a frame as one volume), as a Markdown table. DATA.md: too easy if linear myocardium Dice >= 0.95.

    .venv/bin/python benchmarks/phantom_difficulty.py [--subjects 10 --seed 9999 --factor 4 --size 128]
        [--preview /tmp/phantom_preview.png]   # also draw the first subject: slices at ED/ES, through-plane
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt

from calid_lightning.data.phantom import PhantomConfig, generate_subject, subject_seed
from calid_lightning.data.subject import CLASS_KEYS, NUM_CLASSES
from calid_lightning.evaluation.table import markdown_table
from calid_lightning.metrics.dice import dice_per_class


def reconstruct(labels: np.ndarray, kept: np.ndarray, method: str) -> np.ndarray:
    """Predict labels ``(X, Y, Z)`` at every z in ``[kept[0], kept[-1]]`` from the slices at ``kept``."""
    z = np.arange(kept[0], kept[-1] + 1)
    hi = np.clip(np.searchsorted(kept, z, side="right"), 1, len(kept) - 1)
    lo = hi - 1
    r = ((z - kept[lo]) / (kept[hi] - kept[lo]))[None, None, :]
    if method == "nearest":
        return np.where(r < 0.5, labels[:, :, kept[lo]], labels[:, :, kept[hi]])
    if method == "linear":
        onehot = np.stack([labels == c for c in range(NUM_CLASSES)], axis=0).astype(np.float32)
        blend = (1 - r) * onehot[..., kept[lo]] + r * onehot[..., kept[hi]]
        return np.argmax(blend, axis=0).astype(labels.dtype)
    sdf = np.zeros((3, *labels.shape[:2], len(labels[0, 0])), np.float32)
    for k in kept:
        for i, c in enumerate(CLASS_KEYS):
            mask = labels[:, :, k] == c
            if mask.any():
                sdf[i, :, :, k] = distance_transform_edt(~mask) - distance_transform_edt(mask)
            else:
                sdf[i, :, :, k] = 1e3
    blend = (1 - r) * sdf[..., kept[lo]] + r * sdf[..., kept[hi]]
    best = np.argmin(blend, axis=0)
    return np.where(np.min(blend, axis=0) < 0, np.array(list(CLASS_KEYS))[best], 0).astype(labels.dtype)


def volume_dice(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Dice of each heart class (``CLASS_KEYS`` order) of the label volumes ``(X, Y, Z)`` as one set each.

    NaN for a class neither volume has (nothing to score; left out of the means).
    """
    volumes = [torch.from_numpy(v.astype(np.int64).reshape(1, v.shape[0], -1)) for v in (pred, truth)]
    return dice_per_class(*volumes, NUM_CLASSES)[0, list(CLASS_KEYS)].numpy()


def preview(subject, path: str) -> None:
    """Save short-axis slices (ED, ES), a through-plane cut and the LV volume curve of ``subject``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nz, es = subject.image.shape[2], subject.es_frame
    aspect = subject.dense_spacing[2] / subject.dense_spacing[0]
    fig, ax = plt.subplots(3, 4, figsize=(16, 12))
    for i, z in enumerate(np.linspace(nz * 0.15, nz * 0.85, 4).astype(int)):
        for row, frame in ((0, 0), (1, es)):
            ax[row, i].imshow(subject.image[:, :, z, frame].T, cmap="gray", origin="lower", vmin=0, vmax=1.3)
            ax[row, i].set_title(f"{'ED' if frame == 0 else 'ES'} dense slice {z}")
    mid = subject.image.shape[0] // 2
    ax[2, 0].imshow(
        subject.image[mid, :, :, 0].T, cmap="gray", origin="lower", vmin=0, vmax=1.3, aspect=aspect
    )
    ax[2, 0].set_title("through-plane (ED)")
    ax[2, 1].imshow(subject.labels[mid, :, :, 0].T, origin="lower", vmin=0, vmax=3, aspect=aspect)
    ax[2, 1].set_title("labels through-plane (ED)")
    ax[2, 2].imshow(subject.labels[:, :, subject.params["mid_slice"], 0].T, origin="lower", vmin=0, vmax=3)
    ax[2, 2].set_title("labels mid slice (ED)")
    ax[2, 3].plot(subject.params["lv_volume_curve_ml"])
    ax[2, 3].set_title(f"{subject.pathology}: LV volume (mL), EF {subject.params['ef_percent']:.0f} %")
    fig.tight_layout()
    fig.savefig(path, dpi=60)
    print(f"preview written to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=10)
    parser.add_argument("--seed", type=int, default=9999, help="held-out data-set seed (training uses 0)")
    parser.add_argument("--factor", type=int, default=4)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--frames", type=int, default=25)
    parser.add_argument("--pathologies", default="NOR")
    parser.add_argument("--preview", default=None, help="PNG path for a picture of the first subject")
    args = parser.parse_args()
    config = PhantomConfig(
        size=(args.size, args.size),
        frames=args.frames,
        sparse_factor=args.factor,
        pathologies=tuple(args.pathologies.split(",")),
        snr=None,
    )
    scores: dict[str, list[np.ndarray]] = {"nearest": [], "linear": [], "sdf": []}
    for i in range(1, args.subjects + 1):
        subject = generate_subject(subject_seed(args.seed, i), config)
        if i == 1 and args.preview:
            preview(subject, args.preview)
        nz = subject.labels.shape[2]
        kept = np.arange(subject.sparse_offset, nz, args.factor)
        z = np.arange(kept[0], kept[-1] + 1)
        dropped = ~np.isin(z, kept)
        for frame in (subject.ed_frame, subject.es_frame):
            truth = subject.labels[:, :, z, frame][:, :, dropped]
            for method in scores:
                pred = reconstruct(subject.labels[..., frame], kept, method)[:, :, dropped]
                scores[method].append(volume_dice(pred, truth))
    gap = args.factor * config.dense_spacing
    print(f"{args.subjects} held-out subjects (seed {args.seed}), gap {gap:g} mm, ED+ES, dropped slices only")
    rows = [[method, *(f"{m:.3f}" for m in np.nanmean(dice, axis=0))] for method, dice in scores.items()]
    header = ["method", *(f"Dice {key}" for key in CLASS_KEYS.values())]
    print(markdown_table(header, rows, right=[False] + [True] * len(CLASS_KEYS)))


if __name__ == "__main__":
    main()
