"""``calid reproduce``: the whole results chain (data, models, evaluation, figures, table), cached, resumable.

    calid reproduce                                   # quick profile on the phantom -> results/
    calid reproduce --profile experiments/reproduce/paper.yaml --data data_modules/acdc.yaml
    calid reproduce --dry-run                         # the stages and their commands, what would be skipped
    calid reproduce --force calid_spatial             # retrain CaLID and redo what follows from it

A re-run skips finished stages (their commands, configs and upstream stages unchanged); an interrupted
training stage resumes from its last checkpoint. Logs, generated configs and checkpoints live in
``runs/table/<profile>/<data>/``; the table, the evaluation CSVs and the figures in ``--results``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from calid_lightning.io_safety import atomic_write_text
from calid_lightning.reproduce.profile import ProfileError, load_profile
from calid_lightning.reproduce.runner import StageRunner, stage_keys, topological_order
from calid_lightning.reproduce.stages import plan
from calid_lightning.reproduce.table import write_table

DEFAULT_PROFILE = "experiments/reproduce/quick.yaml"


def default_results(profile_name: str, data: str) -> Path:
    """``results/`` for the quick profile on the phantom, ``results/<profile>_<data>/`` otherwise."""
    stem = Path(data).stem
    return (
        Path("results")
        if (profile_name, stem) == ("quick", "phantom")
        else Path(f"results/{profile_name}_{stem}")
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="calid reproduce", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--profile", default=DEFAULT_PROFILE, help="reproduce profile YAML (experiments/reproduce/)"
    )
    parser.add_argument("--data", help="data config replacing the profile's (e.g. data_modules/acdc.yaml)")
    parser.add_argument("--results", type=Path, help="table, CSVs and figures (default: see above)")
    parser.add_argument("--runs", type=Path, default=Path("runs/table"), help="checkpoints, logs, stamps")
    parser.add_argument("--jobs", type=int, help="stages at once (default: the profile's)")
    parser.add_argument("--threads", type=int, help="threads per stage (default: the profile's)")
    parser.add_argument("--force", default="", help="comma-separated stages to run again")
    parser.add_argument("--heartbeat", type=float, default=60.0, help="seconds between progress lines")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the plan and what is cached; run nothing"
    )
    return parser


def table_notes(
    profile_name: str,
    data: str,
    evaluate: dict,
    timing: dict,
    threads: int | None,
) -> list[str]:
    """The lines under the table: what was run, where, and how long it took.

    ``timing`` is the run record of :func:`run_record`: this invocation's seconds, the stages it found cached
    and the wall time of the last invocation that ran every stage.
    """
    pixel = evaluate.get("pixel") or {}
    notes = [
        f"Profile `{profile_name}`, data `{data}`, split `{evaluate.get('split', 'test')}`, frames "
        f"`{evaluate.get('frames', 'ed_es')}`, {evaluate.get('steps') or 'default'} DDIM steps; "
        "held-out slices only; mean ± std over subjects, s/volume the median "
        "(one frame's 3D stack, VAE included).",
        "Segmentation: the quick segmenter on each method's slices against the true labels; abs EF err from "
        "the LV volumes of the dense stack (acquired slices + generated ones) at ED and ES.",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, threads per stage "
        f"{threads or 'torch default'}, python {platform.python_version()}.",
    ]
    if timing.get("full_run_seconds"):
        notes.append(f"Pipeline wall time with every stage run: {timing['full_run_seconds'] / 60:.1f} min.")
    if timing["cached"]:
        notes.append(
            f"This invocation: {timing['wall_seconds'] / 60:.1f} min, {len(timing['cached'])} stages cached."
        )
    if pixel:
        notes.insert(
            2,
            f"Pixel-space diffusion rows: factors {pixel.get('factors')}, "
            f"frames `{pixel.get('frames', 'ed_es')}`.",
        )
    cine = evaluate.get("cine") or {}
    if cine:
        steps = cine.get("steps") or evaluate.get("steps") or "default"
        notes.insert(
            2,
            f"2D+T rows: {cine.get('frames', 8)} frames over the cycle, {steps} DDIM steps for every method; "
            "the inflated model is the spatial checkpoint plus its fine-tuned temporal layers.",
        )
    return notes


def run_record(path: Path, profile: str, data: str, seconds: float, runner: StageRunner) -> dict:
    """This invocation's timing, keeping the wall time of the last one that ran every stage (``path``)."""
    previous = json.loads(path.read_text()) if path.is_file() else {}
    return {
        "profile": profile,
        "data": data,
        "wall_seconds": seconds,
        "cached": list(runner.cached),
        "full_run_seconds": previous.get("full_run_seconds") if runner.cached else seconds,
        "stages": runner.seconds,
    }


def main(argv: list[str] | None = None) -> int:
    """Run ``calid reproduce``; 0 when the table was written, 1 when a stage failed, 2 for bad arguments."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        profile = load_profile(args.profile, args.data)
    except ProfileError as exc:
        parser.error(str(exc))
    results = args.results or default_results(profile.name, profile.data)
    run_root = args.runs / profile.name / Path(profile.data).stem
    stages = plan(profile, run_root, results)
    force = [s.strip() for s in args.force.split(",") if s.strip()]
    names = {s.name for s in stages}
    if set(force) - names:
        parser.error(
            f"--force {sorted(set(force) - names)}: no such stage; stages: {', '.join(sorted(names))}"
        )
    runner = StageRunner(
        run_root,
        jobs=args.jobs or profile.jobs,
        threads=args.threads or profile.threads,
        heartbeat=args.heartbeat,
    )
    if args.dry_run:
        keys = stage_keys(stages)
        for stage in topological_order(stages):
            state = (
                "finished"
                if stage.name not in force and runner.is_finished(stage, keys[stage.name])
                else "to run"
            )
            print(f"{stage.name:22s} {state:9s} needs {','.join(stage.needs) or '-'}\n    {stage.display()}")
        return 0
    print(f"calid reproduce: profile {profile.name}, data {profile.data}, {len(stages)} stages -> {results}")
    start = time.perf_counter()
    finished = runner.run(stages, force=force)
    seconds = time.perf_counter() - start
    if not finished:
        print(
            f"calid reproduce: stopped after a failure ({seconds / 60:.1f} min); fix it and run again",
            file=sys.stderr,
        )
        return 1
    info_path = results / "run_info.json"
    info = run_record(info_path, str(profile.path), profile.data, seconds, runner)
    title = f"calid-lightning results ({profile.name} profile, {Path(profile.data).stem})"
    threads = args.threads or profile.threads
    notes = table_notes(profile.name, profile.data, profile.evaluate, info, threads)
    md_path, csv_path = write_table(results / "eval", results, title, notes)
    atomic_write_text(info_path, json.dumps(info, indent=1))
    print(md_path.read_text())
    print(f"wrote {md_path}, {csv_path} and {results / 'run_info.json'}")
    return 0
