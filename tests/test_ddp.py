"""Multi-process training: DDP on 2 CPU ranks, 2 torchrun "nodes", evaluation without repeats, precision.

The DDP tests run ``calid fit`` as subprocesses (DDP inside pytest would re-run pytest on the second rank)
and assert on what the run wrote: checkpoints, CSV log, and a per-rank probe file from :data:`PROBE`.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.plugins.precision import MixedPrecision
from monai.networks.blocks.spatialattention import SpatialAttentionBlock
from torch.utils.data import DataLoader, DistributedSampler

from calid_lightning.cli import run_lightning_cli
from calid_lightning.data.datamodule import CardiacDataModule
from calid_lightning.data.phantom import PhantomConfig, write_dataset
from calid_lightning.distributed import eval_sampler, global_batch_size
from calid_lightning.models.attention import Float32SpatialAttention, float32_attention
from calid_lightning.models.calid_spatial import CaLIDSpatial
from calid_lightning.models.vae import VAEModule
from calid_lightning.tracking import find_metrics_csv, read_metric_history
from checkpoints import tiny_vae_checkpoint

REPO = Path(__file__).resolve().parents[1]
PHANTOM = {"subjects": 3, "seed": 0, "size": (48, 48), "frames": 6}
BATCH = 2
EVAL_EXAMPLES = 5  # odd: the two ranks get 3 and 2 validation examples (2 and 1 batches)
STEPS = 3
TIMEOUT_S = 420  # a hang fails the test instead of blocking the suite
UNET = {"channels": [16, 32], "attention_levels": [False, True], "num_head_channels": 8, "norm_num_groups": 8}

PROBE = '''
"""What one rank trained and evaluated, written to ``out/rank{global_rank}.pt`` at the end of fit."""
from pathlib import Path

import torch
from lightning.pytorch import Callback


class RankProbe(Callback):
    def __init__(self, out: str) -> None:
        self.out = out
        self.train_batches = 0
        self.val_items = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.train_batches += 1

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            keys = zip(batch["subject_id"], batch["z"].tolist(), batch["frame"].tolist(), strict=True)
            self.val_items += [tuple(key) for key in keys]

    def on_fit_end(self, trainer, pl_module):
        Path(self.out).mkdir(parents=True, exist_ok=True)
        state = {
            "world_size": trainer.world_size,
            "global_step": trainer.global_step,
            "train_batches": self.train_batches,
            "val_items": self.val_items,
            "ema": {k: v.detach().cpu().clone() for k, v in pl_module.ema.state_dict().items()},
        }
        torch.save(state, Path(self.out) / f"rank{trainer.global_rank}.pt")
'''


# ---- evaluation without repeats (fast) ---------------------------------------------------------------------
def ranks(world_size: int) -> list[SimpleNamespace]:
    """Stand-ins for the trainer of each rank (what the samplers read)."""
    return [SimpleNamespace(world_size=world_size, global_rank=r) for r in range(world_size)]


def test_eval_sampler_gives_every_index_to_exactly_one_rank() -> None:
    data = list(range(5))
    shares = [list(eval_sampler(data, trainer)) for trainer in ranks(2)]
    assert shares == [[0, 2, 4], [1, 3]]
    assert sorted(shares[0] + shares[1]) == data
    assert all(isinstance(eval_sampler(data, t), DistributedSampler) for t in ranks(2))  # Lightning keeps it
    padded = [list(DistributedSampler(data, num_replicas=2, rank=r, shuffle=False)) for r in (0, 1)]
    assert len(padded[0] + padded[1]) == 6  # what Lightning's default would do: index 0 twice
    assert eval_sampler(data, None) is None and eval_sampler(data, ranks(1)[0]) is None
    with pytest.raises(ValueError, match=r"val split has 1 examples.*2 processes.*max_eval_examples"):
        eval_sampler([0], ranks(2)[0])


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny phantom (3 subjects: one per split), written once for the module."""
    root = tmp_path_factory.mktemp("phantom")
    options = dict(PHANTOM)
    subjects, seed = options.pop("subjects"), options.pop("seed")
    write_dataset(root, subjects=subjects, seed=seed, config=PhantomConfig(**options))
    return root


