"""Dense NIfTI geometry (nibabel and SimpleITK), exact acquired voxels, bad input, `calid upsample`."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy.spatial.transform import Rotation

from calid_lightning.cli import main as calid
from calid_lightning.data.preprocess import normalise_intensity
from calid_lightning.data.subject import DataError
from calid_lightning.inference.baselines import linear_upsample
from calid_lightning.inference.nifti_io import (
    read_sparse_stack,
    std_path,
    write_dense_stack,
    write_std_map,
)
from calid_lightning.inference.upsample import factor_positions, spacing_positions
from checkpoints import TINY_UNET, save_checkpoint, tiny_vae_checkpoint

SPACING = (1.4, 1.6, 10.0)
ORIGIN = (-40.0, 25.0, 60.0)
ROTATION = Rotation.from_euler("xyz", [20, -35, 50], degrees=True).as_matrix()
LPS = np.diag([-1.0, -1.0, 1.0])


def oblique_affine(spacing: tuple[float, float, float] = SPACING) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = ROTATION @ np.diag(spacing)
    affine[:3, 3] = ORIGIN
    return affine


def write_oblique(path: Path, shape=(12, 10, 4, 3), dtype=np.int16, seed: int = 0) -> Path:
    """A small scanner-space stack with an oblique affine, non-zero origin and a time zoom in seconds."""
    rng = np.random.default_rng(seed)
    data = (rng.random(shape) * 1000).astype(dtype)
    img = nib.Nifti1Image(data, oblique_affine())
    img.header.set_zooms((*SPACING, 0.035)[: len(shape)])
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(oblique_affine(), code=1)
    img.set_sform(oblique_affine(), code=1)
    nib.save(img, str(path))
    return path


def world(affine: np.ndarray, i: float, j: float, k: float) -> np.ndarray:
    return (affine @ np.array([i, j, k, 1.0]))[:3]


def test_read_normalises_like_training_and_inverts(tmp_path: Path) -> None:
    sparse = read_sparse_stack(write_oblique(tmp_path / "s.nii.gz"))
    assert sparse.stack.shape == (4, 3, 1, 12, 10) and sparse.is_4d
    assert sparse.spacing == pytest.approx(SPACING)
    expected = normalise_intensity(sparse.values).transpose(2, 3, 0, 1)[:, :, None]
    np.testing.assert_allclose(sparse.stack.numpy(), expected, atol=1e-6)
    inside = (sparse.values >= sparse.low) & (sparse.values <= sparse.high)
    back = sparse.to_intensity(sparse.stack[:, :, 0].numpy().transpose(2, 3, 0, 1))
    np.testing.assert_allclose(back[inside], sparse.values[inside], rtol=1e-5)


def test_dense_geometry_and_exact_acquired_voxels_nibabel(tmp_path: Path) -> None:
    src = write_oblique(tmp_path / "s.nii.gz")
    sparse = read_sparse_stack(src)
    positions = factor_positions(4, 4)
    out = write_dense_stack(
        tmp_path / "d.nii.gz", sparse, linear_upsample(sparse.stack, positions), positions, 2.5
    )
    img, original = nib.load(str(out)), nib.load(str(src))
    assert img.shape == (12, 10, 13, 3) and img.get_data_dtype() == np.float32
    assert img.header.get_zooms() == pytest.approx((1.4, 1.6, 2.5, 0.035))
    assert img.header.get_xyzt_units() == ("mm", "sec")
    expected = oblique_affine((1.4, 1.6, 2.5))
    np.testing.assert_allclose(img.affine, expected, atol=1e-4)
    np.testing.assert_allclose(img.get_qform(), expected, atol=1e-4)
    np.testing.assert_allclose(img.get_sform(), expected, atol=1e-4)
    assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
    for j in range(4):
        np.testing.assert_allclose(world(img.affine, 3, 7, 4 * j), world(original.affine, 3, 7, j), atol=1e-4)
    dense = np.asanyarray(img.dataobj)
    assert np.array_equal(dense[:, :, ::4], original.get_fdata(dtype=np.float32))
    assert dense.min() >= 0 and dense.max() <= 1000


@pytest.mark.parametrize("shape", [(12, 10, 4), (12, 10, 4, 3)])
def test_dense_geometry_simpleitk(tmp_path: Path, shape: tuple[int, ...]) -> None:
    src = write_oblique(tmp_path / "s.nii.gz", shape=shape, dtype=np.float32)
    sparse = read_sparse_stack(src)
    positions = factor_positions(4, 2)
    out = write_dense_stack(
        tmp_path / "d.nii", sparse, linear_upsample(sparse.stack, positions), positions, 5.0
    )
    a, b = sitk.ReadImage(str(src)), sitk.ReadImage(str(out))
    d = len(shape)
    assert b.GetSpacing()[:3] == pytest.approx((1.4, 1.6, 5.0), abs=1e-4)
    assert b.GetOrigin()[:3] == pytest.approx(a.GetOrigin()[:3], abs=1e-4)
    assert b.GetOrigin()[:3] == pytest.approx(LPS @ np.array(ORIGIN), abs=1e-4)
    direction = np.array(b.GetDirection()).reshape(d, d)[:3, :3]
    np.testing.assert_allclose(direction, LPS @ ROTATION, atol=1e-4)
    np.testing.assert_allclose(direction, np.array(a.GetDirection()).reshape(d, d)[:3, :3], atol=1e-6)
    for j in range(4):
        index_b, index_a = (2, 5, 2 * j, 0)[:d], (2, 5, j, 0)[:d]
        np.testing.assert_allclose(
            b.TransformIndexToPhysicalPoint(index_b), a.TransformIndexToPhysicalPoint(index_a), atol=1e-4
        )
    assert np.array_equal(sitk.GetArrayFromImage(b)[..., ::2, :, :], sitk.GetArrayFromImage(a))


def test_non_integer_spacing_grid_geometry(tmp_path: Path) -> None:
    sparse = read_sparse_stack(write_oblique(tmp_path / "s.nii.gz"))
    positions = spacing_positions(4, 10.0, 4.0)
    assert len(positions) == 8
    out = write_dense_stack(
        tmp_path / "d.nii.gz", sparse, linear_upsample(sparse.stack, positions), positions, 4.0
    )
    img = nib.load(str(out))
    np.testing.assert_allclose(img.affine, oblique_affine((1.4, 1.6, 4.0)), atol=1e-4)
    np.testing.assert_allclose(world(img.affine, 0, 0, 5), world(sparse.affine, 0, 0, 2), atol=1e-4)
    dense = np.asanyarray(img.dataobj)
    assert np.array_equal(dense[:, :, 0], sparse.values[:, :, 0]) and np.array_equal(
        dense[:, :, 5], sparse.values[:, :, 2]
    )


def test_std_map_is_zero_at_acquired_and_in_intensity_units(tmp_path: Path) -> None:
    sparse = read_sparse_stack(write_oblique(tmp_path / "s.nii.gz"))
    positions = factor_positions(4, 2)
    std = np.full((7, 3, 1, 12, 10), 0.1, dtype=np.float32)
    out = write_std_map(std_path(tmp_path / "d.nii.gz"), sparse, torch.from_numpy(std), positions, 5.0)
    assert out.name == "d_std.nii.gz"
    data = np.asanyarray(nib.load(str(out)).dataobj)
    assert np.all(data[:, :, ::2] == 0)
    np.testing.assert_allclose(data[:, :, 1::2], 0.1 * (sparse.high - sparse.low), rtol=1e-5)


def _write_text(path: Path) -> Path:
    path.write_text("not an image")
    return path


def _save(path: Path, array: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))
    return path


@pytest.mark.parametrize(
    ("name", "make", "problem"),
    [
        ("text.nii.gz", _write_text, "NIfTI"),
        ("flat.nii.gz", lambda p: _save(p, np.ones((8, 8), np.float32)), "2D"),
        ("five.nii.gz", lambda p: _save(p, np.ones((8, 8, 3, 2, 2), np.float32)), "5D"),
        ("one.nii.gz", lambda p: _save(p, np.ones((8, 8, 1), np.float32)), "slice"),
        (
            "nan.nii.gz",
            lambda p: _save(p, np.pad(np.ones((8, 8, 3)), 1, constant_values=np.nan)),
            "NaN",
        ),
        ("zero.nii.gz", lambda p: _save(p, np.zeros((8, 8, 3), np.float32)), "zero"),
        ("flat3d.nii.gz", lambda p: _save(p, np.full((8, 8, 3), 7.0, np.float32)), "constant"),
    ],
)
def test_bad_input_names_the_file(tmp_path: Path, name: str, make, problem: str) -> None:
    path = make(tmp_path / name)
    with pytest.raises(DataError, match=problem) as info:
        read_sparse_stack(path)
    assert name in str(info.value)


def test_cli_linear_end_to_end_oblique_4d(tmp_path: Path, capsys) -> None:
    src = write_oblique(tmp_path / "sparse.nii.gz")
    out = tmp_path / "out" / "dense.nii.gz"
    assert (
        calid(["upsample", "--method", "linear", "--input", str(src), "--output", str(out), "--factor", "4"])
        == 0
    )
    assert str(out) in capsys.readouterr().out
    img, original = nib.load(str(out)), nib.load(str(src))
    assert img.shape == (12, 10, 13, 3)
    np.testing.assert_allclose(img.affine, oblique_affine((1.4, 1.6, 2.5)), atol=1e-4)
    dense = np.asanyarray(img.dataobj)
    assert np.array_equal(dense[:, :, ::4], original.get_fdata(dtype=np.float32))
    itk = sitk.ReadImage(str(out))
    assert itk.GetSpacing()[:3] == pytest.approx((1.4, 1.6, 2.5), abs=1e-4)
    assert itk.GetOrigin()[:3] == pytest.approx(LPS @ np.array(ORIGIN), abs=1e-4)
    np.testing.assert_allclose(np.array(itk.GetDirection()).reshape(4, 4)[:3, :3], LPS @ ROTATION, atol=1e-4)
    assert not std_path(out).exists()


def test_cli_nearest_with_samples_writes_std_and_spacing_grid(tmp_path: Path) -> None:
    src = write_oblique(tmp_path / "sparse.nii.gz")
    out = tmp_path / "dense.nii.gz"
    args = [
        "--input",
        str(src),
        "--output",
        str(out),
        "--spacing",
        "4",
        "--samples",
        "2",
        "--quiet",
        "--force",
    ]
    assert calid(["upsample", "--method", "nearest", *args]) == 0
    img, original = nib.load(str(out)), read_sparse_stack(src)
    dense, values = np.asanyarray(img.dataobj), original.values
    assert img.shape == (12, 10, 8, 3) and img.header.get_zooms()[2] == pytest.approx(4.0)
    assert np.array_equal(dense[:, :, 0], values[:, :, 0]) and np.array_equal(dense[:, :, 5], values[:, :, 2])
    inside = (values >= original.low) & (values <= original.high)
    for out_slice, nearest in [(1, 0), (2, 1), (3, 1), (4, 2), (7, 3)]:  # positions 0.4, 0.8, 1.2, 1.6, 2.8
        keep = inside[:, :, nearest]
        np.testing.assert_allclose(dense[:, :, out_slice][keep], values[:, :, nearest][keep], rtol=1e-5)
    assert np.all(np.asanyarray(nib.load(str(std_path(out))).dataobj) == 0)


def test_cli_errors(tmp_path: Path, capsys) -> None:
    src = write_oblique(tmp_path / "sparse.nii.gz")
    with pytest.raises(SystemExit) as info:
        calid(["upsample", "--input", str(src), "--output", str(tmp_path / "o.nii.gz"), "--factor", "2"])
    assert info.value.code == 2 and "--checkpoint" in capsys.readouterr().err
    bad = tmp_path / "bad.nii.gz"
    bad.write_text("nope")
    args = ["upsample", "--method", "cubic", "--input", str(bad), "--output", str(tmp_path / "o.nii.gz")]
    assert calid([*args, "--factor", "2"]) == 1
    assert "bad.nii.gz" in capsys.readouterr().err


def test_cli_calid_checkpoint_end_to_end(tmp_path: Path) -> None:
    """An untrained tiny CaLID checkpoint through `calid upsample` (integration of the real model API)."""

    from calid_lightning.models.calid_spatial import CaLIDSpatial

    model = CaLIDSpatial(
        vae_checkpoint=str(tiny_vae_checkpoint(tmp_path / "vae.ckpt")),
        channels=(16, 32),
        attention_levels=(False, True),
        num_res_blocks=1,
        norm_num_groups=8,
        num_head_channels=8,
    )
    ckpt = save_checkpoint(model, tmp_path / "calid.ckpt")
    src = write_oblique(tmp_path / "sparse.nii.gz", shape=(12, 10, 3), dtype=np.float32)
    out = tmp_path / "dense.nii.gz"
    args = ["--checkpoint", str(ckpt), "--input", str(src), "--output", str(out), "--factor", "2"]
    assert calid(["upsample", *args, "--steps", "2", "--samples", "2", "--quiet", "--device", "cpu"]) == 0
    dense = np.asanyarray(nib.load(str(out)).dataobj)
    original = nib.load(str(src)).get_fdata(dtype=np.float32)
    assert dense.shape == (12, 10, 5) and np.array_equal(dense[:, :, ::2], original)
    assert np.isfinite(dense).all()
    std = np.asanyarray(nib.load(str(std_path(out))).dataobj)
    assert np.all(std[:, :, ::2] == 0) and std[:, :, 1::2].max() > 0


def test_cli_estimate_mean_is_the_one_step_estimate_averaged_over_draws(tmp_path: Path) -> None:
    """--estimate mean with one draw is the 1-step DDIM sample of the same seed; more draws change it."""
    from calid_lightning.models.calid_spatial import CaLIDSpatial

    torch.manual_seed(0)
    model = CaLIDSpatial(vae_checkpoint=str(tiny_vae_checkpoint(tmp_path / "vae.ckpt")), **TINY_UNET)
    ckpt = save_checkpoint(model, tmp_path / "calid.ckpt")
    src = write_oblique(tmp_path / "sparse.nii.gz", shape=(12, 10, 3), dtype=np.float32)
    base = ["upsample", "--checkpoint", str(ckpt), "--input", str(src), "--factor", "2", "--quiet"]

    def run(name: str, *extra: str) -> np.ndarray:
        out = tmp_path / f"{name}.nii.gz"
        assert calid([*base, "--output", str(out), "--device", "cpu", *extra]) == 0
        return np.asanyarray(nib.load(str(out)).dataobj)

    one_step = run("sample1", "--steps", "1")
    mean1 = run("mean1", "--estimate", "mean", "--mean-draws", "1")
    mean4 = run("mean4", "--estimate", "mean", "--mean-draws", "4")
    assert np.array_equal(mean1, one_step)
    assert not np.array_equal(mean4[:, :, 1::2], mean1[:, :, 1::2])
    assert np.array_equal(mean4[:, :, ::2], mean1[:, :, ::2])  # acquired slices copied either way


def test_cli_detail_weight_adds_the_neighbours_residual_to_generated_slices_only(
    tmp_path: Path, capsys
) -> None:
    """--detail-weight changes the generated slices (the residual of the untrained VAE is large), keeps the
    acquired ones, and is refused for a method without a VAE."""
    from calid_lightning.models.calid_spatial import CaLIDSpatial

    torch.manual_seed(0)
    model = CaLIDSpatial(vae_checkpoint=str(tiny_vae_checkpoint(tmp_path / "vae.ckpt")), **TINY_UNET)
    ckpt = save_checkpoint(model, tmp_path / "calid.ckpt")
    src = write_oblique(tmp_path / "sparse.nii.gz", shape=(12, 10, 3), dtype=np.float32)
    base = ["upsample", "--input", str(src), "--factor", "2", "--quiet", "--device", "cpu"]

    def run(name: str, *extra: str) -> np.ndarray:
        out = tmp_path / f"{name}.nii.gz"
        assert calid([*base, "--checkpoint", str(ckpt), "--output", str(out), *extra]) == 0
        return np.asanyarray(nib.load(str(out)).dataobj)

    mean = run("mean", "--estimate", "mean")
    detailed = run("detail", "--estimate", "mean", "--detail-weight", "0.75")
    assert np.array_equal(detailed[:, :, ::2], mean[:, :, ::2])
    assert np.abs(detailed[:, :, 1::2] - mean[:, :, 1::2]).mean() > 1e-3
    with pytest.raises(SystemExit) as exc:
        calid([*base, "--method", "linear", "--output", str(tmp_path / "l.nii.gz"), "--detail-weight", "0.5"])
    assert exc.value.code == 2
    assert "--detail-weight 0.5 applies to --method calid only" in capsys.readouterr().err
