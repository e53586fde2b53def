"""One run per folder: :func:`check_new_run` (called by ``calid fit``) refuses to start a new run into a
checkpoint folder that already holds checkpoints (:class:`RunFolderError`); :func:`run_root` is the folder
every output of an experiment config derives from, its ``trainer.default_root_dir``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from calid_lightning.experiment_config import merge_configs, resolved


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