def test_datamodule_eval_loaders_split_examples_over_ranks(phantom_root: Path) -> None:
    dm = CardiacDataModule(
        root=str(phantom_root), crop_size=32, batch_size=BATCH, max_eval_examples=EVAL_EXAMPLES
    )
    for split in ("val", "test"):
        seen = []
        for trainer in ranks(2):
            dm.trainer = trainer
            loader = dm.val_dataloader() if split == "val" else dm.test_dataloader()
            pairs = (zip(b["subject_id"], b["z"].tolist(), strict=True) for b in loader)
            seen.append([pair for batch in pairs for pair in batch])
        expected = sorted((e.subject_id, e.target) for e in dm.examples(split))
        assert len(expected) == EVAL_EXAMPLES and [len(s) for s in seen] == [3, 2]
        assert sorted(seen[0] + seen[1]) == expected
    dm.trainer = None  # one process: Lightning's own (sequential) sampler over every example
    assert list(dm.val_dataloader().sampler) == list(range(EVAL_EXAMPLES))


# ---- effective global batch (fast) -------------------------------------------------------------------------
def test_effective_global_batch_is_logged_and_printed(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(tmp_path)}}
    run_lightning_cli(
        [
            "fit",
            "--model=lightning.pytorch.demos.boring_classes.BoringModel",
            "--data=lightning.pytorch.demos.boring_classes.BoringDataModule",
            "--trainer.accelerator=cpu",
            "--trainer.max_steps=1",
            "--trainer.accumulate_grad_batches=3",
            "--trainer.limit_val_batches=0",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            "--trainer.enable_checkpointing=false",
            f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.logger={json.dumps(logger)}",
        ]
    )
    hparams = yaml.safe_load(next(tmp_path.rglob("hparams.yaml")).read_text())
    assert hparams["effective_global_batch_size"] == 3  # BoringDataModule: batch 1, 1 device, 3 accumulated
    assert (hparams["world_size"], hparams["accumulate_grad_batches"], hparams["lr_scaled"]) == (1, 3, False)
    out = capsys.readouterr().out
    assert "Effective global batch size 3 = batch 1 x 1 devices x 1 nodes x 3 accumulated" in out
    assert "not scaled" in out
    assert global_batch_size(8, 4, 2, 2) == 128


# ---- precision (fast) --------------------------------------------------------------------------------------
class RecordLoss(Callback):
    """The loss tensor each training step returned."""

    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(outputs["loss"].detach())


def fit_two_steps(model: torch.nn.Module, data: list[dict], **trainer_args: object) -> list[torch.Tensor]:
    """The losses of two CPU training steps of ``model`` on ``data``."""
    record = RecordLoss()
    trainer = Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[record],
        **trainer_args,
    )
    trainer.fit(model, DataLoader(data, batch_size=4))
    assert trainer.global_step == 2
    return record.losses


@pytest.fixture(scope="module")
def vae_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_vae_checkpoint(tmp_path_factory.mktemp("vae") / "vae.ckpt")


def tiny_models(vae_checkpoint: Path) -> list[tuple[torch.nn.Module, list[dict]]]:
    """A tiny VAE and a tiny spatial interpolator (both with attention), each with its training data."""
    torch.manual_seed(0)
    images = torch.rand(8, 1, 16, 16)
    vae = VAEModule(channels=(8, 8, 8), latent_channels=4, norm_num_groups=4, nonlocal_attn=True)
    spatial = CaLIDSpatial(vae_checkpoint=str(vae_checkpoint), num_res_blocks=1, **UNET)
    examples = [
        {"below": images[i], "above": images[i + 1], "target": images[i + 2], "r": torch.tensor(0.5)}
        for i in range(6)
    ]
    return [(vae, [{"image": x} for x in images]), (spatial, examples)]


def test_bf16_mixed_trains_vae_and_interpolator_with_float32_losses(vae_checkpoint: Path) -> None:
    for model, data in tiny_models(vae_checkpoint):
        losses = fit_two_steps(model, data, precision="bf16-mixed")
        assert len(losses) == 2, type(model).__name__
        assert all(loss.dtype == torch.float32 and torch.isfinite(loss) for loss in losses), losses


