"""`calid upsample` never loses a user's file and refuses bad input before the model runs (issue 10).

Each case asserts the message names the option or file, that no user file changed (hash before and after)
and that no partial file is left beside the output.
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from calid_lightning.cli import main as calid
from calid_lightning.inference.nifti_io import std_path
from calid_lightning.io_safety import PARTIAL_TAG, atomic_write_text
from checkpoints import TINY_UNET, save_checkpoint, tiny_vae_checkpoint

DZ = 10.0


def write_stack(path: Path, shape: tuple[int, ...] = (12, 10, 3), affine: np.ndarray | None = None) -> Path:
    """A random float32 stack with 1.5 x 1.5 x 10 mm voxels (or ``affine`` as the sform only)."""
    data = np.random.default_rng(0).random(shape).astype(np.float32) * 100 + 1
    img = nib.Nifti1Image(data, np.diag([1.5, 1.5, DZ, 1.0]))
    if affine is not None:
        img.set_qform(None, code=0)
        img.set_sform(affine, code=1)
    nib.save(img, str(path))
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def partials(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if PARTIAL_TAG in p.name)


def upsample(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """Exit status and stderr of an in-process ``calid upsample`` (argparse errors are exit 2)."""
    try:
        code = calid(["upsample", *args])
    except SystemExit as exc:
        code = int(exc.code)
    return code, capsys.readouterr().err


def linear(src: Path, out: Path, *extra: str) -> list[str]:
    return ["--method", "linear", "--input", str(src), "--output", str(out), "--quiet", *extra]


@pytest.fixture
def stack(tmp_path: Path) -> Path:
    return write_stack(tmp_path / "sparse.nii.gz")


@pytest.mark.parametrize("link", ["same", "hard", "sym"])
def test_output_that_is_the_input_is_refused(tmp_path: Path, stack: Path, link: str, capsys) -> None:
    before = digest(stack)
    out = {"same": stack, "hard": tmp_path / "hard.nii.gz", "sym": tmp_path / "sym.nii.gz"}[link]
    if link == "hard":
        os.link(stack, out)
    elif link == "sym":
        out.symlink_to(stack)
    code, err = upsample([*linear(stack, out, "--factor", "2"), "--overwrite"], capsys)
    assert code == 2 and "--output" in err and f"is the input file {stack}" in err
    assert digest(stack) == before and digest(out) == before and partials(tmp_path) == []


def test_existing_output_needs_overwrite(tmp_path: Path, stack: Path, capsys) -> None:
    out = tmp_path / "dense.nii.gz"
    out.write_text("my notes, not an image")
    before = digest(out)
    code, err = upsample(linear(stack, out, "--factor", "2"), capsys)
    assert code == 2 and f"--output {out}: already exists; pass --overwrite" in err
    assert digest(out) == before
    assert upsample(linear(stack, out, "--factor", "2", "--overwrite"), capsys)[0] == 0
    assert nib.load(str(out)).shape == (12, 10, 5) and partials(tmp_path) == []


def test_existing_std_map_needs_overwrite_and_nothing_is_written(tmp_path: Path, stack: Path, capsys) -> None:
    out = tmp_path / "dense.nii.gz"
    std_path(out).write_text("old std map")
    before = digest(std_path(out))
    code, err = upsample(linear(stack, out, "--factor", "2", "--samples", "2"), capsys)
    assert code == 2 and "dense_std.nii.gz: already exists" in err
    assert not out.exists() and digest(std_path(out)) == before


def _save_half_then(fail):
    """A stand-in for ``nib.save`` that writes half a file, then calls ``fail()`` (a full disk, a signal)."""

    def save(image, filename) -> None:
        Path(filename).write_bytes(b"\x1f\x8b" + b"\0" * 1000)
        fail()

    return save


def test_full_disk_while_writing_keeps_the_old_file(tmp_path: Path, stack: Path, capsys, monkeypatch) -> None:
    out = tmp_path / "dense.nii.gz"
    atomic_write_text(out, "previous result")
    before = digest(out)

    def full() -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(nib, "save", _save_half_then(full))
    code, err = upsample(linear(stack, out, "--factor", "2", "--overwrite"), capsys)
    assert code == 1 and f"{out}: cannot write (No space left on device)" in err
    assert digest(out) == before and partials(tmp_path) == []


def test_sigterm_while_writing_keeps_the_old_file(tmp_path: Path, stack: Path, capsys, monkeypatch) -> None:
    out = tmp_path / "dense.nii.gz"
    atomic_write_text(out, "previous result")
    before = digest(out)
    monkeypatch.setattr(nib, "save", _save_half_then(lambda: os.kill(os.getpid(), signal.SIGTERM)))
    with pytest.raises(SystemExit) as info:
        calid(["upsample", *linear(stack, out, "--factor", "2", "--overwrite")])
    assert info.value.code == 128 + signal.SIGTERM
    assert digest(out) == before and partials(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def _send_here(signum: int) -> None:
    os.kill(os.getpid(), signum)


def _send_from_another_thread(signum: int) -> None:
    """As the kernel may deliver a process-wide signal to any thread not blocking it (torch's, a logger's)."""
    sender = threading.Thread(target=os.kill, args=(os.getpid(), signum))
    sender.start()
    sender.join()


@pytest.mark.parametrize(
    ("signum", "send", "raised"),
    [
        (signal.SIGTERM, _send_here, SystemExit),
        (signal.SIGTERM, _send_from_another_thread, SystemExit),
        (signal.SIGINT, _send_here, KeyboardInterrupt),
    ],
    ids=["sigterm", "sigterm taken by another thread", "ctrl-c"],
)
def test_signal_as_the_temporary_file_is_created_leaves_no_partial(
    tmp_path: Path, monkeypatch, signum: int, send, raised: type[BaseException]
) -> None:
    """A signal that arrives right after the temporary file exists, before its name is known to the clean-up
    (the killed-subprocess test below hit this window now and then on a loaded machine): handled once the name
    is known, so no partial file stays. Python runs handlers in the main thread wherever the signal landed, so
    blocking it in the main thread alone (pthread_sigmask) failed the "another thread" case."""
    make_temp = tempfile.mkstemp

    def mkstemp_then_signal(*args, **kwargs):
        made = make_temp(*args, **kwargs)
        send(signum)
        return made

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp_then_signal)
    # A background run (nohup, CI) ignores SIGINT: give it Python's Ctrl-C handler for this test.
    previous_sigint = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(raised) as info:
            atomic_write_text(tmp_path / "table.csv", "new")
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous_sigint)
    assert raised is KeyboardInterrupt or info.value.code == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []


def _default_sigint() -> None:
    """In the child before exec: SIGINT as at an interactive terminal. A test run started in the background of
    a non-interactive shell inherits SIGINT ignored, and Python keeps an ignored SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _calid_process(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "calid_lightning.cli", "upsample", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=_default_sigint,
    )


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"finished before the kill: {proc.communicate()}"
        assert time.monotonic() < deadline, "timed out waiting for the moment to kill"
        time.sleep(0.005)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_killed_subprocess_mid_write_leaves_old_file(tmp_path: Path, sig: signal.Signals) -> None:
    """A stack large enough that gzip takes a while; the signal arrives while the temporary file grows."""
    src = write_stack(tmp_path / "sparse.nii.gz", shape=(96, 96, 6, 12))
    out = tmp_path / "dense.nii.gz"
    atomic_write_text(out, "previous result")
    before, source = digest(out), digest(src)
    proc = _calid_process(linear(src, out, "--factor", "8", "--overwrite"))
    _wait_for(lambda: partials(tmp_path), proc)
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    assert proc.returncode in (130, 143)
    assert digest(out) == before and digest(src) == source and partials(tmp_path) == []


