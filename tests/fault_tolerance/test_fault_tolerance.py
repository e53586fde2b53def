"""Fault tolerance: NaN/Inf guard, RNG states in checkpoints, exact resume after SIGKILL, SLURM requeue,
checkpoint rotation in the experiment configs, ``weights_only`` loading.

The ``calid fit`` runs (slow) are subprocesses on a 3-subject 64x64 phantom at 32x32 crops, 12 steps with a
checkpoint every 4, with 4-batch epochs (every checkpoint ends an epoch) and with 6-batch epochs (mid-epoch
checkpoints: Lightning restarts a plain DataLoader's epoch at index 0, so the DataModule's training loader is
a :class:`ResumableDataLoader`).
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, Dataset

from calid_lightning.experiment_config import merge_configs, resolve_all
from calid_lightning.fault_tolerance import (
    FiniteLossGuard,
    NonFiniteLossError,
    ResumableDataLoader,
    RNGStateCheckpoint,
    StepModelCheckpoint,
    main,
    resume_checkpoint,
    run_root,
)
from checkpoints import tiny_vae_checkpoint

REPO = Path(__file__).resolve().parents[2]
EXPERIMENTS = sorted((REPO / "experiments").glob("*.yaml"))
PAPER = REPO / "experiments" / "profiles" / "paper"
FT = "calid_lightning.fault_tolerance"


# ---- tiny in-process models ------------------------------------------------------------------------------
class RandomDraws(Dataset):
    """Like the DataModule's TrainDataset: each item comes from a draw of the torch RNG and its index."""

    def __init__(self, length: int = 4) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.randn(3) + index


class Tiny(LightningModule):
    """A linear model with noise in its loss; ``nan_at`` makes the loss NaN at that global step."""

    def __init__(self, nan_at: int | None = None, nan_metric_at: int | None = None) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)
        self.nan_at, self.nan_metric_at = nan_at, nan_metric_at
        self.optimizer_steps = 0

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = (self.layer(batch) - torch.randn(batch.shape[0], 1)).square().mean()
        if self.global_step == self.nan_at:
            loss = loss * float("nan")
        aux = float("inf") if self.global_step == self.nan_metric_at else 1.0
        self.log_dict({"train/loss": loss, "train/aux": aux}, on_step=True)
        return loss

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        self.optimizer_steps += 1

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def tiny_trainer(root: Path, max_steps: int, callbacks: list, every: int = 1, **kwargs: Any) -> Trainer:
    checkpoint = ModelCheckpoint(
        dirpath=root / "checkpoints",
        filename="{step}",
        every_n_train_steps=every,
        monitor="step",
        mode="max",
        save_top_k=2,
        save_last=True,
    )
    return Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        callbacks=[*callbacks, checkpoint],
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        **kwargs,
    )


def test_guard_stops_before_a_nan_loss_reaches_the_weights(tmp_path: Path) -> None:
    model = Tiny(nan_at=2)
    trainer = tiny_trainer(tmp_path, 10, [FiniteLossGuard()], precision="bf16-mixed")
    with pytest.raises(NonFiniteLossError) as error:
        trainer.fit(model, DataLoader(RandomDraws(), batch_size=2))
    message = str(error.value)
    assert "global step 2" in message and "loss" in message and "nan" in message
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert f"--ckpt_path {last}" in message
    assert all(hint in message for hint in ("learning rate", "gradient_clip_val", "precision=32-true"))
    assert trainer.global_step == 2 and model.optimizer_steps == 2  # the third step never ran
    assert all(torch.isfinite(p).all() for p in model.parameters())
    saved = torch.load(last, weights_only=True)
    assert saved["global_step"] == 2
    for name, value in model.state_dict().items():
        torch.testing.assert_close(saved["state_dict"][name], value, rtol=0, atol=0)


def test_guard_stops_on_a_non_finite_logged_metric(tmp_path: Path) -> None:
    model = Tiny(nan_metric_at=1)
    trainer = tiny_trainer(tmp_path, 10, [FiniteLossGuard()])
    with pytest.raises(NonFiniteLossError, match=r"global step 2 .*train/aux = inf.*optimizer step") as error:
        trainer.fit(model, DataLoader(RandomDraws(), batch_size=2))
    assert "precision" not in str(error.value)  # already full precision
    assert model.optimizer_steps == 2


