"""Training that survives interruption and stops clearly when it diverges.

Lightning already provides the mechanics: ``ModelCheckpoint`` (periodic checkpoints with rotation and
``last.ckpt``), resume with ``calid fit ... --ckpt_path PATH|last`` (weights, EMA and scale-factor buffers,
optimizer, LR scheduler, loop counters, callback states) and SLURM auto-requeue (on SIGUSR1 it saves
``hpc_ckpt_N.ckpt`` in ``trainer.default_root_dir`` and calls ``scontrol requeue $SLURM_JOB_ID``). This
module adds what it lacks:

* :class:`RNGStateCheckpoint` keeps the global torch / CUDA / numpy / Python RNG states in every checkpoint
  and restores them on resume: the training data and the VAE's posterior samples are drawn from the global
  torch RNG, so without it a resumed run sees other examples than the uninterrupted one.
* :class:`FiniteLossGuard` stops a run whose loss or logged training metrics turn NaN/Inf, before the bad
  loss reaches the weights, with a message naming the step, the metric, the last checkpoint and what to try.
* :class:`ResumableDataLoader` lets Lightning resume a map-style training DataLoader mid-epoch (a plain one
  restarts the epoch's sampler at index 0), so a resume from a periodic checkpoint inside an epoch is exact
  too (with ``num_workers=0``; worker processes have RNG states of their own).
* :class:`StepModelCheckpoint` saves the final step too, writes each checkpoint to a temporary file renamed
  into place, and overwrites its own ``last.ckpt`` instead of versioning it (``last-v1.ckpt`` beside a stale
  ``last.ckpt``); :func:`check_new_run` (called by ``calid fit``) refuses to start a new run into a
  checkpoint folder that already holds checkpoints, so ``last.ckpt`` is always the newest of one run.
* :func:`resume_checkpoint` (``python -m calid_lightning.fault_tolerance resume-path``) picks the checkpoint
  a restarted job should continue from: the newest of the SLURM ``hpc_ckpt_*.ckpt`` and the ``last*.ckpt``
  files below the run's root (Lightning itself prefers an HPC checkpoint even when it is older than
  ``last.ckpt``).

Every state saved here is made of tensors and plain Python values, so checkpoints still load with
``torch.load(path, weights_only=True)`` (the default of ``torch.load``, hence of Lightning's resume).
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import random
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor
from torch.utils.data import DataLoader

from calid_lightning.experiment_config import ConfigError, merge_configs, resolved
from calid_lightning.io_safety import PARTIAL_TAG

HPC_CHECKPOINT_GLOB = "hpc_ckpt_*.ckpt"
LAST_CHECKPOINT_GLOB = "last*.ckpt"


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss or logged training metric."""


class RNGStateCheckpoint(Callback):
    """Saves the process's RNG states with every checkpoint and restores them when a run resumes.

    The states must be set just before the resumed run draws what the uninterrupted run drew after the
    checkpoint, and Lightning's restart path varies: a checkpoint that ends an epoch is followed, in the
    uninterrupted run, by a new training iterator (whose construction draws a base seed) and then its
    batches; the resumed run builds an iterator in ``fit`` and, depending on its restart stage, calls
    ``on_train_epoch_start`` and builds another. So for an end-of-epoch checkpoint the states are set when the
    checkpoint is loaded and again at an ``on_train_epoch_start`` before the first resumed batch; for a
    mid-epoch one (the iterator continues) at ``on_train_start``, after ``fit`` built its iterator. A run
    resumed at an epoch boundary then draws the same examples and noise as the uninterrupted one. Mid-epoch,
    Lightning restarts a plain DataLoader's sampler at index 0, so the remaining batches differ unless the
    DataLoader is resumable (:class:`ResumableDataLoader`).

    Under DDP only rank zero's states are saved (rank zero writes the checkpoint); every rank restores them,
    just as ``seed_everything`` gives every rank the same states at the start.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None
        self._trainer: Trainer | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        """The RNG states as tensors and plain values (``weights_only``-loadable), and the epoch position."""
        kind, key, pos, has_gauss, cached = np.random.get_state(legacy=True)
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": {
                "kind": str(kind),
                "key": torch.from_numpy(key.astype(np.int64)),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "cached_gaussian": float(cached),
            },
            "python": random.getstate(),
            "epoch_end": self._at_epoch_end(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def _at_epoch_end(self) -> bool:
        if self._trainer is None:
            return True
        progress = self._trainer.fit_loop.epoch_loop.batch_progress
        return bool(progress.is_last_batch) or progress.current.completed == 0

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep the saved states; an end-of-epoch checkpoint's are also set now."""
        self._pending = state_dict
        if state_dict.get("epoch_end", True):
            set_rng_states(state_dict)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._pending is not None and not self._pending.get("epoch_end", True):
            set_rng_states(self._pending)
            self._pending = None

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._pending is not None:
            set_rng_states(self._pending)
            self._pending = None

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._pending = None