def test_float32_attention_keeps_float16_attention_finite() -> None:
    torch.manual_seed(0)
    block = SpatialAttentionBlock(spatial_dims=2, num_channels=16, num_head_channels=8, norm_num_groups=8)
    with torch.no_grad():
        for linear in (block.attn.to_q, block.attn.to_k):
            linear.weight.mul_(300)  # logits finite in float32, beyond float16's 65504
    x = torch.randn(2, 16, 8, 8)
    reference = block(x)
    keys = block.state_dict().keys()
    with torch.autocast("cpu", dtype=torch.float16):
        assert not torch.isfinite(block(x)).all()
        assert float32_attention(torch.nn.Sequential(block)) == 1
        patched = block(x)
    torch.testing.assert_close(patched, reference)
    assert block.state_dict().keys() == keys and type(copy.deepcopy(block)) is Float32SpatialAttention


def test_16_mixed_with_a_grad_scaler_trains_with_float32_attention_and_losses(vae_checkpoint: Path) -> None:
    """``16-mixed`` as on a GPU (float16 autocast, GradScaler), run on CPU through the explicit plugin."""
    for model, data in tiny_models(vae_checkpoint):
        float32_attention(model)
        blocks = [m for m in model.modules() if isinstance(m, SpatialAttentionBlock)]
        assert blocks and all(type(m) is Float32SpatialAttention for m in blocks)
        dtypes: list[torch.dtype] = []
        blocks[0].attn.register_forward_hook(lambda module, args, out, seen=dtypes: seen.append(out.dtype))
        plugin = MixedPrecision("16-mixed", "cpu")
        losses = fit_two_steps(model, data, plugins=[plugin])
        assert plugin.scaler is not None and dtypes and set(dtypes) == {torch.float32}, dtypes
        assert all(loss.dtype == torch.float32 and torch.isfinite(loss) for loss in losses), losses


# ---- DDP: 2 CPU ranks, and 2 torchrun "nodes" (subprocesses) -----------------------------------------------
def free_port() -> int:
    """A TCP port nothing listens on now (bound then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fit_args(phantom_root: Path, vae: Path, out: Path) -> list[str]:
    """``calid fit`` of the real spatial experiment and phantom configs, shrunk to a tiny model and run."""
    model = {
        **UNET,
        "num_res_blocks": 1,
        "val_inference_steps": 2,
        "val_num_samples": 2,
        "lr_warmup_steps": 0,
    }
    data = {
        "root": str(phantom_root),
        "phantom": None,
        "cache_dir": None,
        "crop_size": 32,
        "batch_size": BATCH,
        "samples_per_epoch": 16,
        "max_eval_examples": EVAL_EXAMPLES,
    }
    callbacks = [
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"dirpath": str(out / "checkpoints"), "filename": "{step}", "save_last": True},
        },
        {"class_path": "ddp_probe.RankProbe", "init_args": {"out": str(out / "probe")}},
    ]
    logger = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(out / "logs")},
    }
    trainer = {
        "accelerator": "cpu",
        "strategy": "ddp",
        "max_steps": STEPS,
        "val_check_interval": STEPS,
        "num_sanity_val_steps": 0,
        "log_every_n_steps": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": str(out),
    }
    args = [
        "fit",
        "-c",
        str(REPO / "experiments/calid_spatial.yaml"),
        "-c",
        str(REPO / "data_modules/phantom.yaml"),
        f"--model.init_args.vae_checkpoint={vae}",
        f"--trainer.logger={json.dumps(logger)}",
        f"--trainer.callbacks={json.dumps(callbacks)}",
    ]
    args += [f"--model.init_args.{k}={cli_value(v)}" for k, v in model.items()]
    args += [f"--data.init_args.{k}={cli_value(v)}" for k, v in data.items()]
    return args + [f"--trainer.{k}={cli_value(v)}" for k, v in trainer.items()]


def cli_value(value: object) -> str:
    """A command-line value: strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def subprocess_env(probe_dir: Path) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(probe_dir), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    (tmp_path / "ddp_probe.py").write_text(PROBE)
    return tmp_path


