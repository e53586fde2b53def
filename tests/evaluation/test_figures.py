"""``calid figures``: the pure pieces on hand-made arrays, the figures' layout, and the CLI end to end."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from calid_lightning.cli import main as calid_main
from calid_lightning.evaluation.figures import (
    comparison_figure,
    heart_row,
    nearest_fill,
    pearson,
    pick_slice,
    through_plane_figure,
    through_plane_image,
)
from calid_lightning.evaluation.metrics import slice_metrics
from calid_lightning.inference.baselines import nearest_upsample
from checkpoints import save_checkpoint, tiny_vae_checkpoint

PHANTOM = {"subjects": 3, "seed": 0, "size": [48, 48], "frames": 6}


def hand_stack() -> np.ndarray:
    """``(9, 3, 2)``: every value names its slice, row and column (100 z + 10 row + column)."""
    z, row, col = np.indices((9, 3, 2))
    return (100 * z + 10 * row + col).astype(np.float32)


def test_nearest_fill_takes_the_nearest_kept_slice_lower_on_a_tie() -> None:
    stack = hand_stack()
    assert np.array_equal(nearest_fill(stack, [1, 4, 7]), stack[[1, 1, 4, 4, 4, 7, 7]])
    assert np.array_equal(nearest_fill(stack, [0, 2, 4]), stack[[0, 0, 2, 2, 4]])
    kept = [2, 5, 8]
    positions = [(z - 2) / 3 for z in range(2, 9)]
    baseline = nearest_upsample(torch.from_numpy(stack[kept]), positions).numpy()
    assert np.array_equal(nearest_fill(stack, kept), baseline), "the same as the nearest baseline"


def test_through_plane_image_cuts_one_row_over_the_kept_range() -> None:
    stack = hand_stack()
    expected = np.array([[100 * z + 10 + c for c in range(2)] for z in range(1, 8)], dtype=np.float32)
    assert np.array_equal(through_plane_image(stack, [1, 4, 7], row=1), expected)
    filled = through_plane_image(stack, [1, 4, 7], row=2, nearest=True)
    assert np.array_equal(filled[:, 0], np.array([1, 1, 4, 4, 4, 7, 7]) * 100 + 20)


def test_heart_row_pick_slice_and_pearson() -> None:
    labels = np.zeros((2, 12, 10), dtype=np.uint8)
    labels[0, 5:8, 2:4] = 1
    labels[1, 5:8, 6:9] = 3
    labels[1, 0:3, :] = 0
    assert heart_row(labels, 12) == 6
    assert heart_row(None, 12) == 6 and heart_row(np.zeros((12, 10)), 31) == 15
    assert pick_slice([0, 4, 8, 12], [1, 2, 3, 5, 6, 7, 9, 10, 11]) == 6
    assert pick_slice([1, 4, 7], [2, 3, 5, 6]) in (3, 5)
    x = np.linspace(0, 1, 50)
    assert pearson(x, 3 * x + 1) == pytest.approx(1.0)
    assert pearson(x, -x) == pytest.approx(-1.0)
    assert math.isnan(pearson(x, np.ones_like(x)))


def test_comparison_titles_and_shared_error_scale() -> None:
    truth = np.full((24, 24), 0.5, dtype=np.float32)
    truth[8:16, 8:16] = 0.8
    columns = [("off by 0.1", truth + 0.1), ("off by 0.2", truth - 0.2)]
    figure = comparison_figure(columns, truth, "truth")
    batch = [torch.from_numpy(a)[None, None] for a in (truth + 0.1, truth)]
    ssim = float(slice_metrics(*batch)["ssim"][0])
    titles = [a.get_title() for a in figure.axes]
    assert titles[:3] == [f"off by 0.1\nPSNR 20.0 dB, SSIM {ssim:.3f}", titles[1], "truth"]
    assert titles[1].startswith("off by 0.2\nPSNR 14.0 dB") and titles[3:5] == [
        "|error|, MAE 0.100",
        "|error|, MAE 0.200",
    ]
    error_images = [a.images[0] for a in figure.axes if a.images and a.images[0].get_cmap().name == "magma"]
    assert len(error_images) == 2 and len({im.get_clim() for im in error_images}) == 1
    assert error_images[0].get_clim()[1] == pytest.approx(0.2, abs=1e-6)
    gray = [a.images[0] for a in figure.axes if a.images and a.images[0].get_cmap().name == "gray"]
    assert len(gray) == 3 and all(im.get_clim() == (0, 1) for im in gray), "images shown on [0, 1]"


def test_through_plane_panels_keep_the_true_aspect() -> None:
    cut = np.random.default_rng(0).uniform(0, 1, (9, 20))
    figure = through_plane_figure([("a", cut), ("b", cut)], dz=2.5, dx=1.25, kept=[0, 4, 8], first=3)
    figure.canvas.draw()
    for axis in figure.axes:
        box = axis.get_window_extent()
        assert box.height / box.width == pytest.approx(9 * 2.5 / (20 * 1.25), rel=0.03)
        assert list(axis.get_yticks()) == [0.0, 10.0, 20.0], "kept rows ticked, in mm"
    assert [t.get_text() for t in figure.axes[0].get_yticklabels()] == ["3", "7", "11"]


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("phantom") / "data"


@pytest.fixture(scope="module")
def calid_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny CaLIDSpatial (VAE factor 4, U-Net (16, 32): size multiple 8) as a checkpoint."""
    from calid_lightning.models.calid_spatial import CaLIDSpatial

    folder = tmp_path_factory.mktemp("calid")
    vae_path = tiny_vae_checkpoint(folder / "vae.ckpt")
    unet = {"channels": (16, 32), "attention_levels": (False, True), "num_res_blocks": 1}
    model = CaLIDSpatial(vae_checkpoint=str(vae_path), norm_num_groups=8, num_head_channels=8, **unet)
    return save_checkpoint(model, folder / "calid.ckpt")


