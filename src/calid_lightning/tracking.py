"""Experiment tracking: W&B online when credentials exist, offline otherwise; the resolved config per run.

``wandb.init`` with no API key and no ``WANDB_MODE`` fails at once ("No API key configured"). The ``calid``
command therefore calls :func:`ensure_wandb_mode` before any logger is built: without credentials it sets
``WANDB_MODE=offline`` (inherited by DDP ranks and sweep trials) and says how to upload the runs later.
:class:`LoggedConfigCallback` sends the full resolved LightningCLI config to W&B and writes it next to each
CSV log, so every run is reproducible from what its loggers kept.
"""

from __future__ import annotations

import csv
import math
import netrc
import os
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from calid_lightning.distributed import describe_effective_batch, effective_batch

PROJECT = "calid-lightning"
DEFAULT_BASE_URL = "https://api.wandb.ai"
RUN_CONFIG_FILE = "calid-config.yaml"  # the resolved config among a W&B run's files (`calid fit -c` takes it)


def wandb_host(env: Mapping[str, str] | None = None) -> str:
    """The W&B server host (``WANDB_BASE_URL``'s host, default ``api.wandb.ai``): the ``.netrc`` machine."""
    env = os.environ if env is None else env
    return urlsplit(env.get("WANDB_BASE_URL") or DEFAULT_BASE_URL).netloc


def netrc_path(env: Mapping[str, str] | None = None) -> Path:
    """The ``.netrc`` file ``wandb login`` writes to (``NETRC`` overrides ``~/.netrc``)."""
    env = os.environ if env is None else env
    return Path(env.get("NETRC") or "~/.netrc").expanduser()


def has_wandb_credentials(env: Mapping[str, str] | None = None) -> bool:
    """Whether W&B has credentials: ``WANDB_API_KEY``, an identity token or a ``.netrc`` host entry."""
    env = os.environ if env is None else env
    if env.get("WANDB_API_KEY") or env.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    try:
        entry = netrc.netrc(str(netrc_path(env))).authenticators(wandb_host(env))
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return bool(entry and entry[2])


def resolve_wandb_mode(env: Mapping[str, str] | None = None) -> str:
    """The mode runs will use: ``WANDB_MODE`` when set, else ``online`` with credentials, else ``offline``."""
    env = os.environ if env is None else env
    if env.get("WANDB_MODE"):
        return env["WANDB_MODE"]
    return "online" if has_wandb_credentials(env) else "offline"


def ensure_wandb_mode(env: MutableMapping[str, str] | None = None, announce: bool = True) -> str:
    """Set ``WANDB_MODE=offline`` when no credentials are present (never overriding a set mode); return mode.

    With ``announce``, prints one line saying runs are offline and how to upload them.
    """
    env = os.environ if env is None else env
    if env.get("WANDB_MODE"):
        return env["WANDB_MODE"]
    mode = resolve_wandb_mode(env)
    if mode == "offline":
        env["WANDB_MODE"] = "offline"
        if announce:
            print(
                "W&B: no credentials (WANDB_API_KEY or `wandb login`), runs are offline; upload them later "
                "with `wandb sync <save_dir>/wandb/offline-run-*`."
            )
    return mode


def plain_config(parser: Any, config: Any) -> dict[str, Any]:
    """The resolved LightningCLI config as plain YAML types (what ``config.yaml`` holds)."""
    return yaml.safe_load(parser.dump(config, skip_none=False))


class LoggedConfigCallback(SaveConfigCallback):
    """Saves the resolved config as LightningCLI does, plus to every W&B run and next to every CSV log.

    A W&B run gets it as hyperparameters (the run's config, nested as in the YAML) and as the run file
    :data:`RUN_CONFIG_FILE`; a CSV log as ``config.yaml`` in its version folder.

    Runs on rank zero only (Lightning calls ``save_config`` there), so DDP ranks never open a second W&B run.

    At the start of training it also logs the effective global batch size (per-device batch x devices x
    nodes x gradient accumulation, see :func:`~calid_lightning.distributed.effective_batch`) to every
    logger as hyperparameters and prints it on rank zero: the learning rate is never scaled with it.
    """

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        config = plain_config(self.parser, self.config)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_hyperparams(config)
                run = logger.experiment
                if getattr(run, "disabled", False):  # WANDB_MODE=disabled: no run folder
                    continue
                path = Path(run.dir) / RUN_CONFIG_FILE
                path.write_text(yaml.safe_dump(config, sort_keys=False))
                run.save(str(path), base_path=run.dir, policy="now")
            elif isinstance(logger, CSVLogger):
                path = Path(logger.log_dir) / self.config_filename
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(yaml.safe_dump(config, sort_keys=False))

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Log the effective global batch size once the training loader exists (every rank calls it)."""
        log_effective_batch(trainer)


def log_effective_batch(trainer: Trainer) -> dict[str, Any] | None:
    """Log the effective global batch size to every logger and print it on rank zero; returns it.

    Loggers write on rank zero only, so calling this on every rank logs it once.
    """
    hparams = effective_batch(trainer)
    if hparams is None:
        return None
    for logger in trainer.loggers:
        logger.log_hyperparams(hparams)
    if trainer.is_global_zero:
        print(describe_effective_batch(hparams), flush=True)
    return hparams


def find_metrics_csv(folder: str | Path) -> Path | None:
    """The newest ``metrics.csv`` a CSVLogger wrote under ``folder`` (None when there is none)."""
    found = sorted(Path(folder).rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def read_metric_history(path: str | Path, metric: str) -> list[float]:
    """Every finite value of column ``metric`` in a CSVLogger ``metrics.csv``, in logging order."""
    values: list[float] = []
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            text = (row.get(metric) or "").strip()
            if text:
                value = float(text)
                if math.isfinite(value):
                    values.append(value)
    return values
