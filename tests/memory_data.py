"""Subjects and DataModules held in memory for tests: a synthetic subject, a reader over a list of subjects,
a DataModule that reads from it, and the DataModule as ``calid fit -c ...`` builds it.

Import as ``from memory_data import make_subject, make_dm`` (tests/ is on the path, like ``checkpoints``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from calid_lightning.data.datamodule import CardiacDataModule
from calid_lightning.data.subject import CardiacSubject, DataError


def make_subject(
    subject_id: str,
    seed: int = 0,
    shape: tuple[int, int, int, int] = (40, 36, 12, 6),
    center: tuple[int, int] = (20, 18),
    labels: bool = True,
    dense_factor: int = 0,
) -> CardiacSubject:
    """A static textured background with a pulsating bright disc (the 'heart') ringed by darker muscle."""
    nx, ny, nz, nt = shape
    rng = np.random.default_rng(seed)
    xs, ys = np.indices((nx, ny))
    dist = np.hypot(xs - center[0], ys - center[1])

    def stack(num_slices: int) -> tuple[np.ndarray, np.ndarray]:
        image = np.repeat(rng.uniform(0.1, 0.4, (nx, ny, 1, 1)), num_slices, 2).repeat(nt, 3)
        label = np.zeros((nx, ny, num_slices, nt), np.uint8)
        for t in range(nt):
            radius = 5 + 2 * np.cos(2 * np.pi * t / nt)
            for z in range(num_slices):
                r = radius * (0.6 + 0.4 * z / max(1, num_slices - 1))
                label[dist <= r + 2, z, t] = 2
                label[dist <= r, z, t] = 1
        image = np.where(label == 1, 1.0, np.where(label == 2, 0.3, image))
        return (image + rng.normal(0, 0.02, image.shape)).astype(np.float32), label

    image, label = stack(nz)
    subject = CardiacSubject(
        subject_id=subject_id,
        image=image,
        spacing=(1.5, 1.5, 10.0),
        affine=np.diag([1.5, 1.5, 10.0, 1.0]),
        ed_frame=0,
        es_frame=nt // 2,
        source=Path(f"/memory/{subject_id}"),
        labels=label if labels else None,
        labelled_frames=(0, nt // 2) if labels else (),
    )
    if dense_factor:
        subject.dense_image, subject.dense_labels = stack((nz - 1) * dense_factor + 1)
        subject.dense_spacing = (1.5, 1.5, 10.0 / dense_factor)
    return subject


class MemoryReader:
    """A reader over subjects held in memory (the reader protocol: list_subjects / read)."""

    def __init__(self, subjects: list[CardiacSubject], broken: tuple[str, ...] = ()) -> None:
        self.subjects = {s.subject_id: s for s in subjects}
        self.broken = broken
        self.root = Path("/memory")
        self.lenient = False
        self.reads = 0

    def list_subjects(self) -> list[str]:
        return sorted(self.subjects)

    def read(self, subject_id: str) -> CardiacSubject:
        self.reads += 1
        if subject_id in self.broken:
            raise DataError(f"/memory/{subject_id}/{subject_id}_4d.nii.gz", "NaN voxels")
        return self.subjects[subject_id]


def make_dm(subjects: list[CardiacSubject], tmp_path: Path, **kwargs) -> CardiacDataModule:
    """A DataModule whose reader serves ``subjects`` from memory (or the ``reader`` given)."""
    reader = kwargs.pop("reader", None) or MemoryReader(subjects)
    defaults = dict(layout="phantom", root=str(tmp_path), crop_size=16, batch_size=4, samples_per_epoch=8)
    dm = CardiacDataModule(**{**defaults, **kwargs})
    dm.loader._reader = reader
    return dm


def parse_cli(configs: list[str], overrides: tuple[str, ...] = ()) -> CardiacDataModule:
    """Instantiate the DataModule the way ``calid fit -c A -c B`` does (calid's LightningCLI, defaults
    composed)."""
    from unittest import mock

    from calid_lightning.cli import calid_cli

    args = [arg for config in configs for arg in ("-c", config)] + list(overrides)
    with mock.patch("sys.argv", ["calid"]):
        return calid_cli(args, seed_everything_default=7, run=False).datamodule