def figures(root: Path, out: Path, *args: str) -> int:
    """``calid figures`` on phantom.yaml with the tiny phantom of :data:`PHANTOM`."""
    overrides = [f"root={root}", "crop_size=32", "cache_dir=null"]
    overrides += [f"phantom.{k}={v}".replace(" ", "") for k, v in PHANTOM.items()]
    argv = ["figures", "--data", "data_modules/phantom.yaml", "--out", str(out), "--device", "cpu"]
    for item in overrides:
        argv += ["--data-override", item]
    return calid_main([*argv, *args])


def read_png(path: Path) -> np.ndarray:
    assert path.is_file() and path.stat().st_size > 1000, path
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image[..., :3].std() > 0.05, "not a blank canvas"
    return image


def test_cli_image_methods_write_two_figures(phantom_root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "figs"
    assert figures(phantom_root, out, "--methods", "linear,nearest,lerp", "--tag", "t") == 0
    err = capsys.readouterr().err
    assert "skipping lerp" in err and "--checkpoint" in err
    assert "no uncertainty figure" in err and "calid" in err
    assert sorted(p.name for p in out.iterdir()) == ["comparison_t.png", "through_plane_t.png"]
    comparison = read_png(out / "comparison_t.png")
    through = read_png(out / "through_plane_t.png")
    assert comparison.shape[1] > comparison.shape[0], "columns side by side"
    assert through.shape[1] > through.shape[0]


def test_cli_with_calid_writes_the_uncertainty_figure(
    phantom_root: Path, tmp_path: Path, calid_checkpoint: Path, capsys
) -> None:
    out = tmp_path / "figs"
    args = ["--methods", "calid,linear", "--checkpoint", str(calid_checkpoint), "--steps", "2"]
    assert figures(phantom_root, out, *args, "--samples", "2", "--frame", "es") == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["comparison_x4.png", "through_plane_x4.png", "uncertainty_x4.png"]
    for name in names:
        read_png(out / name)
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("uncertainty: Pearson"))
    values = [float(w) for w in line.replace(",", " ").split() if w.lstrip("-").replace(".", "").isdigit()]
    assert len(values) == 2 and all(-1 <= v <= 1 for v in values)


def test_cli_bad_subject_and_frame_exit_2(phantom_root: Path, tmp_path: Path, capsys) -> None:
    assert figures(phantom_root, tmp_path, "--methods", "linear", "--subject", "nobody") == 2
    err = capsys.readouterr().err
    assert "--subject 'nobody'" in err and "available: patient" in err
    assert figures(phantom_root, tmp_path, "--methods", "linear", "--frame", "99") == 2
    assert "--frame 99" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.png"))