def test_guard_lets_finite_runs_finish(tmp_path: Path) -> None:
    trainer = tiny_trainer(tmp_path, 4, [FiniteLossGuard()])
    trainer.fit(Tiny(), DataLoader(RandomDraws(), batch_size=2))
    assert trainer.global_step == 4


def _fit_tiny(
    root: Path,
    max_steps: int,
    callbacks: list,
    ckpt_path: Path | None = None,
    length: int = 4,
    loader: type[DataLoader] = DataLoader,
) -> Tiny:
    seed_everything(0)
    model = Tiny()
    trainer = tiny_trainer(root, max_steps, callbacks, every=2)
    trainer.fit(model, loader(RandomDraws(length), batch_size=2), ckpt_path=ckpt_path)
    return model


def _same_weights(a: LightningModule, b: LightningModule) -> bool:
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    return all(torch.equal(x, y) for x, y in pairs)


@pytest.mark.parametrize("with_rng", [True, False], ids=["rng-restored", "rng-not-restored"])
def test_rng_states_make_an_epoch_boundary_resume_exact(tmp_path: Path, with_rng: bool) -> None:
    """Data and noise drawn from the global RNG: resumed weights equal the uninterrupted ones only with it."""
    callbacks = [RNGStateCheckpoint()] if with_rng else []
    straight = _fit_tiny(tmp_path / "a", 6, list(callbacks))
    half = tmp_path / "a" / "checkpoints" / "step=4.ckpt"
    assert "RNGStateCheckpoint" in torch.load(half, weights_only=True)["callbacks"] or not with_rng
    resumed = _fit_tiny(tmp_path / "b", 6, [RNGStateCheckpoint()] if with_rng else [], half)
    assert _same_weights(straight, resumed) == with_rng


@pytest.mark.parametrize("resumable", [True, False], ids=["resumable-loader", "plain-loader"])
def test_mid_epoch_resume_is_exact_with_a_resumable_loader(tmp_path: Path, resumable: bool) -> None:
    """6-batch epochs, resumed at step 8: a plain DataLoader restarts the epoch at index 0."""
    loader = ResumableDataLoader if resumable else DataLoader
    straight = _fit_tiny(tmp_path / "a", 10, [RNGStateCheckpoint()], length=12, loader=loader)
    half = tmp_path / "a" / "checkpoints" / "step=8.ckpt"
    saved = torch.load(half, weights_only=True)
    assert not saved["callbacks"]["RNGStateCheckpoint"]["epoch_end"]
    resumed = _fit_tiny(tmp_path / "b", 10, [RNGStateCheckpoint()], half, length=12, loader=loader)
    assert _same_weights(straight, resumed) == resumable


def test_rng_state_round_trip_covers_torch_numpy_python() -> None:
    import random

    import numpy as np

    callback = RNGStateCheckpoint()
    seed_everything(3)
    state = callback.state_dict()
    expected = (torch.rand(2), np.random.rand(2), random.random())
    torch.rand(5), np.random.rand(5), random.random()
    callback.load_state_dict(state)
    callback.on_train_epoch_start(None, None)  # type: ignore[arg-type]
    again = (torch.rand(2), np.random.rand(2), random.random())
    assert torch.equal(expected[0], again[0]) and (expected[1] == again[1]).all() and expected[2] == again[2]


# ---- experiment configs ------------------------------------------------------------------------------------
COMBINATIONS = [[p] for p in EXPERIMENTS] + [
    [REPO / "experiments" / p.name, p] for p in sorted(PAPER.glob("*.yaml"))
]
"""Every experiment config alone (quick) and with its paper profile on top."""