def run_together(commands: list[list[str]], env: dict[str, str], logs: Path) -> str:
    """Run the commands at once, each in its own process group; kill them all if any outlives the deadline.

    Returns their combined output; fails with its tail when one exits non-zero or the run hangs.
    """
    deadline = time.monotonic() + TIMEOUT_S
    procs, files = [], []
    hung = False
    try:
        for i, command in enumerate(commands):
            files.append((logs / f"process{i}.log").open("w"))
            procs.append(
                subprocess.Popen(
                    command,
                    env=env,
                    cwd=logs,
                    stdout=files[-1],
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        for proc in procs:
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                hung = True
                break
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for handle in files:
            handle.close()
    output = "\n".join((logs / f"process{i}.log").read_text() for i in range(len(procs)))
    assert not hung, f"no exit within {TIMEOUT_S} s (a DDP hang?):\n{output[-6000:]}"
    assert all(proc.returncode == 0 for proc in procs), output[-6000:]
    return output


def check_two_rank_run(out: Path, output: str, phantom_root: Path) -> None:
    """One checkpoint set from rank 0, EMA equal on both ranks and in it, evaluation split, CSV log."""
    checkpoints = out / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("*.ckpt")) == ["last.ckpt", f"step={STEPS}.ckpt"]
    checkpoint = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == STEPS

    probes = [torch.load(out / "probe" / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert sorted(p.name for p in (out / "probe").iterdir()) == ["rank0.pt", "rank1.pt"]
    for probe in probes:
        assert (probe["world_size"], probe["global_step"], probe["train_batches"]) == (2, STEPS, STEPS)
    ema = {k.removeprefix("ema."): v for k, v in checkpoint["state_dict"].items() if k.startswith("ema.")}
    assert int(ema["num_updates"]) == STEPS and len(ema) > 10
    for rank, probe in enumerate(probes):
        assert probe["ema"].keys() == ema.keys()
        different = [k for k, v in ema.items() if not torch.equal(probe["ema"][k], v)]
        assert not different, f"rank {rank} EMA differs from the checkpoint: {different[:5]}"

    dm = CardiacDataModule(root=str(phantom_root), crop_size=32, max_eval_examples=EVAL_EXAMPLES)
    expected = sorted((e.subject_id, e.target, e.frame) for e in dm.examples("val"))
    seen = [probe["val_items"] for probe in probes]
    assert [len(items) for items in seen] == [3, 2]  # 5 examples: rank 0 gets 3, rank 1 gets 2, none twice
    assert sorted(seen[0] + seen[1]) == expected

    metrics = find_metrics_csv(out / "logs")
    assert metrics is not None
    assert len(read_metric_history(metrics, "train/loss_step")) == STEPS
    assert len(read_metric_history(metrics, "val/loss")) == 1
    assert len(read_metric_history(metrics, "val/psnr")) == 1
    hparams = yaml.safe_load((metrics.parent / "hparams.yaml").read_text())
    assert hparams["effective_global_batch_size"] == 2 * BATCH and hparams["world_size"] == 2
    assert hparams["batch_size_per_device"] == BATCH and hparams["lr_scaled"] is False
    assert output.count(f"Effective global batch size {2 * BATCH} = batch {BATCH}") == 1  # rank 0 only


@pytest.mark.ddp
def test_calid_fit_on_two_cpu_ranks(phantom_root: Path, vae_checkpoint: Path, run_dir: Path) -> None:
    """``calid fit --trainer.devices 2 --trainer.strategy ddp`` on CPU (gloo): Lightning starts rank 1."""
    args = fit_args(phantom_root, vae_checkpoint, run_dir)
    command = [sys.executable, "-m", "calid_lightning.cli", *args, "--trainer.devices=2"]
    output = run_together([command], subprocess_env(run_dir), run_dir)
    check_two_rank_run(run_dir, output, phantom_root)


@pytest.mark.ddp
def test_calid_fit_on_two_torchrun_nodes(phantom_root: Path, vae_checkpoint: Path, run_dir: Path) -> None:
    """Two ``torchrun`` agents (node ranks 0 and 1, one process each) on the loopback address."""
    port = free_port()
    args = [*fit_args(phantom_root, vae_checkpoint, run_dir), "--trainer.num_nodes=2", "--trainer.devices=1"]
    commands = [
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=2",
            "--nproc-per-node=1",
            f"--node-rank={node}",
            "--master-addr=127.0.0.1",
            f"--master-port={port}",
            "-m",
            "calid_lightning.cli",
            *args,
        ]
        for node in (0, 1)
    ]
    output = run_together(commands, subprocess_env(run_dir), run_dir)
    check_two_rank_run(run_dir, output, phantom_root)
