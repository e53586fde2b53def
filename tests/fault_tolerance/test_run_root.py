"""One root per run: ``calid fit ... --trainer.default_root_dir D`` writes every file of the run under D."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[2]
TINY_VAE = [
    "--data.init_args.phantom.subjects=3",
    "--data.init_args.cache_dir=null",
    "--data.init_args.samples_per_epoch=4",
    "--data.init_args.batch_size=2",
    "--model.init_args.channels=[8,16,16]",
    "--model.init_args.norm_num_groups=8",
    "--model.init_args.scale_factor_batches=1",
    "--trainer.accelerator=cpu",
    "--trainer.max_steps=2",
    "--trainer.val_check_interval=2",
    "--trainer.limit_val_batches=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


@pytest.mark.slow
def test_default_root_dir_holds_every_file_of_the_run(tmp_path: Path) -> None:
    """The VAE config (W&B offline + CSV + checkpoints) from an empty working folder: all of it lands in D."""
    work, root, phantom = tmp_path / "work", tmp_path / "D", tmp_path / "phantom"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env |= {"WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    configs = [REPO / "experiments" / "vae.yaml", REPO / "data_modules" / "phantom.yaml"]
    command = [sys.executable, "-m", "calid_lightning.cli", "fit", *(f"--config={c}" for c in configs)]
    command += [f"--data.init_args.root={phantom}", *TINY_VAE, f"--trainer.default_root_dir={root}"]
    done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    assert list(work.iterdir()) == []  # nothing under the configs' own runs/vae/quick
    assert sorted(p.name for p in tmp_path.iterdir()) == ["D", "phantom", "work"]
    assert torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    assert (root / "csv" / "version_0" / "metrics.csv").is_file()
    assert list((root / "wandb").glob("offline-run-*/run-*.wandb"))
    resolved = yaml.safe_load((root / "config.yaml").read_text())["trainer"]
    assert resolved["default_root_dir"] == str(root)
    checkpoints = [c["init_args"] for c in resolved["callbacks"] if "dirpath" in (c.get("init_args") or {})]
    assert checkpoints and {c["dirpath"] for c in checkpoints} == {f"{root}/checkpoints"}
