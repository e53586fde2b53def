"""``calid evaluate-cine``: held-out slice cines, 2D+T vs frame-by-frame, temporal coherence, CSVs, figure."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from calid_lightning.cli import main as calid_main
from calid_lightning.data.datamodule import CardiacDataModule
from calid_lightning.data.sampling import cine_frame_indices
from calid_lightning.evaluation.cine_eval import (
    RECORD_FIELDS,
    SUBJECT_FIELDS,
    CineMethod,
    score_cines,
)
from calid_lightning.evaluation.records import subjects_path
from calid_lightning.inference.baselines import ImageLinear, linear_upsample
from calid_lightning.inference.upsample import EngineUpsampler
from calid_lightning.models.calid_inflated import CaLIDInflated
from calid_lightning.models.calid_spatial import CaLIDSpatial
from checkpoints import TINY_UNET, save_checkpoint, tiny_vae_checkpoint

PHANTOM = {"subjects": 3, "seed": 0, "size": [48, 48], "frames": 6}
FRAMES = 4


def beating(frames: int = 6, size: int = 24, z: int = 2) -> torch.Tensor:
    """``(Z, T, H, W)`` cines of a disc whose radius beats over the cycle (a different size per slice)."""
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    dist = (coords[:, None] ** 2 + coords[None, :] ** 2).sqrt()
    phase = torch.cos(2 * math.pi * torch.arange(frames) / frames)
    radius = torch.stack([4.0 + k + 2.0 * phase for k in range(z)])
    return 0.1 + 0.8 * torch.sigmoid(2.0 * (radius[..., None, None] - dist))


def test_the_truth_scores_zero_temporal_error_and_flicker_does_not() -> None:
    truth = beating()
    labels = np.zeros(truth.shape, dtype=np.uint8)
    labels[..., 8:16, 8:16] = 1
    (perfect, _) = score_cines(truth.clone(), truth, labels)
    assert perfect["temporal_error"] == 0.0 and perfect["psnr"] == math.inf and perfect["ssim"] == 1.0
    offset = score_cines((truth + 0.05).clamp(0, 1), truth, labels)[0]
    assert offset["temporal_error"] < 1e-3 < 0.05 and offset["psnr"] < 30
    flicker = truth + 0.05 * (torch.arange(truth.shape[1]) % 2).reshape(1, -1, 1, 1)
    scores = score_cines(flicker, truth, labels)
    assert all(s["temporal_error"] > 0.04 for s in scores)
    static = truth[:, :1].expand_as(truth)  # a frozen first frame: no motion at all
    assert score_cines(static, truth)[0]["temporal_error"] > 0.01
    assert math.isnan(score_cines(static, truth)[0]["psnr_heart"]), "no labels: no heart box"


class Recording:
    """Linear interpolation along z that keeps the stack shapes it is given."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def at(
        self, stack: torch.Tensor, positions: Sequence[float], slice_spacing_mm: float | None = None
    ) -> torch.Tensor:
        self.shapes.append(tuple(stack.shape))
        return linear_upsample(stack, positions)


def test_whole_cines_vs_frames_as_items() -> None:
    cines = beating(frames=6, z=3)
    whole, frames = Recording(), Recording()
    a = CineMethod(whole, whole_cine=True).generate(cines, [0.5, 1.25], None, 0)
    b = CineMethod(frames, whole_cine=False).generate(cines, [0.5, 1.25], None, 0)
    assert whole.shapes == [(3, 1, 1, 6, 24, 24)] and frames.shapes == [(3, 6, 1, 24, 24)]
    assert a.shape == b.shape == (2, 6, 24, 24) and torch.allclose(a, b)
    assert torch.allclose(a[0], (cines[0] + cines[1]) / 2)