def _build(callback: dict) -> Any:
    module, _, name = callback["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**(callback.get("init_args") or {}))


@pytest.mark.parametrize("configs", COMBINATIONS, ids=lambda c: str(c[-1].relative_to(REPO / "experiments")))
def test_experiment_configs_checkpoint_with_rotation_and_guard(configs: list[Path]) -> None:
    merged = merge_configs(configs)
    config = resolve_all(merged)
    callbacks = config["trainer"]["callbacks"]
    built = [_build(c) for c in callbacks]
    assert any(isinstance(c, FiniteLossGuard) for c in built)
    assert any(isinstance(c, RNGStateCheckpoint) for c in built)
    checkpoints = [c for c in built if isinstance(c, ModelCheckpoint)]
    raw = [
        c["init_args"] for c in merged["trainer"]["callbacks"] if c["class_path"].endswith("ModelCheckpoint")
    ]
    assert {c["dirpath"] for c in raw} == {"${trainer.default_root_dir}/checkpoints"}  # one root moves them
    writers = [c for c in checkpoints if c.save_last]
    assert len(writers) == 1  # one writer of last.ckpt
    periodic = writers[0]
    assert isinstance(periodic, StepModelCheckpoint)
    assert periodic._every_n_train_steps > 0 and periodic.monitor == "step" and periodic.mode == "max"
    assert periodic.save_top_k == 3
    patterns = [(c.dirpath, c.filename) for c in checkpoints]
    assert len(set(patterns)) == len(patterns)  # no two callbacks write the same file names
    assert config["trainer"]["max_steps"] % periodic._every_n_train_steps == 0  # the final step is last.ckpt


def test_names_of_saved_configs_stay_importable_from_the_package() -> None:
    """Configs of earlier runs name ``calid_lightning.fault_tolerance.X``; experiments/*.yaml the modules."""
    modules = {
        "FiniteLossGuard": "guards",
        "NonFiniteLossError": "guards",
        "RNGStateCheckpoint": "rng_state",
        "ResumableDataLoader": "resumable_loader",
        "StepModelCheckpoint": "checkpointing",
        "RunFolderError": "run_folder",
        "check_new_run": "run_folder",
        "run_root": "run_folder",
        "resume_checkpoint": "resume",
    }
    package = importlib.import_module(FT)
    for name, module in modules.items():
        assert getattr(package, name) is getattr(importlib.import_module(f"{FT}.{module}"), name), name
    paths = {
        c["class_path"] for configs in COMBINATIONS for c in merge_configs(configs)["trainer"]["callbacks"]
    }
    assert {p.rpartition(".")[0] for p in paths if p.startswith(FT)} == {
        f"{FT}.guards",
        f"{FT}.rng_state",
        f"{FT}.checkpointing",
    }


# ---- resume-path helper (scripts/slurm/train.sbatch) -------------------------------------------------------
def test_resume_checkpoint_picks_the_newest_last_or_hpc(tmp_path: Path, capsys) -> None:
    config = tmp_path / "exp.yaml"
    root = tmp_path / "run"
    folder = root / "checkpoints"
    config.write_text(yaml.safe_dump({"trainer": {"default_root_dir": str(tmp_path / "other")}}))
    override = tmp_path / "override.yaml"
    override.write_text(yaml.safe_dump({"trainer": {"default_root_dir": str(root)}}))
    assert run_root([config, override]) == root and run_root([override, config]) == tmp_path / "other"
    assert resume_checkpoint([folder], root) is None
    folder.mkdir(parents=True)
    (folder / "last.ckpt").write_bytes(b"x")
    (folder / "step=4.ckpt").write_bytes(b"x")
    assert resume_checkpoint([folder], root) == folder / "last.ckpt"
    hpc = root / "hpc_ckpt_1.ckpt"
    hpc.write_bytes(b"x")
    os.utime(folder / "last.ckpt", (time.time() - 60, time.time() - 60))
    assert main(["resume-path", "-c", str(config), "--root", str(root)]) == 0
    assert capsys.readouterr().out.strip() == str(hpc)
    os.utime(hpc, (time.time() - 120, time.time() - 120))
    assert main(["resume-path", "-c", str(config), "-c", str(override)]) == 0  # the configs' root
    assert capsys.readouterr().out.strip() == str(folder / "last.ckpt")
    assert main(["resume-path", "-c", str(config)]) == 0 and capsys.readouterr().out == ""


def test_train_sbatch_has_the_slurm_options_and_valid_syntax() -> None:
    script = (REPO / "scripts" / "slurm" / "train.sbatch").read_text()
    for option in ("--signal=SIGUSR1@90", "--requeue", "--nodes", "--ntasks-per-node"):
        assert f"#SBATCH {option}" in script
    assert '--trainer.devices "$SLURM_NTASKS_PER_NODE"' in script and "--trainer.strategy ddp" in script
    assert f"python -m {FT} resume-path" in script and "--ckpt_path" in script
    subprocess.run(["bash", "-n", str(REPO / "scripts" / "slurm" / "train.sbatch")], check=True)


# ---- calid fit subprocesses ------------------------------------------------------------------------------
def tiny_config(
    run: Path,
    phantom: Path,
    model: dict,
    task: str,
    max_steps: int = 12,
    callbacks: tuple[dict, ...] = (),
    samples_per_epoch: int = 8,
    datamodule: str = "calid_lightning.data.datamodule.CardiacDataModule",
) -> Path:
    """A `calid fit` config: 4-batch epochs by default, a checkpoint every 4 steps, CSV log of every step."""
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": max_steps,
            "check_val_every_n_epoch": None,
            "val_check_interval": 4,
            "limit_val_batches": 1,
            "num_sanity_val_steps": 0,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(run),
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(run), "name": "csv"},
            },
            "callbacks": [
                {"class_path": f"{FT}.FiniteLossGuard"},
                {"class_path": f"{FT}.RNGStateCheckpoint"},
                *callbacks,
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {
                        "dirpath": str(run / "checkpoints"),
                        "filename": "{step}",
                        "every_n_train_steps": 4,
                        "monitor": "step",
                        "mode": "max",
                        "save_top_k": 3,
                        "save_last": True,
                    },
                },
            ],
        },
        "model": model,
        "data": {
            "class_path": datamodule,
            "init_args": {
                "layout": "phantom",
                "root": str(phantom),
                "phantom": {"subjects": 3, "seed": 0, "size": [64, 64], "frames": 6},
                "task": task,
                "crop_size": 32,
                "batch_size": 2,
                "samples_per_epoch": samples_per_epoch,
                "split": [0.34, 0.33, 0.33],
            },
        },
    }
    run.mkdir(parents=True, exist_ok=True)
    path = run / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def fit_command(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "calid_lightning.cli", "fit", "-c", str(config), *extra]


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", **extra}
    env.pop("WANDB_API_KEY", None)
    return env


