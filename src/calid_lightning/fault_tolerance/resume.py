"""Where a restarted job continues: :func:`resume_checkpoint` picks the newest of the SLURM
``hpc_ckpt_*.ckpt`` and the ``last*.ckpt`` files below a run's root (Lightning itself prefers an HPC
checkpoint even when it is older than ``last.ckpt``); ``python -m calid_lightning.fault_tolerance
resume-path`` prints it for ``scripts/slurm/train.sbatch``.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path

from calid_lightning.experiment_config import ConfigError
from calid_lightning.fault_tolerance.run_folder import CHECKPOINT_SUBDIR, run_root

HPC_CHECKPOINT_GLOB = "hpc_ckpt_*.ckpt"
LAST_CHECKPOINT_GLOB = "last*.ckpt"


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
