"""Training throughput per model: samples/s of the optimizer steps (compute) and of the DataModule (data).

Each model and its DataModule are built from the experiment configs exactly as ``calid fit`` builds them
(LightningCLI, ``experiments/<model>.yaml`` + ``--data`` [+ ``experiments/profiles/<profile>/<model>.yaml``]
+ ``--set`` overrides; of the trainer section only gradient clipping, accumulation and the step callbacks
apply, precision comes from ``--precisions``). CaLID models read ``--vae``, else the profile's
``runs/vae/<profile>/checkpoints/last.ckpt`` when it exists, else an untrained VAE of the config's shape
(scale factor computed on random images: the cost of a step does not depend on trained weights).

- compute: a ``Trainer`` (the config's gradient clipping, accumulation and callbacks except checkpointing
  and early stopping, e.g. the per-step finite-loss check; the model's own callbacks, EMA hooks and manual
  optimisation) fits on one real batch, moved to the device once and repeated; each of the ``--steps``
  steps after ``--warmup`` is timed from its batch start to the next (every hook of the step inside, CUDA
  synchronised) and samples/s is taken at the median step. No logger, checkpoint or validation.
- data: samples/s of iterating the real DataModule train loader for each ``--workers`` count, after
  ``--data-warmup`` batches (worker start-up).
- ratio data/compute: >= 2 means the pipeline keeps up with the model with margin.
- data share: the fraction of an estimated end-to-end step spent waiting for data. With 0 workers loading and
  compute alternate (share = t_data / (t_data + t_compute)); with workers they overlap and only the excess
  of t_data over t_compute is waited for. On a CPU-only machine the workers share the cores with the model,
  so the overlap estimate is optimistic there.

``benchmarks/bench_train.py`` (``make bench-train``) is the command line over :func:`bench_model`.
"""

from __future__ import annotations

import csv
import logging
import math
import statistics
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning
import torch
from jsonargparse import set_parsing_settings
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.fabric.utilities.warnings import PossibleUserWarning
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import Checkpoint, EarlyStopping
from lightning.pytorch.cli import LightningCLI

from calid_lightning.cli import add_calid_arguments
from calid_lightning.data.datamodule import CardiacDataModule
from calid_lightning.evaluation.table import markdown_table
from calid_lightning.experiment_config import expand_config_args
from calid_lightning.models.vae import VAEModule

EXPERIMENTS = Path("experiments")
"""The experiment configs (relative to the repository root, where the tools run)."""
PHANTOM_DATA = Path("data_modules/phantom.yaml")
MODELS = ("vae", "calid_spatial", "pixel_spatial", "segmenter")
LATENT_MODELS = ("calid_spatial",)
STEP_TRAINER_KEYS = ("gradient_clip_val", "gradient_clip_algorithm", "accumulate_grad_batches")
"""Trainer settings of an experiment config that change what one training step does."""


@dataclass
class Experiment:
    """A model and its DataModule as ``calid fit`` would build them, plus the config's trainer section."""

    name: str
    model: LightningModule
    datamodule: LightningDataModule
    trainer: dict[str, Any]
    callbacks: list[Callback]


@dataclass(frozen=True)
class Timing:
    """How much of each loop is measured: training steps after untimed ones, loader batches after untimed
    ones (worker start-up) for each worker count; ``data_only`` skips the training steps."""

    steps: int = 20
    warmup: int = 3
    batches: int = 20
    data_warmup: int = 2
    workers: tuple[int, ...] = (0, 2)
    data_only: bool = False


@dataclass
class Row:
    """One line of the result table: a model at one precision against its loader at one worker count."""

    model: str
    precision: str
    batch_size: int
    compute_samples_s: float
    workers: int
    data_samples_s: float
    data_over_compute: float
    data_share: float
    step_samples_s: float