class CountingLinear(ImageLinear):
    """Linear blend that records the batch size of every call."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def interpolate(
        self,
        below: torch.Tensor,
        above: torch.Tensor,
        r: torch.Tensor,
        num_steps: int | None = None,
        generator: torch.Generator | None = None,
        gap_mm: torch.Tensor | None = None,
    ) -> torch.Tensor:
        self.batches.append(below.shape[0])
        return super().interpolate(below, above, r)


def test_max_batch_counts_frames_for_whole_cines() -> None:
    cines = beating(frames=4, z=6)  # 5 gaps, one target each
    linear = CountingLinear()
    CineMethod(EngineUpsampler(linear, max_batch=8), whole_cine=True).generate(
        cines, [0.5, 1.5, 2.5, 3.5, 4.5], None, 0
    )
    assert linear.batches == [2, 2, 1], "8 frames per call = 2 cines of 4 frames"
    frames = CountingLinear()
    CineMethod(EngineUpsampler(frames, max_batch=8), whole_cine=False).generate(cines, [0.5, 1.5], None, 0)
    assert frames.batches == [8], "2 gaps x 4 frames as items"


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("phantom") / "data"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny CaLIDSpatial and CaLIDInflated checkpoints (size multiple 8) saved as plain dicts."""
    folder = tmp_path_factory.mktemp("ckpt")
    vae = str(tiny_vae_checkpoint(folder / "vae.ckpt"))
    spatial = CaLIDSpatial(vae_checkpoint=vae, **TINY_UNET)
    with torch.no_grad():
        for p in spatial.ema.module.unet.out.parameters():
            p.normal_(std=0.1)
    spatial_path = save_checkpoint(spatial, folder / "spatial.ckpt")
    inflated = CaLIDInflated(spatial_checkpoint=str(spatial_path), temporal_layers="conv")
    with torch.no_grad():  # trained-looking temporal layers: the inflated model differs from frame by frame
        for mixer in inflated.ema.module.mixers:
            mixer.proj.weight.normal_(std=0.2)
    return {
        "spatial": spatial_path,
        "inflated": save_checkpoint(inflated, folder / "inflated.ckpt"),
    }


def evaluate_cine(root: Path, out: Path, *args: str) -> int:
    """``calid evaluate-cine`` on phantom.yaml with the tiny phantom of :data:`PHANTOM`."""
    overrides = [f"root={root}", "crop_size=32", "cache_dir=null"]
    overrides += [f"phantom.{k}={v}".replace(" ", "") for k, v in PHANTOM.items()]
    argv = ["evaluate-cine", "--data", "data_modules/phantom.yaml", "--out", str(out), "--quiet"]
    argv += ["--device", "cpu", "--frames", str(FRAMES), "--steps", "2"]
    for item in overrides:
        argv += ["--data-override", item]
    return calid_main([*argv, *args])


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open() as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def test_cli_end_to_end(phantom_root: Path, checkpoints: dict[str, Path], tmp_path: Path, capsys) -> None:
    out, figure = tmp_path / "eval" / "cine.csv", tmp_path / "fig" / "intensity.png"
    ckpts = [
        "--checkpoint",
        str(checkpoints["spatial"]),
        "--inflated-checkpoint",
        str(checkpoints["inflated"]),
    ]
    methods = [
        "calid_inflated",
        "calid_inflated_shared",
        "calid_shared",
        "calid",
        "linear",
        "nearest",
    ]
    assert (
        evaluate_cine(phantom_root, out, *ckpts, "--figure", str(figure), "--methods", ",".join(methods)) == 0
    )
    printed = capsys.readouterr().out

    datamodule = CardiacDataModule(root=str(phantom_root), crop_size=32, phantom=PHANTOM, gap_factor=4)
    (subject,) = datamodule.subjects("test")
    _, heldout = datamodule.heldout(subject)
    fields, rows = read_csv(out)
    assert fields == list(RECORD_FIELDS)
    assert {(r["method"], int(r["z"])) for r in rows} == {(m, int(z)) for m in methods for z in heldout}
    assert len(rows) == len(methods) * len(heldout) and {r["frames"] for r in rows} == {str(FRAMES)}
    for row in rows:
        values = [float(row[k]) for k in ("psnr", "ssim", "psnr_heart", "ssim_heart", "temporal_error")]
        assert all(np.isfinite(values)) and float(row["temporal_error"]) > 0
    sub_fields, subject_rows = read_csv(subjects_path(out))
    assert sub_fields == list(SUBJECT_FIELDS)
    assert [(r["subject"], r["method"]) for r in subject_rows] == [(subject, m) for m in methods]
    assert all(float(r["seconds_per_volume"]) > 0 and int(r["slices"]) == len(heldout) for r in subject_rows)
    by_method = {r["method"]: r for r in subject_rows}
    assert by_method["calid_inflated"]["psnr"] != by_method["calid"]["psnr"], "temporal layers change it"
    assert by_method["calid_inflated"]["psnr"] != by_method["calid_inflated_shared"]["psnr"], "other noise"
    assert by_method["calid_shared"]["psnr"] != by_method["calid"]["psnr"], "shared vs independent noise"
    assert float(by_method["linear"]["psnr"]) > float(by_method["nearest"]["psnr"]), "phantom sanity order"
    assert "| calid_inflated | 1 |" in printed and "temporal_error" in printed and "s/volume" in printed
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 1000