FULL_RUN = ["--factor", "2", "--steps", "2", "--overwrite", "--quiet"]


def test_sigterm_during_calid_sampling_then_complete_run(tmp_path: Path) -> None:
    """A tiny CaLID checkpoint: SIGTERM while sampling keeps the old output; a full run replaces it whole."""
    from calid_lightning.models.calid_spatial import CaLIDSpatial

    model = CaLIDSpatial(vae_checkpoint=str(tiny_vae_checkpoint(tmp_path / "vae.ckpt")), **TINY_UNET)
    ckpt = save_checkpoint(model, tmp_path / "calid.ckpt")
    src = write_stack(tmp_path / "sparse.nii.gz", shape=(16, 16, 3, 4))
    out = tmp_path / "dense.nii.gz"
    atomic_write_text(out, "previous result")
    before = digest(out)
    args = ["--checkpoint", str(ckpt), "--input", str(src), "--output", str(out), "--device", "cpu"]
    proc = _calid_process([*args, "--factor", "4", "--steps", "1000", "--overwrite"])
    err = b""
    while b"%" not in err:  # the progress bar: sampling has started
        assert proc.poll() is None, proc.communicate()
        err += proc.stderr.read1(256)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 143 and digest(out) == before and partials(tmp_path) == []
    done = subprocess.run(
        [sys.executable, "-m", "calid_lightning.cli", "upsample", *args, *FULL_RUN],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert np.isfinite(np.asanyarray(nib.load(str(out)).dataobj)).all() and partials(tmp_path) == []


def test_output_that_is_a_directory(tmp_path: Path, stack: Path, capsys) -> None:
    folder = tmp_path / "out.nii.gz"
    folder.mkdir()
    code, err = upsample(linear(stack, folder, "--factor", "2", "--overwrite"), capsys)
    assert code == 2 and f"--output {folder}: is a directory" in err and list(folder.iterdir()) == []


def test_output_folder_that_is_a_file(tmp_path: Path, stack: Path, capsys) -> None:
    blocker = tmp_path / "results"
    blocker.write_text("a file where a folder should be")
    before = digest(blocker)
    code, err = upsample(linear(stack, blocker / "dense.nii.gz", "--factor", "2"), capsys)
    assert code == 2 and f"{blocker} is not a directory" in err and digest(blocker) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into a read-only folder")
def test_output_folder_not_writable(tmp_path: Path, stack: Path, capsys) -> None:
    folder = tmp_path / "locked"
    folder.mkdir(mode=0o500)
    code, err = upsample(linear(stack, folder / "dense.nii.gz", "--factor", "2"), capsys)
    assert code == 2 and f"its folder {folder} is not writable" in err


def test_not_enough_disk_space(tmp_path: Path, stack: Path, capsys, monkeypatch) -> None:
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 1000))
    out = tmp_path / "dense.nii.gz"
    code, err = upsample(linear(stack, out, "--factor", "2"), capsys)
    assert code == 2 and f"--output {out}: needs about" in err and "MiB are free" in err
    assert not out.exists() and partials(tmp_path) == []