class _ExperimentCLI(LightningCLI):
    """``calid fit``'s parser (default DataModule class, ``run`` group, OmegaConf interpolation) without a
    Trainer."""

    def add_arguments_to_parser(self, parser: Any) -> None:
        add_calid_arguments(parser)

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        return None


def config_files(
    name: str, data_config: str | Path, profile: str | None = None, experiments: Path = EXPERIMENTS
) -> list[Path]:
    """The config files ``make train-<name>`` composes: experiment, data source, optional profile."""
    files = [experiments / f"{name}.yaml", Path(data_config)]
    if profile and profile != "quick":
        files.append(experiments / "profiles" / profile / f"{name}.yaml")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(
            f"config not found: {', '.join(missing)} (model {name!r}, profile {profile!r})"
        )
    return files


def build_experiment(
    name: str,
    data_config: str | Path = PHANTOM_DATA,
    profile: str | None = None,
    overrides: Sequence[str] = (),
    experiments: Path = EXPERIMENTS,
) -> Experiment:
    """Model, DataModule and trainer settings of ``experiments/<name>.yaml`` through LightningCLI.

    ``overrides`` are ``key=value`` pairs as on the ``calid fit`` command line without the leading dashes
    (``data.init_args.batch_size=4``). Loggers are dropped, and of the config's callbacks only those that act
    on training steps are kept: checkpoint writers and early stopping go (nothing is written).
    """
    args: list[str] = []
    for path in config_files(name, data_config, profile, experiments):
        args += ["--config", str(path)]
    args += [f"--{item}" for item in overrides]
    args.append("--trainer.logger=false")
    set_parsing_settings(omegaconf_absolute_to_relative_paths=True)  # as calid fit: ${...} after all files
    cli = _ExperimentCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        parser_kwargs={"parser_mode": "omegaconf+"},
        save_config_callback=None,
        run=False,
        args=expand_config_args(args),
    )
    configured = cli.config_init["trainer"].get("callbacks") or []
    callbacks = [c for c in configured if not isinstance(c, Checkpoint | EarlyStopping)]
    return Experiment(name, cli.model, cli.datamodule, cli.config["trainer"].as_dict(), callbacks)


def untrained_vae_checkpoint(
    path: str | Path,
    data_config: str | Path = PHANTOM_DATA,
    profile: str | None = None,
    overrides: Sequence[str] = (),
    experiments: Path = EXPERIMENTS,
) -> Path:
    """Save a freshly initialised VAE of ``experiments/vae.yaml``'s shape with a computed scale factor.

    The factor comes from random images of the config's crop size: it only has to exist
    (``load_model`` refuses VAE checkpoints without one), a step costs the same whatever its value.
    """
    experiment = build_experiment("vae", data_config, profile, overrides, experiments)
    vae = experiment.model
    if not isinstance(vae, VAEModule):
        raise TypeError(f"experiments/vae.yaml builds a {type(vae).__name__}, expected a VAEModule")
    crop = int(experiment.datamodule.hparams.crop_size)
    vae.compute_scale_factor([torch.rand(4, 1, crop, crop)])
    state = {"state_dict": vae.state_dict(), "hyper_parameters": dict(vae.hparams)}
    torch.save({**state, "pytorch-lightning_version": lightning.__version__}, path)
    return Path(path)


def batch_size_of(batch: Any) -> int:
    """Examples in a DataModule batch: the leading size of its first tensor."""
    values = batch.values() if isinstance(batch, dict) else batch
    for value in values:
        if isinstance(value, torch.Tensor) and value.ndim > 0:
            return int(value.shape[0])
    raise ValueError(f"no tensor in the batch to count examples ({type(batch).__name__})")


class RepeatedBatch:
    """The same batch ``count`` times: a train loader with no loading cost (a plain list would be taken as
    several loaders by Lightning)."""

    def __init__(self, batch: Any, count: int) -> None:
        self.batch, self.count = batch, count

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Any]:
        return (self.batch for _ in range(self.count))


