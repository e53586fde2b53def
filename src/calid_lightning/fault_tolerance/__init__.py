"""Training that survives interruption and stops clearly when it diverges.

Lightning already provides the mechanics: ``ModelCheckpoint`` (periodic checkpoints with rotation and
``last.ckpt``), resume with ``calid fit ... --ckpt_path PATH|last`` (weights, EMA and scale-factor buffers,
optimizer, LR scheduler, loop counters, callback states) and SLURM auto-requeue (on SIGUSR1 it saves
``hpc_ckpt_N.ckpt`` in ``trainer.default_root_dir`` and calls ``scontrol requeue $SLURM_JOB_ID``). This
package adds what it lacks, one module per concern:

* :mod:`.guards`: :class:`FiniteLossGuard` stops a run whose loss or logged training metrics turn NaN/Inf.
* :mod:`.rng_state`: :class:`RNGStateCheckpoint` keeps the RNG states in every checkpoint (exact resume).
* :mod:`.resumable_loader`: :class:`ResumableDataLoader` resumes a training DataLoader mid-epoch.
* :mod:`.checkpointing`: :class:`StepModelCheckpoint` saves the final step too, atomically, without
  versioned ``last-v1.ckpt`` files.
* :mod:`.run_folder`: :func:`check_new_run` refuses a new run into a folder holding another run's
  checkpoints (:class:`RunFolderError`); :func:`run_root` is the root of an experiment config.
* :mod:`.resume`: :func:`resume_checkpoint` and ``python -m calid_lightning.fault_tolerance resume-path``
  pick the checkpoint a restarted job continues from.

Every state saved here is made of tensors and plain Python values, so checkpoints still load with
``torch.load(path, weights_only=True)`` (the default of ``torch.load``, hence of Lightning's resume).

The names stay importable from here: configs of earlier runs name ``calid_lightning.fault_tolerance.X`` as
``class_path``, experiments/*.yaml name the modules above.
"""

from calid_lightning.fault_tolerance.checkpointing import StepModelCheckpoint
from calid_lightning.fault_tolerance.guards import (
    FiniteLossGuard,
    NonFiniteLossError,
    last_saved_checkpoint,
    non_finite_message,
)
from calid_lightning.fault_tolerance.resumable_loader import ResumableDataLoader
from calid_lightning.fault_tolerance.resume import (
    HPC_CHECKPOINT_GLOB,
    LAST_CHECKPOINT_GLOB,
    main,
    resume_checkpoint,
)
from calid_lightning.fault_tolerance.rng_state import RNGStateCheckpoint, set_rng_states
from calid_lightning.fault_tolerance.run_folder import (
    CHECKPOINT_SUBDIR,
    RunFolderError,
    check_new_run,
    run_root,
)

__all__ = [
    "CHECKPOINT_SUBDIR",
    "HPC_CHECKPOINT_GLOB",
    "LAST_CHECKPOINT_GLOB",
    "FiniteLossGuard",
    "NonFiniteLossError",
    "RNGStateCheckpoint",
    "ResumableDataLoader",
    "RunFolderError",
    "StepModelCheckpoint",
    "check_new_run",
    "last_saved_checkpoint",
    "main",
    "non_finite_message",
    "resume_checkpoint",
    "run_root",
    "set_rng_states",
]
