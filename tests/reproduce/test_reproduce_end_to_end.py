"""`calid reproduce` end to end on a tiny profile: every stage runs, table and figures appear, a re-run skips.

Tiny: 4 phantom subjects of 48x48 pixels, 32x32 crops, models with 8-16 channels trained for 2 steps, 2 DDIM
steps. It checks the plumbing between the stages (checkpoint paths, CSV columns, figure files), not quality.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from calid_lightning.reproduce.cli import main

REPO = Path(__file__).resolve().parents[2]
TINY_TRAIN = [
    "--trainer.max_steps=2",
    "--trainer.val_check_interval=2",
    "--trainer.limit_val_batches=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]
DIFFUSION = [
    "--model.init_args.channels=[8,16,16]",
    "--model.init_args.norm_num_groups=8",
    "--model.init_args.num_head_channels=8",
    "--model.init_args.val_inference_steps=2",
    "--model.init_args.val_num_samples=2",
]


def tiny_profile(tmp_path: Path) -> Path:
    data = {
        "data": {
            "class_path": "calid_lightning.data.datamodule.CardiacDataModule",
            "init_args": {
                "layout": "phantom",
                "root": str(tmp_path / "phantom"),
                "phantom": {"subjects": 4, "seed": 0, "size": [48, 48], "frames": 8},
                "gap_factor": 4,
                "train_factors": [2, 4],
                "split": [0.5, 0.25, 0.25],
                "crop_size": 32,
                "batch_size": 2,
                "samples_per_epoch": 8,
                "cache_dir": str(tmp_path / "cache"),
            },
        }
    }
    data_path = tmp_path / "tiny_data.yaml"
    data_path.write_text(yaml.safe_dump(data))
    profile = {
        "name": "tiny",
        "data": str(data_path),
        "jobs": 2,
        "threads": 1,
        "train": {
            "vae": {
                "config": "experiments/vae.yaml",
                "args": [
                    *TINY_TRAIN,
                    "--model.init_args.channels=[8,16,16]",
                    "--model.init_args.norm_num_groups=8",
                    "--model.init_args.scale_factor_batches=1",
                    "--model.init_args.log_images=2",
                ],
            },
            "segmenter": {
                "config": "experiments/segmenter.yaml",
                "args": [
                    *TINY_TRAIN,
                    "--model.init_args.channels=[8,16,16,16]",
                    "--model.init_args.num_res_units=1",
                ],
            },
            "calid_spatial": {
                "config": "experiments/calid_spatial.yaml",
                "needs": ["vae"],
                "args": TINY_TRAIN + DIFFUSION,
            },
            "calid_inflated": {
                "config": "experiments/calid_inflated.yaml",
                "args": [
                    *TINY_TRAIN,
                    "--model.init_args.val_inference_steps=2",
                    "--model.init_args.val_num_samples=2",
                    "--data.init_args.num_frames=4",
                ],
            },
            "pixel_spatial": {"config": "experiments/pixel_spatial.yaml", "args": TINY_TRAIN + DIFFUSION},
        },
        "evaluate": {
            "split": "test",
            "factors": [2, 4],
            "frames": "ed_es",
            "steps": 2,
            "methods": ["calid", "lerp", "linear", "nearest", "truth"],
            "pixel": {"factors": [4], "frames": "ed"},
            "cine": {
                "factor": 4,
                "frames": 4,
                "steps": 1,
                "methods": ["calid_inflated", "calid_shared", "calid", "linear"],
            },
        },
        "figures": {"factor": 4, "samples": 2, "methods": ["calid", "pixel", "linear"]},
    }
    path = tmp_path / "tiny_profile.yaml"
    path.write_text(yaml.safe_dump(profile))
    return path


@pytest.mark.slow
def test_reproduce_runs_every_stage_and_writes_the_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    results, runs = tmp_path / "results", tmp_path / "runs"
    argv = ["--profile", str(tiny_profile(tmp_path)), "--results", str(results), "--runs", str(runs)]
    code = main([*argv, "--heartbeat", "1000"])
    out = capsys.readouterr().out
    assert code == 0, out + "".join(p.read_text()[-3000:] for p in (runs / "tiny").rglob("*.log"))

    for name in ("vae", "segmenter", "calid_spatial", "calid_inflated", "pixel_spatial"):
        assert (runs / "tiny" / "tiny_data" / name / "checkpoints" / "last.ckpt").is_file(), name
    table = (results / "table.md").read_text()
    for heading in ("## Gap factor x2", "## Gap factor x4", "## 2D+T cines, gap factor x4"):
        assert heading in table
    for name in (
        "CaLID, one sample",
        "pixel-space diffusion",
        "latent lerp (same VAE)",
        "true slices (ceiling)",
    ):
        assert f"| {name} |" in table
    with (results / "table.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    x4 = {r["method"]: r for r in rows if r["section"] == "slices" and r["factor"] == "4"}
    assert set(x4) == {"calid", "lerp", "linear", "nearest", "truth", "pixel"}
    assert 0.0 <= float(x4["truth"]["dice_myo"]) <= 1.0 and float(x4["calid"]["psnr"]) > 0
    for figure in ("comparison_x4", "through_plane_x4", "uncertainty_x4", "intensity_over_time_x4"):
        assert (results / "figures" / f"{figure}.png").stat().st_size > 1000, figure

    stamps = sorted(p.name for p in (runs / "tiny" / "tiny_data" / "stamps").glob("*.json"))
    cine = {r["method"] for r in rows if r["section"] == "cine"}
    assert cine == {"calid_inflated", "calid_shared", "calid", "linear"}
    assert len(stamps) == 12  # data, 5 trainings, 2 spatial + 1 pixel + 2 cine evaluations, figures
    assert main([*argv, "--heartbeat", "1000"]) == 0  # everything cached: nothing runs again
    again = capsys.readouterr().out
    assert again.count("skip ") == len(stamps) and "start " not in again