def python_path(folder: Path) -> str:
    """``PYTHONPATH`` with ``folder`` first: test-only modules for the subprocess."""
    return os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))


def run_fit(config: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(
        fit_command(config, *extra),
        cwd=REPO,
        env=env or subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    start = time.monotonic()
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"the run ended (code {process.returncode}) before {path} appeared")
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


def train_losses(run: Path) -> dict[int, float]:
    """The per-step ``train/loss`` of every CSV log under ``run`` (a resumed run writes a second version)."""
    losses: dict[int, float] = {}
    for metrics in sorted(run.glob("csv/version_*/metrics.csv")):
        with open(metrics, newline="") as handle:
            for row in csv.DictReader(handle):
                value = row.get("train/loss") or row.get("train/loss_step")  # on_epoch too: "_step"
                if value:
                    losses[int(row["step"])] = float(value)
    return losses


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("phantom") / "data"


VAE_MODEL = {
    "class_path": "calid_lightning.models.vae.VAEModule",
    "init_args": {
        "channels": [8, 8, 8],
        "latent_channels": 4,
        "norm_num_groups": 4,
        "scale_factor_batches": 1,
        "log_images": 0,
    },
}


def spatial_model(vae_checkpoint: Path) -> dict:
    return {
        "class_path": "calid_lightning.models.calid_spatial.CaLIDSpatial",
        "init_args": {
            "vae_checkpoint": str(vae_checkpoint),
            "channels": [16, 32],
            "attention_levels": [False, True],
            "num_res_blocks": 1,
            "num_head_channels": 8,
            "norm_num_groups": 8,
            "lr": 1e-3,
            "ema_decay": 0.9,
            "val_sample_every": 1,
            "val_num_samples": 2,
            "val_inference_steps": 2,
        },
    }


def check_kill_and_resume(
    tmp_path: Path, phantom: Path, model: dict, task: str, env: dict[str, str] | None = None, **config: Any
) -> None:
    """Run A straight to step 12; run B SIGKILLed once its step-8 checkpoint exists, resumed from `last`."""
    env = env or subprocess_env()
    straight = tmp_path / "straight"
    run_fit(tiny_config(straight, phantom, model, task, **config), env=env)
    killed = tmp_path / "killed"
    killed_config = tiny_config(killed, phantom, model, task, **config)
    process = subprocess.Popen(
        fit_command(killed_config), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_for(killed / "checkpoints" / "step=8.ckpt", process)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not (killed / "checkpoints" / "step=12.ckpt").exists()
    resumed = run_fit(killed_config, "--ckpt_path", "last", env=env)
    assert "Restored all states from the checkpoint" in resumed.stdout + resumed.stderr

    expected = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)
    actual = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)
    assert actual["global_step"] == expected["global_step"] == 12
    assert expected["state_dict"].keys() == actual["state_dict"].keys()
    for name, value in expected["state_dict"].items():
        torch.testing.assert_close(actual["state_dict"][name], value, rtol=0, atol=0, msg=name)
    straight_losses, killed_losses = train_losses(straight), train_losses(killed)
    assert max(straight_losses) == max(killed_losses) == 11  # CSV steps count from 0
    for step in range(8, 12):
        assert killed_losses[step] == straight_losses[step], step


