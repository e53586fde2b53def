"""The model carries its preprocessing: a Trainer checkpoint records the data module's intensity percentiles,
``calid upsample`` normalises with them (the default for a checkpoint without the record, said on stderr),
and training and inference normalise a stack with the one function."""

from __future__ import annotations

from pathlib import Path

import lightning
import nibabel as nib
import numpy as np
import pytest
import torch

import calid_lightning.inference.nifti_io as nifti_io
from calid_lightning.checkpoint_file import read_checkpoint
from calid_lightning.cli import main as calid
from calid_lightning.data.datamodule import CardiacDataModule
from calid_lightning.data.preprocess import DEFAULT_PERCENTILES, intensity_range
from calid_lightning.data.subject import CardiacSubject, DataError
from calid_lightning.inference.nifti_io import (
    TrainedPreprocessing,
    read_sparse_stack,
    trained_preprocessing,
)
from calid_lightning.models.calid_spatial import CaLIDSpatial
from checkpoints import TINY_UNET, quiet_trainer, save_checkpoint, tiny_vae_checkpoint
from memory_data import MemoryReader

PERCENTILES = (5.0, 95.0)
"""Not the default, so a path that ignored the setting would normalise differently."""


def make_subject(subject_id: str, shape: tuple[int, int, int, int], seed: int = 0) -> CardiacSubject:
    """A noisy textured stack with a pulsating bright disc labelled LV, centred in-plane."""
    nx, ny, nz, nt = shape
    rng = np.random.default_rng(seed)
    xs, ys = np.indices((nx, ny))
    dist = np.hypot(xs - nx // 2, ys - ny // 2)
    radius = 4 + 2 * np.cos(2 * np.pi * np.arange(nt) / nt)
    labels = (dist[:, :, None, None] <= radius).astype(np.uint8).repeat(nz, 2)
    image = rng.uniform(100, 400, (nx, ny, 1, 1)) + 600 * labels + rng.normal(0, 20, (nx, ny, nz, nt))
    return CardiacSubject(
        subject_id=subject_id,
        image=image.astype(np.float32),
        spacing=(1.5, 1.5, 10.0),
        affine=np.diag([1.5, 1.5, 10.0, 1.0]),
        ed_frame=0,
        es_frame=nt // 2,
        source=Path(f"/memory/{subject_id}"),
        labels=labels,
        labelled_frames=(0, nt // 2),
    )


def memory_datamodule(subjects: list[CardiacSubject], root: Path, **kwargs: object) -> CardiacDataModule:
    """A spatial-task DataModule whose reader serves ``subjects`` from memory."""
    settings = {"root": str(root), "crop_size": 16, "batch_size": 2, "samples_per_epoch": 2, **kwargs}
    datamodule = CardiacDataModule(**settings)
    datamodule.loader._reader = MemoryReader(subjects)
    return datamodule


def write_stack(path: Path, image: np.ndarray, spacing=(1.4, 1.6, 10.0)) -> Path:
    affine = np.diag([*spacing, 1.0])
    nib.save(nib.Nifti1Image(image.astype(np.float32), affine), str(path))
    return path


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CaLID fitted for one step with ``data.intensity_percentiles`` (5, 95), saved by its Trainer."""
    folder = tmp_path_factory.mktemp("trained")
    subjects = [make_subject(f"s{i}", (20, 20, 12, 4), seed=i) for i in range(6)]
    datamodule = memory_datamodule(subjects, folder, intensity_percentiles=PERCENTILES)
    torch.manual_seed(0)
    model = CaLIDSpatial(vae_checkpoint=str(tiny_vae_checkpoint(folder / "vae.ckpt")), **TINY_UNET)
    trainer = quiet_trainer(folder, max_steps=1, limit_val_batches=0)
    trainer.fit(model, datamodule=datamodule)
    trainer.save_checkpoint(folder / "calid.ckpt")
    return folder / "calid.ckpt"


@pytest.fixture
def recorded_ranges(monkeypatch: pytest.MonkeyPatch) -> list[tuple[tuple[float, float], tuple]]:
    """Every ``(percentiles, (low, high))`` the inference reader normalises with."""
    calls: list[tuple[tuple[float, float], tuple]] = []

    def spy(image: np.ndarray, percentiles: tuple[float, float] = DEFAULT_PERCENTILES) -> tuple:
        result = intensity_range(image, percentiles)
        calls.append((tuple(percentiles), result))
        return result

    monkeypatch.setattr(nifti_io, "intensity_range", spy)
    return calls


def upsample(checkpoint: Path, src: Path, out: Path) -> int:
    args = ["--checkpoint", str(checkpoint), "--input", str(src), "--output", str(out), "--factor", "2"]
    return calid(["upsample", *args, "--steps", "1", "--quiet", "--device", "cpu"])


def test_trainer_checkpoint_records_the_data_modules_percentiles(trained_checkpoint: Path) -> None:
    record = read_checkpoint(trained_checkpoint)[nifti_io.DATAMODULE_HPARAMS]
    assert tuple(record["intensity_percentiles"]) == PERCENTILES and record["pixel_spacing"] is None
    assert trained_preprocessing(trained_checkpoint) == TrainedPreprocessing(
        percentiles=PERCENTILES, pixel_spacing=None, recorded=True, checkpoint=trained_checkpoint
    )


def test_upsample_normalises_with_the_checkpoints_percentiles(
    trained_checkpoint: Path, tmp_path: Path, recorded_ranges: list, capsys: pytest.CaptureFixture
) -> None:
    image = np.random.default_rng(1).uniform(0, 1000, (12, 10, 3)).astype(np.float32)
    src = write_stack(tmp_path / "sparse.nii.gz", image)
    assert upsample(trained_checkpoint, src, tmp_path / "dense.nii.gz") == 0
    expected = tuple(float(v) for v in np.percentile(image, PERCENTILES))
    assert recorded_ranges == [(PERCENTILES, pytest.approx(expected))]
    assert "warning" not in capsys.readouterr().err


def test_old_checkpoint_without_the_record_uses_the_default_and_says_so(
    tmp_path: Path, recorded_ranges: list, capsys: pytest.CaptureFixture
) -> None:
    torch.manual_seed(0)
    model = CaLIDSpatial(vae_checkpoint=str(tiny_vae_checkpoint(tmp_path / "vae.ckpt")), **TINY_UNET)
    old = save_checkpoint(model, tmp_path / "old.ckpt")  # no datamodule_hyper_parameters
    assert trained_preprocessing(old) == TrainedPreprocessing(checkpoint=old)
    src = write_stack(tmp_path / "sparse.nii.gz", np.random.default_rng(2).uniform(0, 9, (12, 10, 3)))
    assert upsample(old, src, tmp_path / "dense.nii.gz") == 0
    assert [percentiles for percentiles, _ in recorded_ranges] == [DEFAULT_PERCENTILES]
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "old.ckpt" in warnings[0] and "default [1.0, 99.5]" in warnings[0]


def test_data_module_settings_without_percentiles_get_the_default(tmp_path: Path) -> None:
    """Settings of a data module without the field (not a CardiacDataModule): the default, said as missing."""
    path = tmp_path / "other.ckpt"
    hparams = {nifti_io.DATAMODULE_HPARAMS: {"batch_size": 4}, "state_dict": {}}
    torch.save({**hparams, "pytorch-lightning_version": lightning.__version__}, path)
    assert trained_preprocessing(path) == TrainedPreprocessing(checkpoint=path)


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ({"intensity_percentiles": [95.0, 5.0]}, "intensity_percentiles"),
        ({"intensity_percentiles": [1.0, 101.0]}, "intensity_percentiles"),
        ({"intensity_percentiles": "1,99"}, "intensity_percentiles"),
        ({"pixel_spacing": -1.5}, "pixel_spacing"),
    ],
    ids=["reversed", "over-100", "text", "negative-spacing"],
)
def test_invalid_record_is_an_error_naming_file_and_field(tmp_path: Path, record: dict, field: str) -> None:
    path = tmp_path / "bad.ckpt"
    torch.save({nifti_io.DATAMODULE_HPARAMS: record, "state_dict": {}}, path)
    with pytest.raises(DataError, match=f"bad.ckpt: {nifti_io.DATAMODULE_HPARAMS}.{field}"):
        trained_preprocessing(path)


@pytest.mark.parametrize("percentiles", [(95.0, 5.0), (0.0, 0.0), (-1.0, 50.0), (1.0, 2.0, 3.0)])
def test_data_module_refuses_invalid_percentiles(tmp_path: Path, percentiles: tuple) -> None:
    with pytest.raises(ValueError, match=r"data.intensity_percentiles must be two percentiles"):
        CardiacDataModule(root=str(tmp_path), intensity_percentiles=percentiles)


def test_training_and_upsample_normalise_a_stack_identically(tmp_path: Path) -> None:
    """A 4.1M-voxel cine (the old training path subsampled above 4M voxels, inference did not) prepared by
    a DataModule with (5, 95) and read back through a checkpoint that records that DataModule: equal."""
    subject = make_subject("big", (128, 128, 10, 25))
    datamodule = memory_datamodule([subject], tmp_path, crop_size=128, intensity_percentiles=PERCENTILES)
    prepared = datamodule.prepared_subject("big")
    assert prepared.crop_origin == (0, 0)  # the crop is the whole field of view
    checkpoint = tmp_path / "model.ckpt"
    torch.save({nifti_io.DATAMODULE_HPARAMS: dict(datamodule.hparams), "state_dict": {}}, checkpoint)
    preprocessing = trained_preprocessing(checkpoint)
    sparse = read_sparse_stack(write_stack(tmp_path / "big.nii", subject.image), preprocessing.percentiles)
    assert np.array_equal(sparse.stack[:, :, 0].numpy(), prepared.image)
    exact = np.percentile(subject.image, PERCENTILES)
    assert (sparse.low, sparse.high) == tuple(float(v) for v in exact)


def test_spacing_other_than_the_trained_pixel_spacing_is_a_warning(tmp_path: Path) -> None:
    image = np.random.default_rng(3).uniform(0, 9, (8, 8, 3))
    near = read_sparse_stack(write_stack(tmp_path / "near.nii.gz", image, spacing=(1.4, 1.6, 10.0)))
    far = read_sparse_stack(write_stack(tmp_path / "far.nii.gz", image, spacing=(0.9, 0.9, 10.0)))
    trained = TrainedPreprocessing(pixel_spacing=1.5, recorded=True, checkpoint=tmp_path / "m.ckpt")
    assert trained.warnings(near) == []  # within 10 %
    [warning] = trained.warnings(far)
    assert "far.nii.gz: in-plane spacing 0.9 x 0.9 mm" in warning and "1.5 mm" in warning
    assert TrainedPreprocessing(recorded=True, checkpoint=tmp_path / "m.ckpt").warnings(far) == []
    assert TrainedPreprocessing().warnings(far) == []  # a baseline method: no checkpoint, nothing to match


def test_upsample_gives_a_gap_conditioned_model_the_acquired_spacing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """x2 of slices 8 mm apart: every call of the model bridges 8 mm (one bisection level)."""
    torch.manual_seed(0)
    vae = tiny_vae_checkpoint(tmp_path / "vae.ckpt")
    model = CaLIDSpatial(vae_checkpoint=str(vae), **TINY_UNET, gap_conditioning=True)
    checkpoint = save_checkpoint(model, tmp_path / "gap.ckpt")
    gaps: list[torch.Tensor] = []
    original = CaLIDSpatial.interpolate

    def spy(self, below, above, r, num_steps=None, generator=None, gap_mm=None):
        gaps.append(gap_mm)
        return original(self, below, above, r, num_steps, generator, gap_mm)

    monkeypatch.setattr(CaLIDSpatial, "interpolate", spy)
    image = np.random.default_rng(3).uniform(0, 9, (12, 10, 3))
    src = write_stack(tmp_path / "sparse.nii.gz", image, spacing=(1.4, 1.6, 8.0))
    assert upsample(checkpoint, src, tmp_path / "dense.nii.gz") == 0
    assert len(gaps) == 1 and gaps[0].tolist() == [8.0, 8.0]
