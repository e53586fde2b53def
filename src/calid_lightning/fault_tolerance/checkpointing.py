"""Checkpoints that do not mislead: :class:`StepModelCheckpoint` saves the final step too, writes each file
to a temporary one renamed into place and overwrites its own ``last.ckpt`` instead of versioning it, so
``last.ckpt`` is always the newest complete checkpoint of one run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from calid_lightning.io_safety import PARTIAL_TAG


class StepModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` is always the newest checkpoint of this run, complete.

    * It also saves when training ends: with ``every_n_train_steps`` alone, a ``max_steps`` that is not a
      multiple of it ends between two saves and ``last.ckpt`` misses the final weights (for the VAE: its
      latent scale factor, computed at the last step).
    * It overwrites its files instead of versioning them (Lightning's default writes ``last-v1.ckpt`` beside
      an older ``last.ckpt``, which the next stage would then read); ``calid fit`` refuses to start a new run
      into a folder that holds checkpoints (:func:`.run_folder.check_new_run`), so nothing of another run is
      overwritten.
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