@pytest.mark.slow
def test_vae_killed_and_resumed_equals_uninterrupted(tmp_path: Path, phantom: Path) -> None:
    """Weights, scale factor and train losses of steps 9-12 equal those of the uninterrupted run."""
    check_kill_and_resume(tmp_path, phantom, VAE_MODEL, "slice")
    actual = torch.load(tmp_path / "killed" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert bool(actual["scale_factor_computed"]) and float(actual["scale_factor"]) != 1.0


@pytest.mark.slow
def test_calid_spatial_killed_and_resumed_equals_uninterrupted(tmp_path: Path, phantom: Path) -> None:
    """The same for the spatial interpolator: U-Net, ControlNet, their EMA and the frozen VAE."""
    vae = tiny_vae_checkpoint(tmp_path / "vae.ckpt")
    check_kill_and_resume(tmp_path, phantom, spatial_model(vae), "spatial")
    state = torch.load(tmp_path / "killed" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert int(state["ema.num_updates"]) == 12 and "vae.scale_factor" in state


@pytest.mark.slow
def test_mid_epoch_kill_and_resume_is_exact(tmp_path: Path, phantom: Path) -> None:
    """6-batch epochs: the checkpoints at steps 4 and 8 fall mid-epoch (the DataModule's resumable loader)."""
    check_kill_and_resume(tmp_path, phantom, VAE_MODEL, "slice", subprocess_env(), samples_per_epoch=12)


FAKE_SCONTROL = """#!/bin/sh
echo "$@" >> "{record}"
"""
FAKE_SRUN = """#!/bin/sh
exec "$@"
"""
# Stands for a job waiting for SLURM's signal: once, at a step, it writes a marker and sleeps (signals are
# still handled), so no periodic checkpoint comes after the requeue checkpoint.
PAUSE_CALLBACK = """
import time
from pathlib import Path
from lightning.pytorch import Callback

class PauseAt(Callback):
    def __init__(self, step: int, marker: str) -> None:
        self.step, self.marker = step, Path(marker)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step and not self.marker.exists():
            self.marker.touch()
            time.sleep(300)
"""


def fake_slurm_env(tmp_path: Path, config: Path, run: Path, extra: str) -> tuple[dict[str, str], Path]:
    """The environment of a one-task SLURM job whose ``srun`` runs the command and ``scontrol`` records."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    record = tmp_path / "scontrol.log"
    for name, text in (("scontrol", FAKE_SCONTROL.format(record=record)), ("srun", FAKE_SRUN)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    slurm = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "calid-test",  # not "bash"/"interactive": Lightning detects SLURM
        "SLURM_NTASKS": "1",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_NNODES": "1",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_NODELIST": "localhost",
        "SLURM_SUBMIT_DIR": str(REPO),
        "CONFIGS": str(config),
        "RUN_DIR": str(run),
        "EXTRA": extra,
        "VENV": str(Path(sys.executable).parents[1]),
    }
    return subprocess_env(**slurm), record


def child_pid(parent: int, timeout: float = 60) -> int:
    """The first child process of ``parent`` (the training process the fake ``srun`` exec'd)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.05)
    raise AssertionError(f"process {parent} started no child within {timeout} s")


@pytest.mark.slow
def test_train_sbatch_requeues_on_sigusr1_and_resumes_from_the_newest_checkpoint(
    tmp_path: Path, phantom: Path
) -> None:
    """SIGUSR1 to the training task: HPC checkpoint + `scontrol requeue 4242`; the restarted job resumes."""
    sbatch = REPO / "scripts" / "slurm" / "train.sbatch"
    run = tmp_path / "run"
    (tmp_path / "pause_callback.py").write_text(PAUSE_CALLBACK)
    marker = tmp_path / "paused"
    pause = {"class_path": "pause_callback.PauseAt", "init_args": {"step": 5, "marker": str(marker)}}
    config = tiny_config(run, phantom, VAE_MODEL, "slice", max_steps=400, callbacks=(pause,))
    env, record = fake_slurm_env(tmp_path, config, run, "--trainer.max_steps=400")
    env["PYTHONPATH"] = python_path(tmp_path)
    job = subprocess.Popen(
        ["bash", str(sbatch)], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    hpc = run / "hpc_ckpt_1.ckpt"
    task = job.pid
    try:
        wait_for(marker, job)
        task = child_pid(job.pid)  # training by now (the resume-path helper ran before)
        os.kill(task, signal.SIGUSR1)  # SLURM's --signal=SIGUSR1@90 goes to the srun tasks
        wait_for(hpc, job, timeout=120)
        start = time.monotonic()
        while not record.exists() and time.monotonic() - start < 60:
            time.sleep(0.05)
    finally:
        for pid in {task, job.pid}:  # what SLURM does to a requeued job
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        job.wait(timeout=60)
    assert record.read_text().split() == ["requeue", "4242"]
    newest = resume_checkpoint([run / "checkpoints"], run)
    assert newest == hpc  # newer than last.ckpt (step 4)
    saved_step = torch.load(newest, weights_only=True)["global_step"]
    assert saved_step == 5

    env["EXTRA"] = f"--trainer.max_steps={saved_step + 2}"
    restarted = subprocess.run(
        ["bash", str(sbatch)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    output = restarted.stdout + restarted.stderr
    assert restarted.returncode == 0, output[-3000:]
    assert f"resuming from {newest}" in output
    assert f"Restored all states from the checkpoint at {newest}" in output
    final = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["global_step"] == saved_step + 2


# ---- weights_only ----------------------------------------------------------------------------------------
def _fit_one_step(model: LightningModule, data: list, root: Path) -> Path:
    trainer = Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        callbacks=[FiniteLossGuard(), RNGStateCheckpoint(), ModelCheckpoint(dirpath=root, save_last=True)],
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    trainer.fit(model, DataLoader(data, batch_size=2))
    return root / "last.ckpt"


def test_vae_and_calid_checkpoints_load_with_weights_only(tmp_path: Path) -> None:
    """Everything in them (hparams, optimizer, callback and RNG states) is tensors and plain Python values."""
    from calid_lightning.models.calid_spatial import CaLIDSpatial
    from calid_lightning.models.checkpoints import load_model
    from calid_lightning.models.vae import VAEModule

    torch.manual_seed(0)
    images = [{"image": torch.rand(1, 16, 16)} for _ in range(4)]
    vae = VAEModule(channels=(8, 8, 8), latent_channels=4, norm_num_groups=4, scale_factor_batches=1)
    vae_path = _fit_one_step(vae, images, tmp_path / "vae")
    loaded = torch.load(vae_path, weights_only=True)
    assert "RNGStateCheckpoint" in loaded["callbacks"] and loaded["optimizer_states"]
    assert bool(load_model(vae_path, VAEModule).scale_factor_computed)

    slices = [
        {
            "below": torch.rand(1, 16, 16),
            "above": torch.rand(1, 16, 16),
            "target": torch.rand(1, 16, 16),
            "r": r,
        }
        for r in torch.linspace(0.2, 0.8, 4)
    ]
    calid = CaLIDSpatial(
        vae_checkpoint=str(vae_path),
        channels=(16, 32),
        attention_levels=(False, True),
        num_res_blocks=1,
        norm_num_groups=8,
        num_head_channels=8,
    )
    calid_path = _fit_one_step(calid, slices, tmp_path / "calid")
    loaded = torch.load(calid_path, weights_only=True)
    assert loaded["hyper_parameters"]["vae_hparams"]["channels"] == (8, 8, 8)
    assert CaLIDSpatial.load_from_checkpoint(calid_path, weights_only=True).ema.num_updates == 1
    assert isinstance(load_model(calid_path), CaLIDSpatial)


def test_step_checkpoint_saves_the_final_step_between_periodic_saves(tmp_path: Path) -> None:
    """max_steps 5 with saves every 2: the periodic saves are steps 2 and 4; last.ckpt must hold step 5."""
    from lightning.pytorch import Trainer
    from lightning.pytorch.demos.boring_classes import BoringModel

    from calid_lightning.fault_tolerance import StepModelCheckpoint

    callback = StepModelCheckpoint(
        dirpath=tmp_path,
        filename="{step}",
        every_n_train_steps=2,
        monitor="step",
        mode="max",
        save_top_k=2,
        save_last=True,
    )
    trainer = Trainer(
        max_steps=5,
        callbacks=[callback],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        accelerator="cpu",
    )
    trainer.fit(BoringModel())
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 5
    assert sorted(p.name for p in tmp_path.glob("step=*.ckpt")) == ["step=4.ckpt", "step=5.ckpt"]  # rotated


def _boring_fit(root: Path, max_steps: int, *extra: str) -> list[str]:
    """``calid fit`` of a BoringModel whose StepModelCheckpoint writes to ``root/checkpoints``."""
    callback = {
        "class_path": "calid_lightning.fault_tolerance.StepModelCheckpoint",
        "init_args": {
            "dirpath": str(root / "checkpoints"),
            "filename": "{step}",
            "every_n_train_steps": 2,
            "monitor": "step",
            "mode": "max",
            "save_top_k": 2,
            "save_last": True,
        },
    }
    return [
        "fit",
        "--model=lightning.pytorch.demos.boring_classes.BoringModel",
        "--data=lightning.pytorch.demos.boring_classes.BoringDataModule",
        f"--trainer.max_steps={max_steps}",
        "--trainer.limit_val_batches=0",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={root}",
        f"--trainer.callbacks=[{json.dumps(callback)}]",
        *extra,
    ]


def test_fit_refuses_a_folder_with_checkpoints_and_resume_overwrites_last_ckpt(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A second fit into the same folder: one line naming it (nothing written); --ckpt_path last resumes and
    replaces last.ckpt (no last-v1.ckpt); the checkpoint written last is complete, no partial file left."""
    from calid_lightning.cli import main as calid

    folder = tmp_path / "checkpoints"
    assert calid(_boring_fit(tmp_path, 3)) == 0
    first = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert sorted(first) == ["last.ckpt", "step=2.ckpt", "step=3.ckpt"]
    listing = sorted(str(p) for p in tmp_path.rglob("*"))
    capsys.readouterr()

    assert calid(_boring_fit(tmp_path, 5)) == 1
    err = capsys.readouterr().err
    assert f"checkpoint folder {folder} already holds checkpoints" in err
    assert "--ckpt_path last" in err and "--trainer.default_root_dir" in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == first
    assert sorted(str(p) for p in tmp_path.rglob("*")) == listing

    assert calid(_boring_fit(tmp_path, 5, "--ckpt_path=last")) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt", "step=4.ckpt", "step=5.ckpt"]
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 5

    assert calid(_boring_fit(tmp_path / "new", 2)) == 0  # an explicit new root starts a fresh run
    assert torch.load(tmp_path / "new" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2


def test_step_checkpoint_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A save that fails half-way leaves the previous last.ckpt as it was and no partial file."""
    from lightning.pytorch.demos.boring_classes import BoringModel

    from calid_lightning.fault_tolerance import StepModelCheckpoint

    def trainer(steps: int) -> Trainer:
        callback = StepModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
        return Trainer(
            max_steps=steps,
            callbacks=[callback],
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            accelerator="cpu",
        )

    trainer(2).fit(BoringModel())
    before = (tmp_path / "last.ckpt").read_bytes()

    def broken_save(checkpoint: dict, path: str, storage_options: Any = None) -> None:
        Path(path).write_bytes(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    failing = trainer(4)
    monkeypatch.setattr(failing.strategy.checkpoint_io, "save_checkpoint", broken_save)
    with pytest.raises(OSError, match="No space left"):
        failing.fit(BoringModel(), ckpt_path=str(tmp_path / "last.ckpt"))
    assert (tmp_path / "last.ckpt").read_bytes() == before and sorted(os.listdir(tmp_path)) == ["last.ckpt"]