def set_rng_states(state_dict: Mapping[str, Any]) -> None:
    """Set the RNG states saved by :meth:`RNGStateCheckpoint.state_dict`."""
    torch.set_rng_state(state_dict["torch"].cpu())
    saved = state_dict["numpy"]
    key = saved["key"].numpy().astype(np.uint32)
    np.random.set_state((saved["kind"], key, saved["pos"], saved["has_gauss"], saved["cached_gaussian"]))
    version, internal, gauss = state_dict["python"]
    random.setstate((version, tuple(internal), gauss))
    cuda = state_dict.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


class _SkipFirst:
    """An index sampler whose first iteration leaves out its first ``skip`` entries (later ones are whole)."""

    def __init__(self, sampler: Any, skip: int) -> None:
        self.sampler, self.skip = sampler, skip

    def __iter__(self) -> Iterator[Any]:
        skip, self.skip = self.skip, 0
        return itertools.islice(iter(self.sampler), skip, None)

    def __len__(self) -> int:
        return max(len(self.sampler) - self.skip, 0)


class _Counted:
    """An iterator that counts the batches it hands out in ``loader._served``."""

    def __init__(self, iterator: Iterator[Any], loader: ResumableDataLoader) -> None:
        self.iterator, self.loader = iterator, loader

    def __iter__(self) -> _Counted:
        return self

    def __next__(self) -> Any:
        batch = next(self.iterator)
        self.loader._served += 1
        return batch