class StepTimer(Callback):
    """Wall time of training batches ``warmup`` to ``warmup + steps - 1``, each from its start to the next's.

    Timing at batch starts puts everything of a timed batch (module hooks such as the EMA update, which
    Lightning calls after the callbacks' ``on_train_batch_end``) inside its window; CUDA is synchronised.
    """

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
        self.samples = 0
        self.stamps: list[float] = []

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.warmup <= batch_idx <= self.warmup + self.steps:
            self.stamps.append(self._now(pl_module))
        if self.warmup <= batch_idx < self.warmup + self.steps:
            self.samples += batch_size_of(batch)

    @property
    def step_seconds(self) -> list[float]:
        """Seconds of each timed step (fewer than ``steps`` if training stopped early)."""
        return [b - a for a, b in zip(self.stamps, self.stamps[1:], strict=False)]

    def samples_per_second(self) -> float:
        """Samples/s at the median step time: robust to a step slowed by other jobs on the machine."""
        if len(self.step_seconds) != self.steps:
            raise RuntimeError(f"training stopped after {len(self.step_seconds)} of {self.steps} timed steps")
        return self.samples / self.steps / statistics.median(self.step_seconds)

    @staticmethod
    def _now(pl_module: LightningModule) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()


def compute_rate(
    experiment: Experiment,
    batch: Any,
    precision: str = "32-true",
    accelerator: str = "cpu",
    steps: int = 10,
    warmup: int = 3,
) -> StepTimer:
    """Fit ``steps + warmup + 1`` repeats of ``batch`` (moved to the device once); the timer holds the result.

    The last batch only closes the timing window. ``max_steps`` is that length, so a model whose learning-rate
    schedule needs the run's length (``lr_decay: cosine``) can build it.
    """
    device = torch.device("cuda", 0) if accelerator in ("gpu", "cuda") else torch.device("cpu")
    batch = move_data_to_device(batch, device)
    timer = StepTimer(warmup, steps)
    length = warmup + steps + 1
    settings = {k: experiment.trainer[k] for k in STEP_TRAINER_KEYS if experiment.trainer.get(k) is not None}
    with tempfile.TemporaryDirectory() as root:
        trainer = Trainer(
            accelerator=accelerator,
            devices=1,
            precision=precision,
            max_epochs=1,
            max_steps=length,
            logger=False,
            callbacks=[timer, *experiment.callbacks],
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
            default_root_dir=root,
            **settings,
        )
        trainer.fit(experiment.model, train_dataloaders=RepeatedBatch(batch, length))
    return timer


def data_rate(datamodule: CardiacDataModule, workers: int, batches: int = 20, warmup: int = 2) -> float:
    """Samples/s of the DataModule's train loader with ``workers`` workers after ``warmup`` batches."""
    datamodule.num_workers = workers
    loader = datamodule.train_dataloader()
    iterator = _endless(loader)
    for _ in range(warmup):
        next(iterator)
    start, samples = time.perf_counter(), 0
    for _ in range(batches):
        samples += batch_size_of(next(iterator))
    return samples / (time.perf_counter() - start)


def _endless(loader: Iterable[Any]) -> Any:
    while True:
        yield from loader


def first_batch(datamodule: CardiacDataModule) -> Any:
    """One training batch of the DataModule, loaded in this process."""
    datamodule.num_workers = 0
    return next(iter(datamodule.train_dataloader()))


def make_row(model: str, precision: str, batch_size: int, compute: float, workers: int, data: float) -> Row:
    """Ratio, data share and step-rate estimate of one (compute rate, data rate) pair (see the module doc).

    A NaN compute rate (not measured) gives NaN ratio, share and estimate.
    """
    if math.isnan(compute):
        return Row(model, precision, batch_size, compute, workers, data, math.nan, math.nan, math.nan)
    t_compute, t_data = 1.0 / compute, 1.0 / data
    if workers == 0:
        step, wait = t_compute + t_data, t_data
    else:
        step = max(t_compute, t_data)
        wait = max(0.0, t_data - t_compute)
    return Row(model, precision, batch_size, compute, workers, data, data / compute, wait / step, 1.0 / step)


