"""Held-out evaluation: only kept slices go in, only held-out slices are scored; ``calid evaluate``."""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from calid_lightning.cli import main as calid_main
from calid_lightning.data.datamodule import CardiacDataModule
from calid_lightning.data.preprocess import PreparedSubject
from calid_lightning.data.sampling import heldout_plan
from calid_lightning.data.subject import LV_CAVITY
from calid_lightning.evaluation.evaluate_cli import SUBJECT_FIELDS
from calid_lightning.evaluation.heldout import (
    RECORD_FIELDS,
    evaluate_run,
    heldout_positions,
    select_frames,
    shift_kept_slices,
)
from calid_lightning.evaluation.records import subjects_path
from calid_lightning.inference.baselines import IMAGE_BASELINES, linear_upsample
from calid_lightning.inference.methods import CodecCeiling, build_method
from checkpoints import save_checkpoint, tiny_vae_checkpoint

PHANTOM = {"subjects": 3, "seed": 0, "size": [48, 48], "frames": 6}


def linear_subject(z: int = 13, t: int = 3, size: int = 24) -> PreparedSubject:
    """Slices that vary linearly in z (a blend of two textures), with a heart label in the centre."""
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.1, 0.9, (2, t, size, size))
    s = np.linspace(0, 1, z).reshape(z, 1, 1, 1)
    labels = np.zeros((z, t, size, size), dtype=np.uint8)
    labels[:, :, 8:16, 8:16] = LV_CAVITY
    image = ((1 - s) * a + s * b).astype(np.float32)
    return PreparedSubject("lin", image, (1.0, 1.0, 2.5), (0, 0), 0, 1, True, labels, (0, 1))


class Recording:
    """Linear interpolation that keeps every stack and position list it is given."""

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Tensor, list[float]]] = []
        self.spacings: list[float | None] = []

    def at(
        self, stack: torch.Tensor, positions: Sequence[float], slice_spacing_mm: float | None = None
    ) -> torch.Tensor:
        self.calls.append((stack.clone(), list(positions)))
        self.spacings.append(slice_spacing_mm)
        return linear_upsample(stack, positions)


def test_linear_is_near_perfect_on_linear_slices_and_nearest_is_worse() -> None:
    prepared = linear_subject()
    kept, heldout = heldout_plan(prepared.num_slices, 4, 0, "lin")
    run = evaluate_run("linear", IMAGE_BASELINES["linear"], prepared, kept, heldout, [0, 2])
    linear, seconds = run.records, run.seconds
    nearest = evaluate_run("nearest", IMAGE_BASELINES["nearest"], prepared, kept, heldout, [0, 2]).records
    assert len(linear) == len(heldout) * 2 and seconds >= 0
    assert all(tuple(r) == RECORD_FIELDS for r in linear)
    assert {(r["z"], r["frame"]) for r in linear} == {(int(z), f) for z in heldout for f in (0, 2)}
    assert {r["factor"] for r in linear} == {4} and {r["method"] for r in nearest} == {"nearest"}
    assert min(r["psnr"] for r in linear) >= 40 and min(r["psnr_heart"] for r in linear) >= 40
    assert min(r["ssim"] for r in linear) > 0.999
    assert max(r["psnr"] for r in nearest) < 40
    assert np.mean([r["ssim_heart"] for r in nearest]) < np.mean([r["ssim_heart"] for r in linear])


def test_only_kept_slices_enter_the_input() -> None:
    prepared = linear_subject(z=12)
    kept, heldout = np.array([1, 4, 7, 10]), np.array([2, 3, 5, 6, 8, 9])
    fake = Recording()
    records = evaluate_run("fake", fake, prepared, kept, heldout, [1]).records
    ((stack, positions),) = fake.calls
    assert torch.equal(stack, torch.from_numpy(prepared.image[kept][:, [1]]).unsqueeze(2))
    assert positions == pytest.approx([1 / 3, 2 / 3, 4 / 3, 5 / 3, 7 / 3, 8 / 3])
    assert [r["z"] for r in records] == heldout.tolist()


def test_the_upsampler_is_told_the_spacing_of_the_kept_slices() -> None:
    """Kept slices 4 dense slices of 2.5 mm apart are 10 mm apart: what a gap-conditioned model needs."""
    prepared, method = linear_subject(z=12), Recording()
    kept, heldout = heldout_plan(prepared.num_slices, 4, 0, "lin")
    evaluate_run("linear", method, prepared, kept, heldout, [0])
    assert method.spacings == [10.0]