class ResumableDataLoader(DataLoader):
    """A map-style DataLoader that Lightning resumes mid-epoch: it continues after the batches already served.

    Lightning saves the ``state_dict`` of a training DataLoader that has one (the batches served in the
    current epoch) and, on resume, loads it before building the iterator; the next iterator then skips that
    many batches of indices without loading them. A plain DataLoader restarts the epoch's sampler at index 0
    instead. With :class:`RNGStateCheckpoint`, ``num_workers=0`` and a dataset whose randomness comes from the
    global torch RNG (``TrainDataset``), a mid-epoch resume then sees the batches of the uninterrupted run.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._served = 0
        self._resume_at = 0

    @property
    def _index_sampler(self) -> Any:
        base = DataLoader._index_sampler.fget(self)  # type: ignore[attr-defined]
        if not self._resume_at:
            return base
        skip, self._resume_at = self._resume_at, 0
        return _SkipFirst(base, skip)

    def __len__(self) -> int:
        return len(DataLoader._index_sampler.fget(self))  # type: ignore[attr-defined]

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        self._served = self._resume_at
        return _Counted(super().__iter__(), self)  # built now: its base-seed draw happens here, as usual

    def state_dict(self) -> dict[str, int]:
        """The batches served so far in the current epoch."""
        return {"batches_served": self._served}

    def load_state_dict(self, state_dict: Mapping[str, int]) -> None:
        """Make the next iterator start after ``batches_served`` batches."""
        self._resume_at = int(state_dict.get("batches_served", 0))


class StepModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` is always the newest checkpoint of this run, complete.

    * It also saves when training ends: with ``every_n_train_steps`` alone, a ``max_steps`` that is not a
      multiple of it ends between two saves and ``last.ckpt`` misses the final weights (for the VAE: its
      latent scale factor, computed at the last step).
    * It overwrites its files instead of versioning them (Lightning's default writes ``last-v1.ckpt`` beside
      an older ``last.ckpt``, which the next stage would then read); ``calid fit`` refuses to start a new run
      into a folder that holds checkpoints (:func:`check_new_run`), so nothing of another run is overwritten.
    * Each file is written to a hidden temporary file and renamed into place, so an interrupted save leaves
      the previous checkpoint, never a truncated one.

    Everything else is Lightning's ``ModelCheckpoint`` (rotation with ``monitor: step``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("enable_version_counter", False)
        super().__init__(*args, **kwargs)

    def _save_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        target = Path(filepath)
        temp = target.with_name(f".{target.name}{PARTIAL_TAG}")  # the same name on every rank
        try:
            super()._save_checkpoint(trainer, str(temp))  # every rank calls it; rank zero writes
            if trainer.is_global_zero:
                with open(temp, "rb+") as handle:
                    os.fsync(handle.fileno())
                os.replace(temp, target)
        finally:
            if trainer.is_global_zero:
                temp.unlink(missing_ok=True)
        self._last_checkpoint_saved = filepath

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._should_skip_saving_checkpoint(trainer):
            return
        candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)


class FiniteLossGuard(Callback):
    """Stops training with :class:`NonFiniteLossError` when the loss or a logged training metric is NaN/Inf.

    The loss is checked before each backward pass (``on_before_backward``, also for manual optimization), so
    a non-finite loss never reaches the gradients, the optimizer or the EMA; logged metrics whose name starts
    with one of ``metric_prefixes`` are checked after each training batch. Under DDP the decision is reduced
    over ranks, so every rank stops together instead of one waiting forever in the gradient all-reduce.

    Args:
        metric_prefixes: logged metrics checked after each batch (default: names starting with ``train``).
    """

    def __init__(self, metric_prefixes: Sequence[str] = ("train",)) -> None:
        self.metric_prefixes = tuple(metric_prefixes)

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: Tensor) -> None:
        value = float(loss.detach().float().reshape(-1)[0]) if loss.numel() == 1 else _first_bad(loss)
        self._stop_if_bad(trainer, "loss (before backward)", value, applied=False)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        name, value = "", 0.0
        for key, metric in self._candidates(trainer, outputs):
            if not math.isfinite(metric):
                name, value = key, metric
                break
        self._stop_if_bad(trainer, name, value, applied=True)

    def _candidates(self, trainer: Trainer, outputs: Any) -> Iterable[tuple[str, float]]:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, Tensor) and loss.numel() == 1:
            yield "loss (training_step output)", float(loss.detach())
        for key, metric in trainer.callback_metrics.items():
            if key.startswith(self.metric_prefixes) and isinstance(metric, Tensor) and metric.numel() == 1:
                yield key, float(metric)

    def _stop_if_bad(self, trainer: Trainer, name: str, value: float, applied: bool) -> None:
        bad = bool(name) and not math.isfinite(value)
        if not trainer.strategy.reduce_boolean_decision(bad, all=False):
            return
        raise NonFiniteLossError(non_finite_message(trainer, name, value, applied))


def _first_bad(loss: Tensor) -> float:
    """A non-finite element of a multi-element loss, else its first element."""
    values = loss.detach().float().reshape(-1)
    bad = values[~torch.isfinite(values)]
    return float(bad[0] if bad.numel() else values[0])


def last_saved_checkpoint(trainer: Trainer) -> str | None:
    """The newest checkpoint file the trainer's ``ModelCheckpoint`` callbacks wrote (None when none)."""
    paths = []
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint):
            paths += [callback.last_model_path, callback._last_checkpoint_saved, callback.best_model_path]
    existing = [Path(p) for p in paths if p and Path(p).is_file()]
    return str(max(existing, key=lambda p: p.stat().st_mtime)) if existing else None


def non_finite_message(trainer: Trainer, name: str, value: float, applied: bool) -> str:
    """The error a diverging run stops with: where, what, the checkpoint to go back to and what to try.

    ``name`` is the bad loss or metric (empty when another DDP rank saw it); ``applied`` says whether this
    batch's optimizer step already ran.
    """
    what = f"{name} = {value}" if name else "on another DDP rank (see that rank's log)"
    precision = str(trainer.precision)
    precision = (
        ""
        if precision.startswith(("32", "64"))
        else f"full precision (--trainer.precision=32-true, not {precision}), "
    )
    checkpoint = last_saved_checkpoint(trainer)
    resume = (
        f"resume from the last checkpoint saved, {checkpoint}, with `calid fit ... --ckpt_path {checkpoint}`"
        if checkpoint
        else "no checkpoint was saved in this run yet; restart it"
    )
    state = (
        "The optimizer step of this batch already ran, so the current weights may be non-finite"
        if applied
        else "The run stopped before back-propagating this loss: the weights are still those of the last step"
    )
    return (
        f"non-finite training value at global step {trainer.global_step} (epoch {trainer.current_epoch}): "
        f"{what}. {state}. To continue, {resume}, and try one of: a lower learning rate "
        f"(--model.init_args.lr), gradient clipping (--trainer.gradient_clip_val=1.0, or "
        f"--model.init_args.grad_clip_norm=1.0 for the VAE with a discriminator), {precision}or look for "
        "bad input data."
    )


