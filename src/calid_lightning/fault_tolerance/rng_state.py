"""Exact resume: :class:`RNGStateCheckpoint` keeps the global torch / CUDA / numpy / Python RNG states in
every checkpoint and restores them on resume. The training data and the VAE's posterior samples are drawn
from the global torch RNG, so without it a resumed run sees other examples than the uninterrupted one.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer


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
    DataLoader is resumable (:class:`.resumable_loader.ResumableDataLoader`).

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
