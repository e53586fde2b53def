"""Visual check of the phantom acquisition: slices, their k-space magnitude and a myocardial edge profile.

Rows: apex, mid and base slices of the acquired (sparse) stack at ED and ES; columns: the image, the log
magnitude of its 2D spectrum (the Tukey-windowed, truncated k-space plus noise) and the intensity along a
line from the LV centre through the myocardium (labels shaded).

    .venv/bin/python benchmarks/phantom_figure.py [--seed 7 --out docs/figures/phantom_acquisition.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from calid_lightning.data.phantom import PhantomConfig, generate_subject
from calid_lightning.data.subject import LV_CAVITY, MYOCARDIUM
from calid_lightning.io_safety import atomic_path


def edge_profile(image: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Intensities and labels along +x from the LV cavity centre (empty when the slice has no cavity)."""
    cavity = np.argwhere(labels == LV_CAVITY)
    if cavity.size == 0:
        return np.array([]), np.array([])
    cx, cy = cavity.mean(axis=0).round().astype(int)
    stop = min(image.shape[0], cx + 30)
    return image[cx:stop, cy], labels[cx:stop, cy]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("docs/figures/phantom_acquisition.png"))
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = generate_subject(args.seed, PhantomConfig(frames=25))
    lv = (s.sparse_labels == LV_CAVITY).any(axis=(0, 1))  # (Z, T)
    slices = np.flatnonzero(lv[:, 0] & lv[:, s.es_frame])
    picks = [slices[1], slices[len(slices) // 2], slices[-2]]
    rows = [
        (z, f, name) for z, name in zip(picks, ("apex", "mid", "base"), strict=True) for f in (0, s.es_frame)
    ]
    fig, ax = plt.subplots(len(rows), 3, figsize=(11, 3.2 * len(rows)))
    for r, (z, frame, name) in enumerate(rows):
        img, lab = s.sparse_image[:, :, z, frame], s.sparse_labels[:, :, z, frame]
        phase = "ED" if frame == s.ed_frame else "ES"
        ax[r, 0].imshow(img.T, cmap="gray", origin="lower", vmin=0, vmax=np.percentile(s.sparse_image, 99.5))
        ax[r, 0].set_title(f"{name} slice {z} ({phase})")
        spectrum = np.abs(np.fft.fftshift(np.fft.fft2(img)))
        ax[r, 1].imshow(np.log10(spectrum + 1e-3).T, cmap="magma", origin="lower")
        ax[r, 1].set_title("log |k-space|")
        values, labels = edge_profile(img, lab)
        mm = np.arange(values.size) * s.spacing[0]
        ax[r, 2].plot(mm, values, "k.-")
        for label, colour in ((LV_CAVITY, "tab:red"), (MYOCARDIUM, "tab:green")):
            ax[r, 2].fill_between(
                mm, 0, values.max(initial=1), where=labels == label, color=colour, alpha=0.15
            )
        ax[r, 2].set_title("LV centre -> wall (red: LV, green: myo)")
        ax[r, 2].set_xlabel("mm")
        for a in ax[r, :2]:
            a.set_xticks([])
            a.set_yticks([])
    fig.suptitle(
        f"phantom seed {args.seed}: {s.spacing[0]:.2f} mm pixels, {s.params['slice_thickness_mm']} mm slices "
        f"every {s.spacing[2]:g} mm, SNR {s.params['snr']:.0f}, k-space filter {s.params['kspace_filter']}"
    )
    fig.tight_layout()
    with atomic_path(args.out) as temp:
        fig.savefig(temp, dpi=70)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
