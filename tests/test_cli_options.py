"""Options the calid tools share: --data/--data-override, --device, the number / folder validators; a data
error during `calid fit` is one block without a traceback."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import torch

from calid_lightning.cli import main as calid
from calid_lightning.cli_options import (
    add_data_arguments,
    add_device_argument,
    non_negative_float,
    non_negative_int,
    output_folder,
    positive_float,
    positive_int,
)
from calid_lightning.data.config import data_init_args
from calid_lightning.data.subject import DataError

REPO = Path(__file__).resolve().parents[1]


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


@pytest.mark.parametrize(
    ("parse", "value", "message"),
    [
        (positive_int, "0", "expected an integer >= 1, got '0'"),
        (positive_int, "2.5", "expected an integer, got '2.5'"),
        (non_negative_int, "-1", "expected an integer >= 0, got '-1'"),
        (positive_float, "nan", "expected a finite number, got 'nan'"),
        (positive_float, "-inf", "expected a finite number, got '-inf'"),
        (positive_float, "0", "expected a finite number > 0, got '0'"),
        (non_negative_float, "-0.5", "expected a finite number >= 0, got '-0.5'"),
    ],
)
def test_number_validators_refuse_with_the_expected_value(parse, value: str, message: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(message)):
        parse(value)


def test_number_validators_accept_good_values(tmp_path: Path) -> None:
    assert positive_int("3") == 3 and non_negative_int("0") == 0
    assert positive_float("2.5") == 2.5 and non_negative_float("0") == 0.0
    assert output_folder(str(tmp_path / "new")) == tmp_path / "new"
    (tmp_path / "file").write_text("x")
    with pytest.raises(argparse.ArgumentTypeError, match="is a file; expected a folder"):
        output_folder(str(tmp_path / "file"))


def _fit_on_bad_folder(tmp_path: Path) -> list[str]:
    root = tmp_path / "data"
    root.mkdir()
    (root / "scan.nii.gz").write_text("not an image")
    return [
        "fit",
        *(
            "-c",
            str(REPO / "experiments" / "vae.yaml"),
            "-c",
            str(REPO / "data_modules" / "nifti_folder.yaml"),
        ),
        *("--data.init_args.root", str(root), "--data.init_args.cache_dir", str(tmp_path / "cache")),
        *("--trainer.logger", "false", "--trainer.max_steps", "1"),
        *("--trainer.default_root_dir", str(tmp_path / "runs")),
    ]


def test_fit_data_error_is_one_block_without_traceback(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CALID_DEBUG", raising=False)
    assert calid(_fit_on_bad_folder(tmp_path)) == 1
    err = capsys.readouterr().err
    assert f"calid: error: {tmp_path / 'data' / 'scan.nii.gz'}: not a readable NIfTI file" in err
    assert "Traceback" not in err and "CALID_DEBUG=1" in err
    monkeypatch.setenv("CALID_DEBUG", "1")
    with pytest.raises(DataError, match=r"scan\.nii\.gz"):
        (tmp_path / "again").mkdir()
        calid(_fit_on_bad_folder(tmp_path / "again"))
