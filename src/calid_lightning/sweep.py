"""``calid sweep FILE``: a W&B hyperparameter sweep, online with credentials and offline without.

The sweep YAML is W&B's own format (``method``, ``metric``, ``parameters``, ``command`` with ``${env}``,
``${interpreter}``, ``${program}``, ``${args}`` macros). Each trial runs the expanded ``command`` (a
``calid fit``) as a subprocess in its own folder ``<out>/<sweep name>/<trial>/``: its loggers (W&B + CSV) and
its checkpoints go there, so trials never overwrite the stage's main run.

* Online (credentials, see :mod:`calid_lightning.tracking`): ``wandb.sweep`` creates the sweep (or
  ``--sweep-id`` joins one) and ``wandb.agent`` hands out trials; the trial's ``calid fit`` joins the W&B run
  the agent created (``WANDB_RUN_ID`` / ``WANDB_SWEEP_ID`` are inherited).
* Offline: W&B's search engine, the ``sweeps`` package (``sweeps.next_run`` for grid / random / bayes),
  proposes each trial from the finished ones; the trial's metric is read from its CSV log.

Either way one row per trial goes to ``<out>/<sweep name>/trials.csv`` (trial, parameters..., metric, status,
folder); offline runs rewrite it, online agents (possibly many, e.g. a SLURM array) append to it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from calid_lightning.tracking import (
    PROJECT,
    ensure_wandb_mode,
    find_metrics_csv,
    read_metric_history,
)

DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]


class SweepConfigError(ValueError):
    """A sweep YAML that W&B's schema rejects."""


@dataclass
class TrialResult:
    """What one trial left behind: its status, its metric's logged values and its folder."""

    name: str
    params: dict[str, Any]
    status: str
    history: list[float] = field(default_factory=list)
    folder: Path | None = None

    @property
    def metric(self) -> float | None:
        """The last logged value (what W&B shows as the run's summary)."""
        return self.history[-1] if self.history else None


def load_sweep_config(path: str | Path) -> dict[str, Any]:
    """Read a sweep YAML and check it against W&B's sweep schema (``sweeps.schema_violations_...``)."""
    from sweeps import schema_violations_from_proposed_config

    path = Path(path)
    if not path.is_file():
        raise SweepConfigError(f"{path}: no such sweep file (see experiments/sweeps/)")
    config = yaml.safe_load(path.read_text())
    if not isinstance(config, dict):
        raise SweepConfigError(f"{path}: expected a mapping with method, metric, parameters, command")
    problems = schema_violations_from_proposed_config(config)
    if problems:
        raise SweepConfigError(f"{path}: not a valid W&B sweep config:\n  " + "\n  ".join(problems))
    if "metric" not in config or "name" not in config["metric"]:
        raise SweepConfigError(f"{path}: field 'metric.name' is required (e.g. val/psnr, a logged metric)")
    return config


def sweep_name(config: dict[str, Any], path: str | Path) -> str:
    """The sweep's ``name`` field, else the file's stem (``experiments/sweeps/vae.yaml`` -> ``vae``)."""
    return str(config.get("name") or Path(path).stem)


def expand_command(config: dict[str, Any], params: dict[str, Any], extra: Sequence[str] = ()) -> list[str]:
    """The trial's command: the sweep ``command``, W&B's macros filled in as its agent does, then ``extra``.

    ``${interpreter}`` is this Python (the agent uses ``python`` from ``PATH``); ``${envvar:NAME}`` reads the
    environment; a parameter ``model.init_args.lr`` becomes ``--model.init_args.lr=<value>`` in ``${args}``.
    """
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

    sweep_vars = create_sweep_command_args({"args": {key: {"value": value} for key, value in params.items()}})
    sweep_vars["interpreter"] = [sys.executable]
    sweep_vars["program"] = [str(config["program"])] if "program" in config else []
    sweep_vars["env"] = ["/usr/bin/env"] if Path("/usr/bin/env").exists() else []
    sweep_vars["args_json_file"] = []
    command: list[str] = []
    for chunk in create_sweep_command([str(c) for c in config.get("command") or DEFAULT_COMMAND]):
        if chunk.startswith("${") and chunk.endswith("}"):
            key = chunk[2:-1]
            if key not in sweep_vars:
                raise SweepConfigError(
                    f"sweep command: unknown macro {chunk} (W&B knows {sorted(sweep_vars)})"
                )
            command += [str(part) for part in sweep_vars[key]]
        else:
            command.append(chunk)
    return command + list(extra)


