"""Multi-process training: evaluation that sees every example once, and the effective global batch.

Lightning gives validation and test loaders a ``DistributedSampler``, which pads the last round by repeating
examples so every rank gets as many; torchmetrics and ``self.log(..., sync_dist=True)`` then count those
examples twice. :func:`eval_sampler` splits the examples over the ranks without repeating any (a rank may
get one batch fewer, which is safe in evaluation: nothing synchronises per batch after the first). Lightning
keeps a sampler that is already a ``DistributedSampler``, so a DataModule that passes it needs no change
to ``use_distributed_sampler``.

The learning rate is never scaled with the number of processes: :func:`effective_batch` reports the global
batch ``batch size x devices x nodes x gradient accumulation`` so a run's log says what each step averaged.
Mixed precision: see :mod:`calid_lightning.models.attention`.
"""

from __future__ import annotations

from collections.abc import Sized
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader


def eval_sampler(
    dataset: Sized, trainer: Trainer | None, split: str = "val"
) -> UnrepeatedDistributedSampler | None:
    """A sampler giving each rank of ``trainer`` a disjoint share of ``dataset`` (None on one process).

    Rank ``r`` of ``w`` gets indices ``r, r + w, r + 2w, ...`` in order: together the ranks see every index
    exactly once. Raises ``ValueError`` when ``split`` has fewer examples than ranks (an idle rank would
    leave the others waiting).
    """
    world_size = 1 if trainer is None else int(trainer.world_size)
    if world_size <= 1:
        return None
    if len(dataset) < world_size:
        raise ValueError(
            f"the {split} split has {len(dataset)} examples but training runs on {world_size} processes; "
            "every process needs at least one: raise data.max_eval_examples, give the split more subjects "
            "(data.split) or run evaluation with --trainer.devices 1 --trainer.num_nodes 1"
        )
    return UnrepeatedDistributedSampler(
        dataset, num_replicas=world_size, rank=int(trainer.global_rank), shuffle=False
    )


def global_batch_size(batch_size: int, devices: int, num_nodes: int, accumulate_grad_batches: int) -> int:
    """Examples averaged into one optimizer step: per-device batch x devices x nodes x accumulation."""
    return batch_size * devices * num_nodes * accumulate_grad_batches


def train_batch_size(trainer: Trainer) -> int | None:
    """The per-device training batch size: the train DataLoader's, else the DataModule's ``batch_size``."""
    loader = trainer.train_dataloader
    if isinstance(loader, DataLoader) and loader.batch_size is not None:
        return int(loader.batch_size)
    size = getattr(trainer.datamodule, "batch_size", None)
    return int(size) if isinstance(size, int) else None


def effective_batch(trainer: Trainer) -> dict[str, Any] | None:
    """The run's batch bookkeeping as flat hyperparameters (None when the per-device batch is unknown).

    Keys: ``batch_size_per_device``, ``devices``, ``num_nodes``, ``world_size``, ``accumulate_grad_batches``,
    ``effective_global_batch_size`` and ``lr_scaled`` (always False: the configured learning rate is used).
    """
    batch_size = train_batch_size(trainer)
    if batch_size is None:
        return None
    devices, nodes, accumulate = trainer.num_devices, trainer.num_nodes, trainer.accumulate_grad_batches
    return {
        "batch_size_per_device": batch_size,
        "devices": devices,
        "num_nodes": nodes,
        "world_size": trainer.world_size,
        "accumulate_grad_batches": accumulate,
        "effective_global_batch_size": global_batch_size(batch_size, devices, nodes, accumulate),
        "lr_scaled": False,
    }


def describe_effective_batch(hparams: dict[str, Any]) -> str:
    """One line for the console: the global batch, how it is made up, and that the lr is not scaled."""
    return (
        f"Effective global batch size {hparams['effective_global_batch_size']} = batch "
        f"{hparams['batch_size_per_device']} x {hparams['devices']} devices x {hparams['num_nodes']} nodes x "
        f"{hparams['accumulate_grad_batches']} accumulated; the learning rate is used as configured "
        "(not scaled with the global batch)."
    )
