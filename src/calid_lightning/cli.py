"""The ``calid`` command: LightningCLI subcommands plus the framework's own tools.

``calid fit|validate|test|predict -c experiments/X.yaml -c data_modules/Y.yaml [--overrides]`` go to
LightningCLI with each config's ``defaults`` composed first (:mod:`calid_lightning.experiment_config`) and
OmegaConf interpolation resolved on the merged config (every file and override), so the configs'
``${trainer.default_root_dir}`` paths follow ``--trainer.default_root_dir DIR`` and their names follow the
``run`` group (``--run.profile``). The other subcommands are small argparse programs that live next to what
they drive; each exposes ``main(argv) -> int``.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

TOOLS: dict[str, str] = {
    "phantom": "calid_lightning.data.phantom.cli",
    "upsample": "calid_lightning.inference.upsample_cli",
    "evaluate": "calid_lightning.evaluation.evaluate_cli",
    "figures": "calid_lightning.evaluation.figures",
    "evaluate-cine": "calid_lightning.evaluation.cine_eval",
    "sweep": "calid_lightning.sweep",
    "reproduce": "calid_lightning.reproduce.cli",
}


DEFAULT_DATAMODULE = "calid_lightning.data.datamodule.CardiacDataModule"


def add_calid_arguments(parser: Any) -> None:
    """What ``calid`` adds to each LightningCLI subcommand parser: the default DataModule class and the
    ``run`` group the configs interpolate (:class:`~calid_lightning.experiment_config.RunConfig`)."""
    from calid_lightning.experiment_config import RunConfig

    parser.set_defaults({"data": {"class_path": DEFAULT_DATAMODULE}})
    parser.add_class_arguments(RunConfig, "run")


def calid_cli(args: list[str] | None, **kwargs: Any) -> Any:
    """Build calid's LightningCLI on ``args`` (None: ``sys.argv``); ``kwargs`` go to LightningCLI
    (``run=False`` only parses and instantiates: tests and tools read ``.model`` / ``.datamodule``).

    Every ``-c`` file with a ``defaults`` list is composed first
    (:func:`~calid_lightning.experiment_config.expand_config_args`), the parser gets
    :func:`add_calid_arguments`, and ``${...}`` is resolved once, on the merged config (``parser_mode``
    ``omegaconf+``). ``fit`` refuses to start a new run into a checkpoint folder that holds checkpoints
    (:func:`~calid_lightning.fault_tolerance.run_folder.check_new_run`).
    """
    from jsonargparse import set_parsing_settings
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI

    from calid_lightning.experiment_config import expand_config_args

    # "omegaconf+" resolves ${...} once, after all -c files and overrides are merged ("omegaconf" resolves
    # each file alone, so a later --trainer.default_root_dir would not move the paths); a config's absolute
    # ${trainer.default_root_dir} is made relative to where it stands, as under the fit/validate subcommand.
    set_parsing_settings(omegaconf_absolute_to_relative_paths=True)

    class CalidCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            add_calid_arguments(parser)

        def parse_arguments(self, parser, args) -> None:
            """Parse ``args`` (None: ``sys.argv``) with every ``-c`` file's ``defaults`` composed first."""
            self.config = parser.parse_args(expand_config_args(sys.argv[1:] if args is None else args))

        def before_fit(self) -> None:
            """A new run never starts into another run's checkpoint folder (resume with --ckpt_path last)."""
            from calid_lightning.fault_tolerance.run_folder import check_new_run

            check_new_run(self.trainer, self.config[self.subcommand].get("ckpt_path"))

    options = {
        "subclass_mode_model": True,
        "subclass_mode_data": True,
        "parser_kwargs": {"parser_mode": "omegaconf+"},
        "save_config_callback": None,
    }
    return CalidCLI(LightningModule, LightningDataModule, **(options | kwargs), args=args)


def run_lightning_cli(args: list[str] | None) -> None:
    """Run calid's LightningCLI (:func:`calid_cli`) with the module and DataModule that the configs name by
    ``class_path``; ``args=None`` reads ``sys.argv`` (the console script), a list runs in-process.

    The DataModule class defaults to :data:`DEFAULT_DATAMODULE`, so an experiment config may set
    ``data.init_args`` (task, crop size) before or after the data-source config without naming the class.
    W&B runs offline when no credentials are present (:func:`~calid_lightning.tracking.ensure_wandb_mode`),
    and the resolved config goes to every logger (:class:`~calid_lightning.tracking.LoggedConfigCallback`).
    """
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from calid_lightning.tracking import LoggedConfigCallback, ensure_wandb_mode

    ensure_wandb_mode(announce=rank_zero_only.rank == 0)
    calid_cli(args, save_config_callback=LoggedConfigCallback, save_config_kwargs={"overwrite": True})


DEBUG_ENV = "CALID_DEBUG"
"""Set to 1 to see the full traceback of a data error instead of its one-block message."""
_WORKER_DATA_ERROR = "Caught DataError in DataLoader worker"


def data_error_message(exc: BaseException) -> str | None:
    """The user-facing text of a data or run-folder error (also one from a DataLoader worker), else None."""
    from calid_lightning.data.subject import DataError
    from calid_lightning.fault_tolerance.run_folder import RunFolderError

    if isinstance(exc, (DataError, RunFolderError)):
        return str(exc)
    if isinstance(exc, RuntimeError) and str(exc).startswith(_WORKER_DATA_ERROR):
        last = str(exc).strip().splitlines()[-1]
        return last.split("DataError: ", 1)[-1]
    return None


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``calid <command> ...``; a data error is one block on stderr and exit status 1.

    ``CALID_DEBUG=1`` keeps the traceback.
    """
    try:
        return _dispatch(argv)
    except (ValueError, RuntimeError) as exc:
        message = data_error_message(exc)
        if message is None or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        print(f"calid: error: {message}\n(set {DEBUG_ENV}=1 for the traceback)", file=sys.stderr)
        return 1


def _dispatch(argv: list[str] | None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in TOOLS:
        module = importlib.import_module(TOOLS[args[0]])
        return int(module.main(args[1:]) or 0)
    if not args or args[0] in ("-h", "--help"):
        print("usage: calid {fit,validate,test,predict," + ",".join(TOOLS) + "} ...")
        print("  fit/validate/test/predict: LightningCLI (`calid fit --help`)")
        for name, module in TOOLS.items():
            print(f"  {name}: see `calid {name} --help` ({module})")
        return 0
    run_lightning_cli(None if argv is None else args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
