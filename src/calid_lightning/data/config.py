"""The data config of the evaluation tools: a ``data_modules/*.yaml`` file to a set-up DataModule.

``calid evaluate``, ``calid figures``, ``calid evaluate-cine``, ``calid reproduce``'s data stage and the
benchmarks read the same ``data:`` section that ``calid fit -c data_modules/<source>.yaml`` does:
:func:`data_init_args` reads it (with ``--data-override KEY=VALUE`` and the gap factor), and
:func:`build_datamodule` instantiates the class it names and sets it up.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from calid_lightning.data.datamodule import CardiacDataModule
from calid_lightning.data.subject import DataError


def data_init_args(
    path: str, overrides: Sequence[str], factor: int | None = None
) -> tuple[str, dict[str, Any]]:
    """``(class_path, init_args)`` of the data YAML's ``data`` section with overrides and ``gap_factor``
    (the config's own when ``factor`` is None).

    Raises ``DataError`` naming the file when it has no ``data.init_args`` mapping, ``ValueError`` for an
    override that is not ``key=value``.
    """
    if not Path(path).is_file():
        raise DataError(path, "data config not found")
    config = OmegaConf.load(path)
    data = config.get("data") if OmegaConf.is_dict(config) else None
    if data is None or not OmegaConf.is_dict(data.get("init_args")):
        raise DataError(path, "expected a `data:` section with `init_args:` (see data_modules/phantom.yaml)")
    init = data.init_args
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--data-override {item!r}: expected KEY=VALUE, e.g. crop_size=64")
        prefixed = item.removeprefix("data.init_args.")
        init = OmegaConf.merge(init, OmegaConf.from_dotlist([prefixed]))
    init = OmegaConf.to_container(init, resolve=True)
    if factor is not None:
        init["gap_factor"] = factor
    return str(data.get("class_path", f"{CardiacDataModule.__module__}.CardiacDataModule")), init


def build_datamodule(class_path: str, init_args: dict[str, Any]) -> CardiacDataModule:
    """Instantiate the DataModule class named by ``class_path``, generate data if asked, and set it up."""
    module_name, _, class_name = class_path.rpartition(".")
    datamodule = getattr(importlib.import_module(module_name), class_name)(**init_args)
    datamodule.prepare_data()
    datamodule.setup()
    return datamodule
