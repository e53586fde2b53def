"""Writing files without ever leaving a partial one, and checking an output path before the expensive part.

:func:`atomic_path` yields a temporary path in the target's folder (same file system, same extension, so
writers that pick the format from the name still work); when the block ends normally the file is fsynced
and renamed over the target in one step (``os.replace``), so a reader sees either the old file or the
complete new one. On any exception, Ctrl-C or SIGTERM the temporary file is removed and the target is left
as it was. :func:`check_output_path` refuses an output that is the input (or a link to it), an existing file
without ``overwrite``, a directory, a folder that is missing or read-only, and a disk that is too full.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

PARTIAL_TAG = ".partial"
"""Marks temporary files (``.NAME-XXXX.partial.EXT``): hidden, and never a name a user would pick."""


class OutputPathError(ValueError):
    """An output path that must not be written: the message names the path and the problem."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


def file_extension(name: str) -> str:
    """``dense.nii.gz`` -> ``.nii.gz``, ``table.csv`` -> ``.csv`` (two suffixes when the last is ``.gz``)."""
    suffixes = Path(name).suffixes
    if len(suffixes) >= 2 and suffixes[-1] == ".gz":
        return "".join(suffixes[-2:])
    return suffixes[-1] if suffixes else ""


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Within the block SIGTERM raises ``SystemExit(143)`` (so ``finally`` clean-up runs, as for Ctrl-C).

    A no-op outside the main thread (signal handlers can only be set there) or when a handler other than
    the default one is already installed (e.g. Lightning's SLURM requeue handler).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous not in (signal.SIG_DFL, None):
        yield
        return
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM arriving within the block are handled when it ends, by the handlers then in place.

    Around the creation of a temporary file: a signal between the file's creation and the moment its name is
    known to the clean-up would leave it behind. Python runs signal handlers in the main thread, wherever the
    kernel delivered the signal, so the deferral swaps the handlers for one that only records (blocking the
    signal in the main thread alone, as ``pthread_sigmask`` does, lets another thread take it and the handler
    still runs inside the block). Outside the main thread no handler can interrupt the block: nothing to do.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []

    def record(signum: int, frame: FrameType | None) -> None:
        arrived.append(signum)

    # An ignored signal needs no deferral; a handler installed outside Python (None) could not be put back.
    previous = {
        signum: handler
        for signum in (signal.SIGINT, signal.SIGTERM)
        if (handler := signal.getsignal(signum)) not in (None, signal.SIG_IGN)
    }
    for signum in previous:
        signal.signal(signum, record)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(arrived):
            signal.raise_signal(signum)


def _fsync_dir(folder: Path) -> None:
    """Persist a rename (best effort: not every platform can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target`` atomically.

    The caller writes the whole file to the yielded path (any writer: ``nib.save``, ``savefig``, ...). An
    existing target keeps its permission bits; a new one gets the usual ``0o666 & ~umask``.
    """
    target = Path(target)
    folder = target.parent if str(target.parent) else Path(".")
    folder.mkdir(parents=True, exist_ok=True)
    temp: Path | None = None
    with sigterm_as_exit():
        try:
            with _signals_deferred():
                fd, name = tempfile.mkstemp(
                    prefix=f".{target.name}-", suffix=PARTIAL_TAG + file_extension(target.name), dir=folder
                )
                temp = Path(name)
                os.close(fd)
            yield temp
            with open(temp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.chmod(temp, target.stat().st_mode & 0o7777 if target.exists() else _default_mode())
            os.replace(temp, target)
        finally:
            if temp is not None:
                temp.unlink(missing_ok=True)
    _fsync_dir(folder)


def atomic_save(target: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(temporary_path)`` and move the finished file to ``target``; returns ``target``."""
    with atomic_path(target) as temp:
        write(temp)
    return Path(target)


def atomic_write_text(target: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """``Path.write_text`` that leaves the old file or the complete new one, never a partial file."""
    return atomic_save(target, lambda temp: temp.write_text(text, encoding=encoding))


def atomic_write_bytes(target: str | Path, data: bytes) -> Path:
    """``Path.write_bytes`` that leaves the old file or the complete new one, never a partial file."""
    return atomic_save(target, lambda temp: temp.write_bytes(data))


def same_file(a: str | Path, b: str | Path) -> bool:
    """True when both paths exist and are the same file (also through a hard link or symlink)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_output_path(
    path: str | Path,
    inputs: Sequence[str | Path] = (),
    overwrite: bool = False,
    needed_bytes: int = 0,
) -> Path:
    """Check that ``path`` may be written, before any expensive work; raises :class:`OutputPathError`.

    Refused: the path is (or links to) one of ``inputs``; it exists and ``overwrite`` is False; it is a
    directory; its folder (or the first existing folder above it, where the missing ones will be created)
    is a file or not writable; fewer than ``needed_bytes`` are free there. Nothing is created.
    """
    path = Path(path)
    for source in inputs:
        if same_file(path, source):
            raise OutputPathError(path, f"is the input file {source} (or a link to it); choose another name")
    if path.is_dir():
        raise OutputPathError(path, "is a directory; expected a file name")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise OutputPathError(path, "already exists; pass --overwrite to replace it")
    folder = path.absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the first existing ancestor: the missing folders are created there
    if not folder.is_dir():
        raise OutputPathError(path, f"{folder} is not a directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputPathError(path, f"its folder {folder} is not writable")
    if needed_bytes > 0:
        free = shutil.disk_usage(folder).free
        if free < needed_bytes:
            raise OutputPathError(
                path, f"needs about {needed_bytes / 2**20:.1f} MiB but only {free / 2**20:.1f} MiB are free"
            )
    return path
