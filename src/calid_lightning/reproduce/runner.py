"""Run pipeline stages as processes: cached, resumable, up to ``jobs`` at once, with progress lines.

A stage counts as finished when its stamp (``<state>/stamps/<stage>.json``) holds the stage's current key and
its outputs exist; the key hashes its command, the contents of its input configs and the keys of the stages it
needs, so editing a config re-runs that stage and everything after it. A training stage that was interrupted
(started with the same key, ``last.ckpt`` present) resumes from its last checkpoint; one whose key changed
starts again after removing what ``calid fit`` wrote in its folder (other files stay). Each stage writes its
output to ``<state>/logs/<stage>.log``.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO

from calid_lightning.reproduce.stages import Stage, clear_run_folder, last_checkpoint


def topological_order(stages: Sequence[Stage]) -> list[Stage]:
    """``stages`` ordered so that every stage follows those it needs (stable otherwise).

    Raises ``ValueError`` for a duplicate name, a need that is not a stage, or a cycle.
    """
    by_name: dict[str, Stage] = {}
    for stage in stages:
        if stage.name in by_name:
            raise ValueError(f"two stages are named {stage.name!r}")
        by_name[stage.name] = stage
    for stage in stages:
        unknown = [n for n in stage.needs if n not in by_name]
        if unknown:
            raise ValueError(f"stage {stage.name!r} needs {unknown}, which are not stages")
    ordered: list[Stage] = []
    placed: set[str] = set()
    while len(ordered) < len(stages):
        ready = [s for s in stages if s.name not in placed and all(n in placed for n in s.needs)]
        if not ready:
            left = sorted(s.name for s in stages if s.name not in placed)
            raise ValueError(f"the stages {left} need each other in a cycle")
        ordered += ready
        placed |= {s.name for s in ready}
    return ordered


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"


def stage_keys(stages: Sequence[Stage]) -> dict[str, str]:
    """Each stage's cache key: its command, its inputs' contents and the keys of the stages it needs."""
    keys: dict[str, str] = {}
    for stage in topological_order(stages):
        content = {
            "module": stage.module,
            "argv": list(stage.argv),
            "inputs": {str(p): _file_digest(p) for p in stage.inputs},
            "needs": [keys[n] for n in stage.needs],
        }
        keys[stage.name] = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]
    return keys


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"


def training_step(run_dir: Path) -> int | None:
    """The last step a training stage logged (its CSV logger's ``metrics.csv``), or None."""
    files = sorted(run_dir.glob("csv/version_*/metrics.csv"), key=lambda p: p.stat().st_mtime)
    if not files:
        return None
    last = None
    with files[-1].open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row.get("step"):
                last = row["step"]
    return int(float(last)) + 1 if last is not None else None


@dataclasses.dataclass
class _Running:
    stage: Stage
    process: subprocess.Popen
    log: IO[str]
    started: float


class StageRunner:
    """Runs stages with caching under ``state_dir``; ``jobs`` at once; ``threads`` per process when set."""

    def __init__(
        self,
        state_dir: Path,
        jobs: int = 1,
        threads: int | None = None,
        heartbeat: float = 60.0,
        echo: Callable[[str], None] = print,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.jobs, self.threads, self.heartbeat, self.echo = max(1, jobs), threads, heartbeat, echo
        self.seconds: dict[str, float] = {}
        self.cached: list[str] = []

    def _stamp(self, name: str, kind: str = "json") -> Path:
        return self.state_dir / "stamps" / f"{name}.{kind}"

    def log_path(self, name: str) -> Path:
        """Where stage ``name`` writes its output."""
        return self.state_dir / "logs" / f"{name}.log"

    def is_finished(self, stage: Stage, key: str) -> bool:
        """The stage finished with this key before and its outputs are all there."""
        stamp = self._stamp(stage.name)
        if not stamp.is_file() or not all(p.is_file() for p in stage.outputs):
            return False
        record = json.loads(stamp.read_text())
        if record.get("key") == key:
            self.seconds[stage.name] = float(record.get("seconds", 0.0))
            return True
        return False

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if self.threads:
            env |= {"OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}
        return env

    def _start(self, stage: Stage, key: str) -> _Running:
        argv = list(stage.argv)
        started = self._stamp(stage.name, "started")
        if stage.run_dir is not None:
            resumable = started.is_file() and started.read_text().strip() == key
            checkpoint = last_checkpoint(stage.run_dir)
            if resumable and checkpoint.is_file():
                argv += ["--ckpt_path", str(checkpoint)]
                self.echo(f"  {stage.name}: resuming from {checkpoint}")
            elif stage.run_dir.exists():
                kept = clear_run_folder(stage.run_dir)
                if kept:
                    self.echo(f"  {stage.name}: kept {len(kept)} file(s) not from calid in {stage.run_dir}")
        for path in (started, self.log_path(stage.name)):
            path.parent.mkdir(parents=True, exist_ok=True)
        started.write_text(key)
        self._stamp(stage.name).unlink(missing_ok=True)
        log = self.log_path(stage.name).open("a")
        command = dataclasses.replace(stage, argv=tuple(argv))
        log.write(f"\n$ {command.display()}\n")
        log.flush()
        process = subprocess.Popen(
            command.command(), stdout=log, stderr=subprocess.STDOUT, env=self._environment()
        )
        self.echo(f"start {stage.name}: {command.display()}")
        return _Running(stage, process, log, time.perf_counter())

    def _progress(self, running: Iterable[_Running]) -> str:
        parts = []
        for item in running:
            text = f"{item.stage.name} {_clock(time.perf_counter() - item.started)}"
            if item.stage.run_dir is not None:
                step = training_step(item.stage.run_dir)
                if step is not None:
                    text += f" (step ~{step}" + (
                        f"/{item.stage.total_steps})" if item.stage.total_steps else ")"
                    )
            parts.append(text)
        return ", ".join(parts)

    def run(self, stages: Sequence[Stage], force: Iterable[str] = ()) -> bool:
        """Run every stage not yet finished, in dependency order; True when all finished.

        Of the stages whose needs are met, the one listed first in ``stages`` starts first, so a plan puts
        the stages of its longest chain first (with 2 jobs, the slow 2D+T evaluation must not wait behind
        short ones).

        ``force`` names stages to run again even when finished (those after them run again too). After a
        failure no new stage starts, the running ones finish, and the failed stage's log tail is printed.
        """
        ordered, keys, force = topological_order(stages), stage_keys(stages), set(force)
        unknown = force - {s.name for s in ordered}
        if unknown:
            raise ValueError(f"--force {sorted(unknown)}: no such stage; stages: {[s.name for s in ordered]}")
        pending: list[Stage] = []
        for stage in ordered:
            rerun = stage.name in force or any(p.name in stage.needs for p in pending)
            finished = self.is_finished(stage, keys[stage.name])
            if finished and not rerun:
                self.echo(f"skip  {stage.name}: finished before ({_clock(self.seconds[stage.name])})")
                self.cached.append(stage.name)
                continue
            if finished:  # forced, or its input changed: train afresh, never resume the finished run
                self._stamp(stage.name, "started").unlink(missing_ok=True)
            pending.append(stage)
        plan_order = {stage.name: i for i, stage in enumerate(stages)}
        pending.sort(key=lambda stage: plan_order[stage.name])  # of the ready stages, the first listed starts
        done = {s.name for s in ordered} - {s.name for s in pending}
        running: list[_Running] = []
        failed: list[str] = []
        start = time.perf_counter()
        try:
            self._loop(pending, running, done, failed, keys, start)
        finally:
            for item in running:  # interrupted (Ctrl-C): stop the children too; they resume next time
                item.process.terminate()
                item.process.wait()
                item.log.close()
        return not failed

    def _loop(
        self,
        pending: list[Stage],
        running: list[_Running],
        done: set[str],
        failed: list[str],
        keys: dict[str, str],
        start: float,
    ) -> None:
        last_beat = start
        while pending or running:
            while not failed and len(running) < self.jobs:
                ready = next((s for s in pending if all(n in done for n in s.needs)), None)
                if ready is None:
                    break
                pending.remove(ready)
                running.append(self._start(ready, keys[ready.name]))
            if not running:
                break
            time.sleep(0.5)
            for item in [r for r in running if r.process.poll() is not None]:
                running.remove(item)
                item.log.close()
                seconds = time.perf_counter() - item.started
                missing = [str(p) for p in item.stage.outputs if not p.is_file()]
                if item.process.returncode == 0 and not missing:
                    record = {
                        "key": keys[item.stage.name],
                        "seconds": seconds,
                        "command": item.stage.display(),
                    }
                    self._stamp(item.stage.name).write_text(json.dumps(record, indent=1))
                    self.seconds[item.stage.name] = seconds
                    done.add(item.stage.name)
                    self.echo(
                        f"done  {item.stage.name} in {_clock(seconds)} "
                        f"[{_clock(time.perf_counter() - start)} since start]"
                    )
                else:
                    failed.append(item.stage.name)
                    why = f"exit {item.process.returncode}" + (f", missing {missing}" if missing else "")
                    self.echo(f"FAIL  {item.stage.name} ({why}); log: {self.log_path(item.stage.name)}")
                    tail = self.log_path(item.stage.name).read_text().splitlines()[-15:]
                    self.echo("\n".join(f"    {line}" for line in tail))
            if running and time.perf_counter() - last_beat >= self.heartbeat:
                last_beat = time.perf_counter()
                self.echo(f"  [{_clock(last_beat - start)}] running: {self._progress(running)}")