@pytest.mark.parametrize(
    ("column", "problem"),
    [((0.0, 0.0, 0.0), "Z (slice) column is zero"), ((1.0, 1.5, 10.0), "sheared affine")],
)
def test_singular_or_sheared_affine_refused_before_the_model(tmp_path: Path, column, problem, capsys) -> None:
    affine = np.diag([1.5, 1.5, DZ, 1.0])
    affine[:3, 2] = column
    src = write_stack(tmp_path / "odd.nii.gz", affine=affine)
    before = digest(src)
    out = tmp_path / "dense.nii.gz"
    code, err = upsample(linear(src, out, "--factor", "2"), capsys)
    assert code == 1 and f"{src}: " in err and problem in err
    assert digest(src) == before and not out.exists()


def _random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(1).bytes(4096))


def _vae(path: Path) -> None:
    tiny_vae_checkpoint(path)


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda p: p.write_text("epoch=3 loss=0.1\n"), "not a PyTorch checkpoint"),
        (_random_bytes, "not a PyTorch checkpoint"),
        (_vae, "holds a VAEModule checkpoint, expected a CaLIDSpatial or CaLIDInflated or PixelSpatial"),
    ],
    ids=["text", "random-bytes", "vae-checkpoint"],
)
def test_bad_checkpoint_is_one_line_naming_the_file(
    tmp_path: Path, stack: Path, make, problem, capsys
) -> None:
    ckpt = tmp_path / "model.ckpt"
    make(ckpt)
    before = digest(ckpt)
    out = tmp_path / "dense.nii.gz"
    code, err = upsample(
        ["--checkpoint", str(ckpt), "--input", str(stack), "--output", str(out), "--factor", "2", "--quiet"],
        capsys,
    )
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and f"{ckpt}: {problem}" in lines[0]
    assert "weights_only" not in err and digest(ckpt) == before and not out.exists()