def test_shifted_kept_slices_move_by_their_own_clipped_offset_shared_by_frames() -> None:
    """A ramp along H and W moves by exactly the drawn offset in pixels; frames of a slice move together."""
    h = torch.arange(16.0).reshape(16, 1)
    ramp = (h + 100 * h.T).expand(3, 2, 1, 16, 16).clone()  # value = h + 100 w
    assert shift_kept_slices(ramp, 0.0, (2.0, 2.0), seed=0) is ramp
    moved = shift_kept_slices(ramp, 100.0, (2.0, 2.0), seed=0)  # huge offsets: all clipped to +-6 mm = 3 px
    mm = np.clip(np.random.default_rng(0).normal(0.0, 100.0, (3, 2)), -6, 6)
    assert np.abs(mm).tolist() == [[6.0, 6.0]] * 3
    for z, (dh, dw) in enumerate(mm / 2.0):
        inner = moved[z, :, 0, 4:-4, 4:-4]
        torch.testing.assert_close(inner, ramp[z, :, 0, 4:-4, 4:-4] - dh - 100 * dw)
        torch.testing.assert_close(moved[z, 0], moved[z, 1])
    small = shift_kept_slices(ramp, 1.0, (1.0, 1.0), seed=1)
    assert torch.equal(small, shift_kept_slices(ramp, 1.0, (1.0, 1.0), seed=1))
    assert not torch.equal(small, shift_kept_slices(ramp, 1.0, (1.0, 1.0), seed=2))


def test_input_shift_misregisters_the_input_only() -> None:
    """Linear interpolation of shifted kept slices misses the unshifted truth, which is not moved."""
    prepared = linear_subject(z=12)
    kept, heldout = heldout_plan(prepared.num_slices, 4, 0, "lin")
    clean, fake = Recording(), Recording()
    plain = evaluate_run("linear", clean, prepared, kept, heldout, [0]).records
    shifted = evaluate_run("linear", fake, prepared, kept, heldout, [0], input_shift_mm=2.0).records
    assert not torch.equal(fake.calls[0][0], clean.calls[0][0])
    assert min(r["psnr"] for r in plain) > 40 > max(r["psnr"] for r in shifted)
    again = evaluate_run("linear", Recording(), prepared, kept, heldout, [0], input_shift_mm=2.0).records
    assert [r["psnr"] for r in again] == [r["psnr"] for r in shifted]  # every method sees the same input


def test_inconsistent_plans_are_rejected() -> None:
    prepared = linear_subject()
    with pytest.raises(ValueError, match="also kept"):
        evaluate_run("x", Recording(), prepared, [0, 4, 8], [3, 4], [0])
    with pytest.raises(ValueError, match="strictly inside"):
        heldout_positions([2, 6], [1])
    with pytest.raises(ValueError, match="evenly spaced"):
        heldout_positions([0, 4, 6], [1])