def trial_overrides(folder: Path, trial: str, group: str, project: str) -> list[str]:
    """``calid fit`` overrides that keep a trial's logs (W&B + CSV) and checkpoints inside ``folder``.

    ``folder`` becomes the run's root (``trainer.default_root_dir``), from which the checkpoint paths of
    experiments/*.yaml derive; the loggers are replaced to name the trial's W&B run.
    """
    loggers = [
        {
            "class_path": "lightning.pytorch.loggers.WandbLogger",
            "init_args": {
                "project": project,
                "name": trial,
                "group": group,
                "job_type": "sweep",
                "save_dir": str(folder),
            },
        },
        {
            "class_path": "lightning.pytorch.loggers.CSVLogger",
            "init_args": {"save_dir": str(folder), "name": "csv"},
        },
    ]
    return [f"--trainer.default_root_dir={folder}", f"--trainer.logger={json.dumps(loggers)}"]


def run_trial(
    command: Sequence[str], folder: Path, metric: str, name: str, params: dict[str, Any]
) -> TrialResult:
    """Run one trial's command (output to ``folder/output.log``) and read its metric from its CSV log."""
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / "output.log"
    with open(log_path, "w") as log:
        log.write(" ".join(command) + "\n")
        log.flush()
        code = subprocess.run(list(command), stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    metrics_csv = find_metrics_csv(folder)
    history = read_metric_history(metrics_csv, metric) if metrics_csv else []
    if code != 0:
        status = "failed"
        tail = log_path.read_text().splitlines()[-15:]
        print(f"{name}: exit code {code}; last lines of {log_path}:\n  " + "\n  ".join(tail), file=sys.stderr)
    elif not history:
        status = "no_metric"
        print(
            f"{name}: finished but logged no '{metric}' (sweep metric.name) in {metrics_csv}", file=sys.stderr
        )
    else:
        status = "finished"
    return TrialResult(name, params, status, history, folder)


def _trial_row(result: TrialResult, param_names: Sequence[str]) -> list[Any]:
    metric = "" if result.metric is None else f"{result.metric:.6g}"
    values = [result.params.get(name, "") for name in param_names]
    return [result.name, *values, metric, result.status, result.folder or ""]


def write_trials(path: Path, results: Sequence[TrialResult], param_names: Sequence[str]) -> None:
    """One row per trial: trial, the swept parameters, metric (last logged value), status, folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["trial", *param_names, "metric", "status", "folder"])
        writer.writerows(_trial_row(result, param_names) for result in results)


def append_trial(path: Path, result: TrialResult, param_names: Sequence[str]) -> None:
    """Add one trial's row (the header first in a new file): agents of one sweep may share the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with open(path, "a", newline="") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(["trial", *param_names, "metric", "status", "folder"])
        writer.writerow(_trial_row(result, param_names))


def _sweep_run(result: TrialResult, metric: str, config: dict[str, Any]) -> Any:
    """A finished trial as the ``sweeps`` engine's record (its config, metric history and state)."""
    from sweeps import RunState, SweepRun

    state = RunState.finished if result.status == "finished" else RunState.failed
    return SweepRun(
        name=result.name,
        state=state,
        config=config,
        history=[{metric: value} for value in result.history],
        summary_metrics={metric: result.metric} if result.metric is not None else {},
    )


def first_free_trial(sweep_dir: Path) -> int:
    """The first offline trial number after the ``trial-NNN`` folders already in ``sweep_dir``.

    A re-run of a sweep then writes new folders: ``calid fit`` refuses a folder holding checkpoints.
    """
    numbers = [int(p.name[6:]) for p in sweep_dir.glob("trial-*") if p.name[6:].isdigit()]
    return max(numbers, default=-1) + 1


def run_offline(
    config: dict[str, Any],
    name: str,
    count: int | None,
    out_dir: Path,
    extra: Sequence[str] = (),
    project: str = PROJECT,
) -> list[TrialResult]:
    """Run the sweep here: ``sweeps.next_run`` proposes, each trial runs as a subprocess; returns trials."""
    from sweeps import next_run

    if count is None and config["method"] != "grid":
        raise SweepConfigError(f"method '{config['method']}' never runs out of trials: give --count N")
    metric = config["metric"]["name"]
    param_names = list(config["parameters"])
    runs: list[Any] = []
    results: list[TrialResult] = []
    first = first_free_trial(out_dir / name)
    while count is None or len(results) < count:
        suggestion = next_run(config, runs, validate=True)
        if suggestion is None:  # a grid with every point done
            break
        params = {key: value["value"] for key, value in suggestion.config.items()}
        trial = f"trial-{first + len(results):03d}"
        folder = out_dir / name / trial
        command = expand_command(config, params, [*trial_overrides(folder, trial, name, project), *extra])
        print(f"{trial}: {params}")
        result = run_trial(command, folder, metric, trial, params)
        print(f"{trial}: {result.status}, {metric} = {result.metric}")
        results.append(result)
        runs.append(_sweep_run(result, metric, suggestion.config))
        write_trials(out_dir / name / "trials.csv", results, param_names)
    return results


def run_online(
    config: dict[str, Any],
    name: str,
    count: int | None,
    out_dir: Path,
    extra: Sequence[str] = (),
    project: str = PROJECT,
    sweep_id: str | None = None,
    entity: str | None = None,
) -> list[TrialResult]:
    """Create (or join, with ``sweep_id``) a W&B sweep and run an agent for ``count`` trials."""
    import wandb

    metric = config["metric"]["name"]
    param_names = list(config["parameters"])
    results: list[TrialResult] = []
    if sweep_id is None:
        sweep_id = wandb.sweep(config, project=project, entity=entity)
    print(f"W&B sweep {sweep_id}: more agents with `calid sweep FILE --sweep-id {sweep_id}`")

    def trial() -> None:
        """One agent job: the agent wrote the trial's parameters to WANDB_SWEEP_PARAM_PATH."""
        loaded = yaml.safe_load(Path(os.environ["WANDB_SWEEP_PARAM_PATH"]).read_text()) or {}
        params = {key: value["value"] for key, value in loaded.items() if isinstance(value, dict)}
        run_id = os.environ["WANDB_RUN_ID"]
        folder = out_dir / name / run_id
        command = expand_command(config, params, [*trial_overrides(folder, run_id, name, project), *extra])
        results.append(run_trial(command, folder, metric, run_id, params))
        append_trial(out_dir / name / "trials.csv", results[-1], param_names)
        if results[-1].status == "failed":
            raise RuntimeError(f"trial {run_id} failed: see {folder / 'output.log'}")

    wandb.agent(sweep_id, function=trial, project=project, entity=entity, count=count)
    return results


def build_parser() -> argparse.ArgumentParser:
    """The ``calid sweep`` arguments."""
    parser = argparse.ArgumentParser(
        prog="calid sweep",
        description="Run a W&B sweep (experiments/sweeps/*.yaml): online with W&B credentials, else offline "
        "with W&B's `sweeps` search engine. One row per trial in OUT/<name>/trials.csv.",
    )
    parser.add_argument("file", type=Path, help="sweep YAML (W&B format)")
    parser.add_argument("--count", type=int, default=None, help="trials to run (default: a grid's size)")
    parser.add_argument("--project", default=None, help=f"W&B project (default: the file's, else {PROJECT})")
    parser.add_argument("--entity", default=None, help="W&B entity (online only)")
    parser.add_argument("--sweep-id", default=None, help="join this existing W&B sweep (online only)")
    parser.add_argument("--out", type=Path, default=Path("runs/sweeps"), help="trial folders and trials.csv")
    parser.add_argument("--offline", action="store_true", help="run offline even with credentials")
    parser.add_argument(
        "--extra",
        nargs=argparse.REMAINDER,
        default=[],
        help="everything after --extra is appended to every trial's command (e.g. --trainer.max_steps 2)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``calid sweep FILE [--count N] [--project P] [--sweep-id ID] [--offline] [--extra OVERRIDES...]``."""
    args = build_parser().parse_args(argv)
    try:
        config = load_sweep_config(args.file)
    except SweepConfigError as error:
        print(error, file=sys.stderr)
        return 2
    if args.offline:
        os.environ["WANDB_MODE"] = "offline"
    mode = ensure_wandb_mode()
    name = sweep_name(config, args.file)
    project = args.project or config.get("project") or PROJECT
    if mode == "online":
        results = run_online(
            config, name, args.count, args.out, args.extra, project, args.sweep_id, args.entity
        )
    elif args.sweep_id:
        print(
            f"--sweep-id needs W&B credentials (WANDB_API_KEY or `wandb login`); WANDB_MODE={mode}",
            file=sys.stderr,
        )
        return 2
    else:
        try:
            results = run_offline(config, name, args.count, args.out, args.extra, project)
        except SweepConfigError as error:
            print(error, file=sys.stderr)
            return 2
        print(f"{len(results)} trials: {args.out / name / 'trials.csv'}")
    return 0 if any(result.status == "finished" for result in results) else 1
