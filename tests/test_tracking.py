"""W&B tracking: offline detection from the environment; an offline WandbLogger run read back from disk."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.demos.boring_classes import BoringModel

from calid_lightning.cli import run_lightning_cli
from calid_lightning.tracking import (
    RUN_CONFIG_FILE,
    ensure_wandb_mode,
    find_metrics_csv,
    has_wandb_credentials,
    read_metric_history,
    resolve_wandb_mode,
)


class LoggingBoringModel(BoringModel):
    """Lightning's BoringModel plus a logged training metric, so the run has a history to read back."""

    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        self.log("train/boring", out["loss"].detach() * 0 + 1.5)
        return out


def _netrc(tmp_path: Path, machine: str, password: str = "0123456789" * 4) -> str:
    path = tmp_path / "netrc"
    path.write_text(f"machine {machine}\n  login user\n  password {password}\n")
    path.chmod(0o600)
    return str(path)


def test_credentials_from_api_key_or_netrc_entry_for_the_host(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-netrc")
    assert has_wandb_credentials({"WANDB_API_KEY": "x" * 40, "NETRC": missing})
    assert not has_wandb_credentials({"NETRC": missing})
    assert has_wandb_credentials({"NETRC": _netrc(tmp_path, "api.wandb.ai")})
    other = _netrc(tmp_path, "github.com")
    assert not has_wandb_credentials({"NETRC": other})
    server = {"NETRC": _netrc(tmp_path, "wandb.example.org"), "WANDB_BASE_URL": "https://wandb.example.org"}
    assert has_wandb_credentials(server)
    assert not has_wandb_credentials({**server, "WANDB_BASE_URL": "https://api.wandb.ai"})


def test_mode_offline_without_credentials_and_never_overrides_a_set_mode(tmp_path: Path, capsys) -> None:
    missing = str(tmp_path / "no-netrc")
    env = {"NETRC": missing}
    assert resolve_wandb_mode(env) == "offline"
    assert ensure_wandb_mode(env) == "offline"
    assert env["WANDB_MODE"] == "offline"
    line = capsys.readouterr().out.strip()
    assert len(line.splitlines()) == 1 and "offline" in line and "wandb sync" in line

    keyed = {"NETRC": missing, "WANDB_API_KEY": "x" * 40}
    assert ensure_wandb_mode(keyed) == "online" and "WANDB_MODE" not in keyed
    chosen = {"NETRC": missing, "WANDB_MODE": "disabled"}
    assert ensure_wandb_mode(chosen) == "disabled" and chosen["WANDB_MODE"] == "disabled"
    assert capsys.readouterr().out == ""


def test_read_metric_history_skips_rows_without_the_metric(tmp_path: Path) -> None:
    path = tmp_path / "run" / "version_0" / "metrics.csv"
    path.parent.mkdir(parents=True)
    path.write_text("step,train/loss,val/psnr\n9,0.5,\n9,,20.5\n19,0.4,\n19,,nan\n29,,22.25\n")
    assert find_metrics_csv(tmp_path) == path
    assert read_metric_history(path, "val/psnr") == [20.5, 22.25]
    assert read_metric_history(path, "val/ssim") == []
    assert find_metrics_csv(tmp_path / "run" / "empty") is None


def read_transaction_log(path: Path) -> list:
    """The records of a W&B ``.wandb`` file (LevelDB-style log: 7-byte headers, 32 KiB blocks, protobufs)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    records, pending, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            break
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _fit_boring_with_wandb_and_csv(tmp_path: Path, monkeypatch, mode: str) -> None:
    """``calid fit`` of a tiny model, logging to W&B (in ``mode``) and CSV under ``tmp_path``."""
    import wandb

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", mode)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    loggers = [
        {
            "class_path": "lightning.pytorch.loggers.WandbLogger",
            "init_args": {"project": "calid-lightning", "name": "tiny", "save_dir": str(tmp_path)},
        },
        {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(tmp_path)}},
    ]
    torch.manual_seed(0)
    try:
        run_lightning_cli(
            [
                "fit",
                "--model=test_tracking.LoggingBoringModel",
                "--data=lightning.pytorch.demos.boring_classes.BoringDataModule",
                "--trainer.max_steps=3",
                "--trainer.limit_val_batches=1",
                "--trainer.log_every_n_steps=1",
                "--trainer.enable_progress_bar=false",
                "--trainer.enable_model_summary=false",
                "--trainer.enable_checkpointing=false",
                f"--trainer.default_root_dir={tmp_path}",
                f"--trainer.logger={json.dumps(loggers)}",
            ]
        )
    finally:
        wandb.finish()
        wandb.teardown()  # W&B keeps the process's settings (the mode too) until torn down


def test_wandb_disabled_leaves_the_csv_log(tmp_path: Path, monkeypatch) -> None:
    """``WANDB_MODE=disabled`` is the CSV-only switch: training runs, no W&B folder, a complete CSV log."""
    _fit_boring_with_wandb_and_csv(tmp_path, monkeypatch, "disabled")
    assert not list(tmp_path.rglob("offline-run-*"))
    assert yaml.safe_load((tmp_path / "lightning_logs" / "version_0" / "config.yaml").read_text())["trainer"]
    assert read_metric_history(find_metrics_csv(tmp_path / "lightning_logs"), "train/boring") == [1.5] * 3


def test_offline_wandb_run_keeps_config_and_metrics_on_disk(tmp_path: Path, monkeypatch) -> None:
    """``calid fit`` with W&B + CSV loggers offline: the run folder keeps the resolved config and metric."""
    _fit_boring_with_wandb_and_csv(tmp_path, monkeypatch, "offline")

    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    saved = yaml.safe_load((run_dir / "files" / RUN_CONFIG_FILE).read_text())
    assert saved["trainer"]["max_steps"] == 3
    assert saved["model"]["class_path"] == "test_tracking.LoggingBoringModel"

    (log,) = run_dir.glob("run-*.wandb")
    records = read_transaction_log(log)
    config = {
        item.key or "/".join(item.nested_key): json.loads(item.value_json)
        for r in records
        if r.WhichOneof("record_type") == "config"
        for item in r.config.update
    }
    assert config["trainer"]["max_steps"] == 3, sorted(config)
    history = [
        json.loads(item.value_json)
        for r in records
        if r.WhichOneof("record_type") == "history"
        for item in r.history.item
        if (item.key or "/".join(item.nested_key)) == "train/boring"
    ]
    assert history and all(value == pytest.approx(1.5) for value in history)

    csv_config = yaml.safe_load((tmp_path / "lightning_logs" / "version_0" / "config.yaml").read_text())
    assert csv_config["trainer"]["max_steps"] == 3
    assert read_metric_history(find_metrics_csv(tmp_path / "lightning_logs"), "train/boring")[-1] == 1.5
