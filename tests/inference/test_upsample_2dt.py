"""`calid upsample` with an inflated 2D+T checkpoint: a 4D cine in, the dense 4D cine out, whole cines per
slice."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from calid_lightning.cli import main as calid
from calid_lightning.inference.nifti_io import frames_from_cine, read_sparse_stack, std_path
from calid_lightning.models.calid_inflated import CaLIDInflated
from calid_lightning.models.calid_spatial import CaLIDSpatial
from checkpoints import save_checkpoint, tiny_vae_checkpoint

SPACING = (1.4, 1.6, 10.0)
DT = 0.035


def write_cine(path: Path, shape: tuple[int, int, int, int] = (12, 10, 3, 5)) -> Path:
    """A 4D (X, Y, Z, T) int16 cine with an oblique affine and a time zoom in seconds."""
    rng = np.random.default_rng(0)
    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("xyz", [20, -35, 50], degrees=True).as_matrix() @ np.diag(SPACING)
    affine[:3, 3] = (-40.0, 25.0, 60.0)
    image = nib.Nifti1Image((rng.random(shape) * 1000).astype(np.int16), affine)
    image.header.set_zooms((*SPACING, DT))
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, str(path))
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An inflated 2D+T checkpoint (a tiny spatial model plus temporal layers) as a plain dict (its kind must
    be detected from the weights)."""
    folder = tmp_path_factory.mktemp("inflated")
    spatial = CaLIDSpatial(
        vae_checkpoint=str(tiny_vae_checkpoint(folder / "vae.ckpt")),
        channels=(16, 32),
        attention_levels=(False, True),
        num_res_blocks=1,
        norm_num_groups=8,
        num_head_channels=8,
    )
    with torch.no_grad():
        for p in spatial.ema.module.unet.out.parameters():
            p.normal_(std=0.1)
    model = CaLIDInflated(spatial_checkpoint=str(save_checkpoint(spatial, folder / "spatial.ckpt")))
    return save_checkpoint(model, folder / "inflated.ckpt")


def test_cine_stack_layout_round_trip(tmp_path: Path) -> None:
    sparse = read_sparse_stack(write_cine(tmp_path / "cine.nii.gz"))
    cine = sparse.cine_stack
    assert cine.shape == (3, 1, 1, 5, 12, 10)
    assert torch.equal(cine[1, 0, 0, 4], sparse.stack[1, 4, 0])
    assert torch.equal(frames_from_cine(cine), sparse.stack)
    with pytest.raises(ValueError, match="cine stack"):
        frames_from_cine(sparse.stack)


def test_calid_upsample_4d_with_a_2dt_checkpoint(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    src = write_cine(tmp_path / "sparse.nii.gz")
    out = tmp_path / "dense.nii.gz"
    calls: list[tuple[int, ...]] = []
    original = CaLIDInflated.interpolate

    def spy(self, below, above, r, num_steps=None, generator=None, gap_mm=None):
        calls.append(tuple(below.shape))
        return original(self, below, above, r, num_steps=num_steps, generator=generator, gap_mm=gap_mm)

    monkeypatch.setattr(CaLIDInflated, "interpolate", spy)
    args = ["--checkpoint", str(checkpoint), "--input", str(src), "--output", str(out), "--factor", "2"]
    assert calid(["upsample", *args, "--steps", "2", "--samples", "2", "--quiet", "--device", "cpu"]) == 0
    assert "2D+T" in capsys.readouterr().out
    # one call per sample: one item per missing slice (2 gaps), all 5 frames, 12x10 padded to 16x16 -> 4x4
    assert calls == [(2, 4, 5, 4, 4)] * 2

    dense_image = nib.load(str(out))
    source = nib.load(str(src))
    dense = np.asanyarray(dense_image.dataobj)
    original_values = source.get_fdata(dtype=np.float32)
    assert dense.shape == (12, 10, 5, 5)  # (Z - 1) * K + 1 slices, every frame
    assert np.array_equal(dense[:, :, ::2], original_values)  # acquired slices bit-exact, every frame
    assert np.isfinite(dense).all() and not np.array_equal(dense[:, :, 1], dense[:, :, 0])
    assert dense_image.header.get_zooms() == pytest.approx((1.4, 1.6, 5.0, DT))
    assert dense_image.header.get_xyzt_units() == ("mm", "sec")
    np.testing.assert_allclose(dense_image.affine[:, 2], source.affine[:, 2] * [0.5, 0.5, 0.5, 1])
    np.testing.assert_allclose(dense_image.affine[:, [0, 1, 3]], source.affine[:, [0, 1, 3]])
    std = np.asanyarray(nib.load(str(std_path(out))).dataobj)
    assert std.shape == dense.shape and np.all(std[:, :, ::2] == 0) and std[:, :, 1::2].max() > 0


def test_max_batch_counts_frames_for_a_2dt_checkpoint(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--max-batch 5 with 5-frame cines: one whole cine per call (memory of 5 slices), not 5 cines."""
    src = write_cine(tmp_path / "sparse.nii.gz")
    calls: list[int] = []
    original = CaLIDInflated.interpolate

    def spy(self, below, above, r, num_steps=None, generator=None, gap_mm=None):
        calls.append(below.shape[0])
        return original(self, below, above, r, num_steps=num_steps, generator=generator, gap_mm=gap_mm)

    monkeypatch.setattr(CaLIDInflated, "interpolate", spy)
    args = ["--checkpoint", str(checkpoint), "--input", str(src), "--output", str(tmp_path / "d.nii.gz")]
    assert calid(["upsample", *args, "--factor", "2", "--steps", "2", "--max-batch", "5", "--quiet"]) == 0
    assert calls == [1, 1]  # 2 missing slices, one cine each call


def test_bad_checkpoint_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "notes.ckpt"
    bad.write_text("not a checkpoint")
    src = write_cine(tmp_path / "sparse.nii.gz")
    args = [
        "--checkpoint",
        str(bad),
        "--input",
        str(src),
        "--output",
        str(tmp_path / "o.nii.gz"),
        "--factor",
        "2",
    ]
    assert calid(["upsample", *args, "--device", "cpu"]) == 1
    assert "notes.ckpt" in capsys.readouterr().err


def test_progress_counts_slices_x_frames_then_decode_and_writes(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """2 missing slices x 5 frames per sample, one decode per sample, then the output and the std map."""
    src = write_cine(tmp_path / "sparse.nii.gz")
    args = ["--checkpoint", str(checkpoint), "--input", str(src), "--output", str(tmp_path / "d.nii.gz")]
    assert calid(["upsample", *args, "--factor", "2", "--steps", "1", "--samples", "2"]) == 0
    err = capsys.readouterr().err
    total = 2 * (2 * 5 + 1) + 2
    assert "upsample 2 slices x 5 frames (writing)" in err and f"{total}/{total}" in err
    assert f"{total + 1}/" not in err


def test_progress_of_an_image_baseline_on_a_cine(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = write_cine(tmp_path / "sparse.nii.gz")
    args = ["--method", "linear", "--input", str(src), "--output", str(tmp_path / "d.nii.gz")]
    assert calid(["upsample", *args, "--factor", "4"]) == 0
    total = 6 * 5 + 1 + 1  # 6 missing slices x 5 frames (frame by frame), one decode pass, one file
    assert f"{total}/{total}" in capsys.readouterr().err
