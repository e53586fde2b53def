"""Command-line options the ``calid`` tools share: the data config with its overrides, and the device."""

from __future__ import annotations

import argparse

import torch


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