class RunFolderError(ValueError):
    """``calid fit`` would start a new run into a folder holding another run's checkpoints."""


def check_new_run(trainer: Trainer, ckpt_path: str | Path | None) -> None:
    """Refuse a new run whose checkpoint folders already hold checkpoints; raises :class:`RunFolderError`.

    A resume (``ckpt_path`` ``last`` / ``hpc``, or a file in one of the trainer's checkpoint folders or its
    ``default_root_dir``) continues the run there and passes. Anything else would mix two runs in one folder:
    the new run would overwrite the old run's ``last.ckpt`` step by step, and until then a reader of
    ``last.ckpt`` gets the old model.
    """
    folders = [
        Path(c.dirpath) for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.dirpath
    ]
    if ckpt_path is not None:
        if str(ckpt_path) in ("last", "hpc"):
            return
        parent = Path(ckpt_path).resolve().parent
        if parent in {f.resolve() for f in folders} | {Path(trainer.default_root_dir).resolve()}:
            return
    for folder in dict.fromkeys(folders):
        found = sorted(p.name for p in folder.glob("*.ckpt") if not p.name.startswith("."))
        if found:
            shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
            raise RunFolderError(
                f"checkpoint folder {folder} already holds checkpoints of an earlier run ({shown}): resume "
                "that run with --ckpt_path last, or start a new one in a new folder with "
                "--trainer.default_root_dir DIR"
            )


CHECKPOINT_SUBDIR = "checkpoints"
"""Where the checkpoints of a run go below its root (``dirpath`` in experiments/*.yaml)."""


def run_root(configs: Sequence[str | Path]) -> Path | None:
    """The ``trainer.default_root_dir`` of the configs composed and merged as ``calid fit -c ...`` does, with
    its ``${run.stage}``-style interpolations resolved (None when no config sets it).

    Every output path of an experiment config derives from it: checkpoints in ``<root>/checkpoints``, SLURM
    requeue checkpoints in ``<root>``.
    """
    merged = merge_configs(configs)
    root = resolved(merged, "trainer.default_root_dir", " + ".join(str(c) for c in configs))
    return Path(root) if root else None


def resume_checkpoint(folders: Iterable[str | Path], hpc_root: str | Path | None = None) -> Path | None:
    """The newest of the ``last*.ckpt`` in ``folders`` and the SLURM ``hpc_ckpt_*.ckpt`` in ``hpc_root``."""
    candidates = [p for folder in folders for p in Path(folder).glob(LAST_CHECKPOINT_GLOB)]
    if hpc_root is not None:
        candidates += list(Path(hpc_root).glob(HPC_CHECKPOINT_GLOB))
    files = [p for p in candidates if p.is_file()]
    return max(files, key=lambda p: p.stat().st_mtime) if files else None


def main(argv: list[str] | None = None) -> int:
    """``python -m calid_lightning.fault_tolerance resume-path -c A.yaml [-c B.yaml] [--root DIR]``.

    Prints the checkpoint a restarted job should pass to ``calid fit --ckpt_path`` (nothing when there is
    none): the newest ``last*.ckpt`` in ``<root>/checkpoints`` or ``hpc_ckpt_*.ckpt`` in ``<root>``, the root
    being ``--root`` (the ``--trainer.default_root_dir`` of the run) or the configs' own. Used by
    ``scripts/slurm/train.sbatch``.
    """
    parser = argparse.ArgumentParser(prog="python -m calid_lightning.fault_tolerance")
    sub = parser.add_subparsers(dest="command", required=True)
    resume = sub.add_parser("resume-path", help="print the newest last/hpc checkpoint of an experiment")
    resume.add_argument("-c", "--config", action="append", required=True, help="experiment config(s)")
    resume.add_argument("--root", type=Path, help="the run's trainer.default_root_dir (default: configs')")
    args = parser.parse_args(argv)
    try:
        root = args.root or run_root(args.config)
    except ConfigError as error:
        parser.error(str(error))
    if root is None:
        parser.error(f"-c {' '.join(args.config)}: no trainer.default_root_dir; pass --root DIR")
    path = resume_checkpoint([root / CHECKPOINT_SUBDIR], root)
    if path is not None:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