@pytest.mark.parametrize(
    ("args", "option", "expected"),
    [
        (["--factor", "2", "--steps", "0"], "--steps", "integer >= 1"),
        (["--factor", "2", "--steps", "-3"], "--steps", "integer >= 1"),
        (["--factor", "2", "--max-batch", "0"], "--max-batch", "integer >= 1"),
        (["--factor", "0"], "--factor", "integer >= 1"),
        (["--factor", "2", "--samples", "0"], "--samples", "integer >= 1"),
        (["--spacing", "nan"], "--spacing", "finite number"),
        (["--spacing", "inf"], "--spacing", "finite number"),
        (["--spacing", "-2"], "--spacing", "> 0"),
        (["--spacing", "100"], "--spacing 100", "larger than the acquired spacing 10 mm"),
        (["--spacing", "4"], "--spacing 4", "does not divide the acquired spacing 10 mm"),
        (["--spacing", "0.0001"], "--spacing 0.0001", "pass --force"),
        (["--factor", "600"], "--factor 600", "1201 output slices"),
    ],
)
def test_argument_errors_are_usage_errors(
    tmp_path: Path, stack: Path, args, option, expected, capsys
) -> None:
    before = digest(stack)
    out = tmp_path / "dense.nii.gz"
    code, err = upsample(linear(stack, out, *args), capsys)
    error_lines = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and len(error_lines) == 1 and option in error_lines[0] and expected in error_lines[0]
    assert digest(stack) == before and not out.exists()


def test_force_allows_many_slices_and_an_off_grid_spacing(tmp_path: Path, stack: Path, capsys) -> None:
    out = tmp_path / "dense.nii.gz"
    assert upsample(linear(stack, out, "--factor", "600", "--force"), capsys)[0] == 0
    assert nib.load(str(out)).shape == (12, 10, 1201)
    code, err = upsample(linear(stack, out, "--spacing", "4", "--force", "--overwrite"), capsys)
    assert code == 0 and "1 acquired slice(s) are not on the output grid" in err


def test_nifti_pair_input(tmp_path: Path, capsys) -> None:
    src = tmp_path / "pair.hdr"
    data = np.random.default_rng(0).random((12, 10, 3)).astype(np.float32) + 1
    nib.save(nib.Nifti1Pair(data, np.diag([1.5, 1.5, DZ, 1.0])), str(src))
    out = tmp_path / "dense.nii.gz"
    assert upsample(linear(src, out, "--factor", "2"), capsys)[0] == 0
    dense = nib.load(str(out))
    assert dense.shape == (12, 10, 5) and np.array_equal(np.asanyarray(dense.dataobj)[:, :, ::2], data)
    assert dense.header.get_zooms() == pytest.approx((1.5, 1.5, 5.0))


@pytest.mark.parametrize(
    ("args", "option", "expected"),
    [
        (["--seed", "-1"], "--seed", "an integer >= 0"),
        (["--pixel-spacing", "nan"], "--pixel-spacing", "a finite number"),
        (["--subjects", "0"], "--subjects", "an integer >= 1"),
    ],
)
def test_phantom_argument_errors(tmp_path: Path, args, option, expected, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        calid(["phantom", "--out", str(tmp_path / "ph"), *args])
    err = capsys.readouterr().err
    assert (
        info.value.code == 2
        and f"argument {option}: expected {expected}" in err
        and not (tmp_path / "ph").exists()
    )


def test_phantom_out_that_is_a_file(tmp_path: Path, capsys) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    before = digest(target)
    with pytest.raises(SystemExit) as info:
        calid(["phantom", "--out", str(target), "--subjects", "1"])
    assert info.value.code == 2 and f"argument --out: {target} is a file" in capsys.readouterr().err
    assert digest(target) == before