class OffsetCodec:
    """A codec whose reconstruction is the input plus 0.01: PSNR exactly 40 dB on any slice."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z / 2 + 0.01


def test_vae_truth_scores_the_codec_on_the_true_heldout_slices() -> None:
    prepared = linear_subject()
    kept, heldout = [0, 4, 8, 12], [1, 2, 3, 5, 6, 7, 9, 10, 11]
    run = evaluate_run("vae_truth", CodecCeiling(OffsetCodec()), prepared, kept, heldout, [0, 2])
    assert [(r["z"], r["frame"]) for r in run.records] == [(z, f) for z in heldout for f in (0, 2)]
    assert all(r["psnr"] == pytest.approx(40.0, abs=1e-3) for r in run.records)
    with pytest.raises(TypeError, match="vae_truth"):
        CodecCeiling(OffsetCodec()).at(torch.zeros(2, 1, 1, 4, 4), [0.5])


def test_build_method_names() -> None:
    assert build_method("cubic") is IMAGE_BASELINES["cubic"]
    with pytest.raises(ValueError, match="needs a CaLIDSpatial checkpoint"):
        build_method("slerp")
    with pytest.raises(ValueError, match="unknown method 'bicubic'"):
        build_method("bicubic")


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("phantom") / "data"


def evaluate(root: Path, out: Path, *args: str) -> int:
    """``calid evaluate`` on phantom.yaml with the tiny phantom of :data:`PHANTOM` (dotted overrides)."""
    overrides = [f"root={root}", "crop_size=32", "cache_dir=null"]
    overrides += [f"phantom.{k}={v}".replace(" ", "") for k, v in PHANTOM.items()]
    argv = [
        "evaluate",
        "--data",
        "data_modules/phantom.yaml",
        "--out",
        str(out),
        "--quiet",
        "--device",
        "cpu",
    ]
    for item in overrides:
        argv += ["--data-override", item]
    return calid_main([*argv, *args])


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open() as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def test_cli_image_methods_end_to_end(phantom_root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "eval" / "x4.csv"
    assert evaluate(phantom_root, out, "--methods", "linear,nearest,cubic,lerp", "--frames", "ed_es") == 0
    captured = capsys.readouterr()
    assert "skipping lerp" in captured.err and "--checkpoint" in captured.err
    fields, rows = read_csv(out)
    assert fields == list(RECORD_FIELDS)
    datamodule = CardiacDataModule(root=str(phantom_root), crop_size=32, phantom=PHANTOM, gap_factor=4)
    (subject,) = datamodule.subjects("test")
    prepared = datamodule.prepared_subject(subject)
    _, heldout = datamodule.heldout(subject)
    frames = sorted({prepared.ed_frame, prepared.es_frame})
    expected = {(m, str(z), str(f)) for m in ("linear", "nearest", "cubic") for z in heldout for f in frames}
    assert len(rows) == len(expected) and {(r["method"], r["z"], r["frame"]) for r in rows} == expected
    assert all(10 < float(r["psnr"]) < 60 and 0 < float(r["ssim"]) <= 1 for r in rows)
    sub_fields, subject_rows = read_csv(subjects_path(out))
    assert sub_fields == list(SUBJECT_FIELDS) and [r["method"] for r in subject_rows] == [
        "linear",
        "nearest",
        "cubic",
    ]
    assert all(int(r["slices"]) == len(heldout) * len(frames) for r in subject_rows)
    means = {r["method"]: float(r["psnr"]) for r in subject_rows}
    assert means["linear"] > means["nearest"], "the phantom's sanity order"
    assert "| linear | 1 |" in captured.out and "s/volume" in captured.out


def test_cli_input_shift_misregisters_the_kept_slices(phantom_root: Path, tmp_path: Path, capsys) -> None:
    runs = {}
    for name, extra in {"still": [], "moved": ["--input-shift-mm", "3"]}.items():
        out = tmp_path / f"{name}.csv"
        assert evaluate(phantom_root, out, "--methods", "linear", "--frames", "ed", *extra) == 0
        runs[name] = np.mean([float(r["psnr"]) for r in read_csv(out)[1]])
    assert runs["moved"] < runs["still"] - 0.5, runs
    with pytest.raises(SystemExit) as exc:
        evaluate(phantom_root, tmp_path / "bad.csv", "--methods", "linear", "--input-shift-mm", "-1")
    assert exc.value.code == 2 and "--input-shift-mm" in capsys.readouterr().err


def test_cli_rejects_a_bad_data_config(tmp_path: Path, capsys) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("model: {}\n")
    code = calid_main(
        ["evaluate", "--data", str(config), "--methods", "linear", "--out", str(tmp_path / "x.csv")]
    )
    assert code == 1 and f"{config}: expected a `data:` section" in capsys.readouterr().err


@pytest.fixture
def calid_checkpoint(tmp_path: Path) -> Path:
    """An untrained tiny CaLIDSpatial (VAE factor 4, U-Net (16, 32): size multiple 8) as a checkpoint."""
    from calid_lightning.models.calid_spatial import CaLIDSpatial

    vae_path = tiny_vae_checkpoint(tmp_path / "vae.ckpt")
    unet = {"channels": (16, 32), "attention_levels": (False, True), "num_res_blocks": 1}
    model = CaLIDSpatial(vae_checkpoint=str(vae_path), norm_num_groups=8, num_head_channels=8, **unet)
    return save_checkpoint(model, tmp_path / "calid.ckpt")


def test_cli_calid_and_latent_blends(phantom_root: Path, tmp_path: Path, calid_checkpoint: Path) -> None:
    out = tmp_path / "calid.csv"
    methods = ("calid", "calid_mean", "lerp", "slerp", "vae_truth")
    args = ["--methods", ",".join(methods), "--checkpoint", str(calid_checkpoint), "--steps", "2"]
    assert evaluate(phantom_root, out, *args, "--frames", "0", "--no-warmup", "--mean-draws", "2") == 0
    _, rows = read_csv(out)
    by_method = {m: [r for r in rows if r["method"] == m] for m in methods}
    assert len({len(v) for v in by_method.values()}) == 1 and by_method["calid"]
    assert {r["frame"] for r in rows} == {"0"}
    assert [r["psnr"] for r in by_method["calid"]] != [r["psnr"] for r in by_method["lerp"]]
    assert [r["psnr"] for r in by_method["calid"]] != [r["psnr"] for r in by_method["calid_mean"]]
    for method_rows in by_method.values():
        assert all(np.isfinite(float(r["psnr"])) and -1 <= float(r["ssim"]) <= 1 for r in method_rows)
    _, subject_rows = read_csv(subjects_path(out))
    assert [r["method"] for r in subject_rows] == list(methods)
    assert all(float(r["seconds_per_volume"]) > 0 for r in subject_rows)


def test_select_frames_names_and_indices() -> None:
    prepared = dataclasses.replace(linear_subject(t=5), ed_frame=0, es_frame=3)
    assert select_frames(prepared, "ed_es") == [0, 3]
    assert select_frames(prepared, "ed") == [0] and select_frames(prepared, "es") == [3]
    assert select_frames(prepared, "all") == [0, 1, 2, 3, 4]
    assert select_frames(prepared, "4,1,1") == [1, 4]
    with pytest.raises(ValueError, match=r"frames 0\.\.4"):
        select_frames(prepared, "5")
    with pytest.raises(ValueError, match="expected ed_es, ed, es, all"):
        select_frames(prepared, "systole")
