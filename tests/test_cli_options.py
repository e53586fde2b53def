"""Options the calid tools share: --data/--data-override and --device."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from calid_lightning.cli_options import add_data_arguments, add_device_argument
from calid_lightning.evaluation.evaluate_cli import data_init_args


def test_data_arguments_parse_and_keep_the_configs_gap_factor(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_data_arguments(parser)
    config = tmp_path / "data.yaml"
    config.write_text("data:\n  init_args:\n    gap_factor: 3\n    crop_size: 64\n")
    args = parser.parse_args(["--data", str(config), "--data-override", "crop_size=32"])
    _, init = data_init_args(args.data, args.data_override)
    assert init["gap_factor"] == 3 and init["crop_size"] == 32
    assert data_init_args(args.data, [], 2)[1]["gap_factor"] == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_device_cuda_without_a_gpu_is_a_usage_error(capsys: pytest.CaptureFixture) -> None:
    parser = argparse.ArgumentParser(prog="calid x")
    add_device_argument(parser)
    assert parser.parse_args([]).device == "cpu"
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--device", "cuda"])
    assert info.value.code == 2 and "no CUDA device is available" in capsys.readouterr().err
