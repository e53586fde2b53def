"""Command-line options the ``calid`` tools share: the data config with its overrides, the device, and
argparse ``type=`` validators, so a bad value is a one-line usage error (exit 2) naming the option.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch


def _number(value: str, kind: type) -> int | float:
    try:
        number = kind(value)
    except ValueError:
        wanted = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {value!r}") from None
    if kind is float and not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {value!r}")
    return number


def positive_int(value: str) -> int:
    """``type=`` for counts that must be at least 1 (steps, batch sizes, samples, factors)."""
    number = int(_number(value, int))
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value!r}")
    return number


def non_negative_int(value: str) -> int:
    """``type=`` for seeds and indices (0 or more)."""
    number = int(_number(value, int))
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value!r}")
    return number


def positive_float(value: str) -> float:
    """``type=`` for lengths in mm and other finite quantities above 0 (no nan, no inf)."""
    number = float(_number(value, float))
    if number <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {value!r}")
    return number


def non_negative_float(value: str) -> float:
    """``type=`` for finite quantities that may be 0 (e.g. a motion amplitude)."""
    number = float(_number(value, float))
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {value!r}")
    return number


def output_folder(value: str) -> Path:
    """``type=`` for an output folder: a path that is not an existing file (it may not exist yet)."""
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{value} is a file; expected a folder")
    return path


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """``--data`` (a data config YAML) and repeatable ``--data-override KEY=VALUE`` (``data_init_args``)."""
    parser.add_argument(
        "--data", required=True, help="data config YAML (data.init_args of CardiacDataModule)"
    )
    parser.add_argument(
        "--data-override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a data.init_args key, dotted for nested keys (e.g. phantom.subjects=3); repeatable",
    )


def device(value: str) -> str:
    """``--device`` type: ``cpu``, or ``cuda`` when a CUDA device is available."""
    if value == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError("cuda asked for, but no CUDA device is available")
    return value


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device cpu|cuda``, CUDA by default when there is one; asking for a missing one is an error."""
    parser.add_argument(
        "--device",
        type=device,
        choices=("cpu", "cuda"),
        default="cuda" if torch.cuda.is_available() else "cpu",
    )
