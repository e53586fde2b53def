"""Training throughput (benchmarking/train_throughput.py, the measuring behind benchmarks/bench_train.py) on
the smallest settings: a 3-subject phantom, 32x32 crops, batch 2, 2 steps."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from calid_lightning.benchmarking import train_throughput as bench
from calid_lightning.experiment_config import compose
from calid_lightning.models.calid_spatial import CaLIDSpatial
from calid_lightning.models.checkpoints import load_model
from calid_lightning.models.vae import VAEModule

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = {"data_config": ROOT / "data_modules" / "phantom.yaml", "experiments": ROOT / "experiments"}
"""The repository's configs wherever pytest runs from."""


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Overrides that point every config at a tiny phantom (generated once for the module)."""
    root = tmp_path_factory.mktemp("phantom")
    return [
        f"data.init_args.root={root}",
        'data.init_args.phantom={"subjects": 3, "seed": 0, "size": [48, 48], "frames": 6}',
        "data.init_args.cache_dir=null",
        "data.init_args.crop_size=32",
        "data.init_args.batch_size=2",
    ]


def test_one_row_per_precision_and_worker_count_written_as_csv(tiny_data, tmp_path):
    timing = bench.Timing(steps=2, warmup=1, batches=2, data_warmup=1, workers=(0,))
    out = bench.write_csv(
        bench.bench_model("segmenter", timing, tiny_data, **CONFIGS), tmp_path / "bench.csv"
    )
    rows = list(csv.DictReader(out.open()))
    assert [(r["model"], r["precision"], r["workers"]) for r in rows] == [("segmenter", "32-true", "0")]
    row = {k: float(v) for k, v in rows[0].items() if k not in ("model", "precision")}
    assert row["batch_size"] == 2 and row["compute_samples_s"] > 0 and row["data_samples_s"] > 0
    assert row["data_over_compute"] == pytest.approx(row["data_samples_s"] / row["compute_samples_s"])
    assert 0 < row["data_share"] < 1
    assert row["step_samples_s"] < min(row["compute_samples_s"], row["data_samples_s"])  # serial at 0 workers


def test_calid_times_only_the_steps_after_warmup_with_its_hooks(tiny_data, tmp_path):
    vae_path = bench.untrained_vae_checkpoint(tmp_path / "vae.ckpt", overrides=tiny_data, **CONFIGS)
    vae = load_model(vae_path, VAEModule)  # refuses a checkpoint without a computed scale factor
    assert tuple(vae.hparams.channels) == (32, 64, 64)  # experiments/vae.yaml's shape
    experiment = bench.build_experiment(
        "calid_spatial", overrides=[*tiny_data, f"model.init_args.vae_checkpoint={vae_path}"], **CONFIGS
    )
    assert isinstance(experiment.model, CaLIDSpatial)
    assert experiment.trainer["gradient_clip_val"] == 1.0  # the config's trainer section
    configured = compose(ROOT / "experiments" / "calid_spatial.yaml")["trainer"].get("callbacks") or []
    names = [c["class_path"].rsplit(".", 1)[1] for c in configured]
    kept = [name for name in names if not name.endswith("ModelCheckpoint")]
    assert [type(c).__name__ for c in experiment.callbacks] == kept, "step callbacks kept, checkpointing not"
    experiment.datamodule.prepare_data()
    experiment.datamodule.setup("fit")
    batch = bench.first_batch(experiment.datamodule)
    bench.prepare_fit(experiment.model, experiment.datamodule)  # the config's latent cache and residual scale
    assert experiment.model._latent_cache is not None and float(experiment.model.residual_scale) > 0
    timer = bench.compute_rate(experiment, batch, steps=2, warmup=1)
    assert timer.samples == 2 * 2 and len(timer.step_seconds) == 2 and min(timer.step_seconds) > 0
    assert int(experiment.model.ema.num_updates) == 1 + 2 + 1, "the model's EMA hook ran on every step"


def test_step_rate_is_taken_at_the_median_step():
    timer = bench.StepTimer(warmup=1, steps=3)
    timer.samples, timer.stamps = 3 * 8, [0.0, 1.0, 2.0, 12.0]  # one step slowed by another job
    assert timer.samples_per_second() == 8.0
    timer.stamps = timer.stamps[:3]
    with pytest.raises(RuntimeError, match="2 of 3 timed steps"):
        timer.samples_per_second()


def test_row_estimates_serial_and_overlapped_loading():
    serial = bench.make_row("m", "32-true", 8, compute=10.0, workers=0, data=10.0)
    assert (serial.data_share, serial.step_samples_s, serial.data_over_compute) == (0.5, 5.0, 1.0)
    slow_workers = bench.make_row("m", "32-true", 8, compute=10.0, workers=2, data=5.0)
    assert slow_workers.data_share == pytest.approx(0.5) and slow_workers.step_samples_s == pytest.approx(5.0)
    fast_workers = bench.make_row("m", "32-true", 8, compute=10.0, workers=2, data=20.0)
    assert (fast_workers.data_share, fast_workers.step_samples_s) == (0.0, 10.0)
    data_only = bench.make_row("m", "-", 8, compute=math.nan, workers=2, data=20.0)
    assert math.isnan(data_only.data_over_compute) and math.isnan(data_only.data_share)
    table = bench.throughput_table([serial, fast_workers, data_only]).splitlines()
    assert len(table) == 5 and table[0].startswith("| model |") and "| 2.00 | 0% |" in table[3]
    assert table[4] == "| m | - | 8 | - | 2 | 20.0 | - | - | - |"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_steps_on_gpu(tiny_data):
    experiment = bench.build_experiment("segmenter", overrides=tiny_data, **CONFIGS)
    experiment.datamodule.prepare_data()
    experiment.datamodule.setup("fit")
    batch = bench.first_batch(experiment.datamodule)
    timer = bench.compute_rate(experiment, batch, "bf16-mixed", "gpu", steps=2, warmup=1)
    assert timer.samples == 4 and timer.samples_per_second() > 0


def test_vae_with_its_cosine_schedule_is_timed(tiny_data, tmp_path):
    """experiments/vae.yaml decays its rate over trainer.max_steps: the timing run must give it a length."""
    experiment = bench.build_experiment("vae", overrides=tiny_data, **CONFIGS)
    assert experiment.model.hparams.lr_decay == "cosine"
    experiment.datamodule.prepare_data()
    experiment.datamodule.setup("fit")
    timer = bench.compute_rate(experiment, bench.first_batch(experiment.datamodule), steps=2, warmup=1)
    assert timer.samples == 2 * 2 and len(timer.step_seconds) == 2 and timer.samples_per_second() > 0