def test_frames_are_spread_over_the_cycle() -> None:
    assert cine_frame_indices(6, FRAMES, 1)[0] == [0, 1, 3, 4]


def test_methods_without_a_checkpoint_are_skipped(phantom_root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "linear.csv"
    assert evaluate_cine(phantom_root, out, "--methods", "calid_inflated,lerp,linear", "--no-warmup") == 0
    err = capsys.readouterr().err
    assert "skipping calid_inflated: they need --inflated-checkpoint CKPT" in err
    assert "skipping lerp: they need --checkpoint CKPT" in err
    assert {r["method"] for r in read_csv(out)[1]} == {"linear"}


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--inflated-checkpoint", "missing/cine.ckpt"], "--inflated-checkpoint"),
        (["--frames", "0"], "--frames"),
        (["--frames", "often"], "--frames"),
        (["--methods", "linear,bicubic"], "--methods"),
    ],
)
def test_bad_arguments_exit_2_naming_the_option(args: list[str], option: str, tmp_path: Path, capsys) -> None:
    argv = ["evaluate-cine", "--data", "data_modules/phantom.yaml", "--out", str(tmp_path / "x.csv"), *args]
    with pytest.raises(SystemExit) as exc:
        calid_main(argv)
    assert exc.value.code == 2 and option in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


def test_a_checkpoint_of_the_wrong_model_exits_2(
    checkpoints: dict[str, Path], tmp_path: Path, capsys
) -> None:
    argv = ["evaluate-cine", "--data", "data_modules/phantom.yaml", "--methods", "calid"]
    with pytest.raises(SystemExit) as exc:
        calid_main([*argv, "--checkpoint", str(checkpoints["inflated"]), "--out", str(tmp_path / "x.csv")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--checkpoint" in err and "CaLIDInflated" in err and "CaLIDSpatial" in err
    argv = ["evaluate-cine", "--data", "data_modules/phantom.yaml", "--methods", "calid_inflated"]
    with pytest.raises(SystemExit) as exc:
        calid_main(
            [*argv, "--inflated-checkpoint", str(checkpoints["spatial"]), "--out", str(tmp_path / "x.csv")]
        )
    err = capsys.readouterr().err
    found = "holds a CaLIDSpatial checkpoint, expected a CaLIDInflated"
    problem = f"--inflated-checkpoint {checkpoints['spatial']}: {found}"
    assert exc.value.code == 2 and problem in err


def test_a_file_that_is_not_a_checkpoint_exits_2(tmp_path: Path, capsys) -> None:
    junk = tmp_path / "junk.ckpt"
    junk.write_text("not a checkpoint")
    argv = ["evaluate-cine", "--data", "data_modules/phantom.yaml", "--inflated-checkpoint", str(junk)]
    with pytest.raises(SystemExit) as exc:
        calid_main([*argv, "--out", str(tmp_path / "x.csv")])
    err = capsys.readouterr().err
    assert (
        exc.value.code == 2 and f"--inflated-checkpoint {junk}" in err and "not a PyTorch checkpoint" in err
    )