TABLE_HEADER = (
    "model",
    "precision",
    "batch",
    "compute samples/s",
    "workers",
    "data samples/s",
    "data/compute",
    "data share",
    "est. step samples/s",
)


def throughput_table(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table (``-`` for what was not measured)."""
    cells = [
        [
            r.model,
            r.precision,
            r.batch_size,
            _cell(r.compute_samples_s, ".1f"),
            r.workers,
            _cell(r.data_samples_s, ".1f"),
            _cell(r.data_over_compute, ".2f"),
            _cell(r.data_share, ".0%"),
            _cell(r.step_samples_s, ".1f"),
        ]
        for r in rows
    ]
    return markdown_table(TABLE_HEADER, cells)


def _cell(value: float, spec: str) -> str:
    return "-" if math.isnan(value) else format(value, spec)


def write_csv(rows: Sequence[Row], path: str | Path) -> Path:
    """The rows as CSV with a header (the :class:`Row` field names)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(Row.__dataclass_fields__)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    return path


def bench_model(
    name: str,
    timing: Timing = Timing(),
    overrides: Sequence[str] = (),
    accelerator: str = "cpu",
    precisions: Sequence[str] = ("32-true",),
    data_config: str | Path = PHANTOM_DATA,
    profile: str | None = None,
    experiments: Path = EXPERIMENTS,
) -> list[Row]:
    """Build one experiment, time its data loader and its training steps, return its rows (one per
    precision and worker count; progress printed)."""
    experiment = build_experiment(name, data_config, profile, overrides, experiments)
    dm = experiment.datamodule
    if not isinstance(dm, CardiacDataModule):
        raise TypeError(f"{name}: the data config builds a {type(dm).__name__}, expected a CardiacDataModule")
    start = time.perf_counter()
    dm.prepare_data()
    dm.setup("fit")
    batch = first_batch(dm)
    size = batch_size_of(batch)
    print(f"{name}: {type(experiment.model).__name__}, data ready in {time.perf_counter() - start:.1f} s")
    data = {w: data_rate(dm, w, timing.batches, timing.data_warmup) for w in timing.workers}
    if timing.data_only:
        return [make_row(name, "-", size, math.nan, w, rate) for w, rate in data.items()]
    prepare_fit(experiment.model, dm)
    rows = []
    for precision in precisions:
        timer = compute_rate(experiment, batch, precision, accelerator, timing.steps, timing.warmup)
        compute = timer.samples_per_second()
        rows += [make_row(name, precision, size, compute, w, rate) for w, rate in data.items()]
    for workers, rate in data.items():
        print(f"  data  workers {workers}: {rate:8.1f} samples/s")
    for row in rows[:: len(data)]:
        print(f"  compute {row.precision:10s}: {row.compute_samples_s:8.1f} samples/s")
    return rows


def prepare_fit(model: LightningModule, datamodule: CardiacDataModule) -> None:
    """What a latent interpolator does at the start of ``calid fit`` with its DataModule (the latent cache,
    the residual scale), which the repeated-batch fit of :func:`compute_rate` cannot do; timed apart."""
    if getattr(model, "use_latent_cache", False):
        start = time.perf_counter()
        model.build_latent_cache(datamodule)
        print(f"  latent cache built (or read) in {time.perf_counter() - start:.1f} s")
    if getattr(model, "residual", False):
        model.fit_residual_scale(datamodule)


def quiet() -> None:
    """Silence start-up info (Lightning, MONAI's ControlNet copy) and the warnings the set-up causes."""
    for name in ("lightning.pytorch", "lightning.fabric", "monai.networks.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=PossibleUserWarning)
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)")
