"""Layers point down: no module of calid_lightning imports one of a higher layer.

Low to high: the top-level helper modules (``io_safety``, ``checkpoint_file``, ``errors``, ``distributed``,
``fault_tolerance``, ``tracking``, ``cli_options``) and the pure ``metrics/`` package < ``data/`` <
``models/`` < ``inference/`` < ``evaluation/`` < ``reproduce/``, ``benchmarking/`` and the training CLIs
(``cli``, ``sweep``).
A module may import its own layer and any lower one. Every import counts: module-level, function-local,
relative (``from . import x``) and ``importlib.import_module("calid_lightning...")`` with a literal name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "calid_lightning"
LAYERS = ("helpers", "data", "models", "inference", "evaluation", "top")
SUB_PACKAGES = {
    "metrics": "helpers",
    "data": "data",
    "models": "models",
    "inference": "inference",
    "evaluation": "evaluation",
    "reproduce": "top",
    "benchmarking": "top",
}
CLI_MODULES = {"cli": "top", "sweep": "top"}


def layer(module: str) -> str:
    """The layer of a ``calid_lightning...`` module name: its sub-package's, else helpers or a CLI."""
    parts = module.split(".")
    if len(parts) == 1:
        return "helpers"
    return SUB_PACKAGES.get(parts[1]) or CLI_MODULES.get(parts[1], "helpers")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """``(line, module)`` of every calid_lightning module that ``source`` (the module ``module``) imports."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if node.module is None or target == PACKAGE:  # `from . import x`, `from calid_lightning import x`
                found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, target))
        elif (
            isinstance(node, ast.Call)
            and (getattr(node.func, "id", None) or getattr(node.func, "attr", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return [(line, name) for line, name in found if name == PACKAGE or name.startswith(PACKAGE + ".")]


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """``line: imports X (layer a may not import layer b)`` for each upward import of ``source``."""
    mine = LAYERS.index(layer(module))
    return [
        f"{line}: imports {name} ({layer(module)} may not import {layer(name)})"
        for line, name in imported_modules(source, module, is_package)
        if LAYERS.index(layer(name)) > mine
    ]


def source_files() -> list[Path]:
    return sorted((SRC / PACKAGE).rglob("*.py"))


def test_the_tree_is_found() -> None:
    names = {module_name(p) for p in source_files()}
    assert {"calid_lightning.models.diffusion", "calid_lightning.metrics.temporal"} <= names


def test_no_module_imports_a_higher_layer() -> None:
    problems = [
        f"{path.relative_to(SRC.parent)}:{problem}"
        for path in source_files()
        for problem in violations(path.read_text(), module_name(path), path.name == "__init__.py")
    ]
    assert not problems, "imports that point up a layer:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("calid_lightning.models.x", "from calid_lightning.evaluation.temporal import f", "evaluation"),
        ("calid_lightning.models.x", "def f():\n    import calid_lightning.inference.upsample", "inference"),
        ("calid_lightning.models.x", "from ..reproduce import table", "top"),
        ("calid_lightning.data.x", "from calid_lightning import models", "models"),
        ("calid_lightning.data.x", "from . import datasets\nfrom .. import cli", "top"),
        ("calid_lightning.data.x", "importlib.import_module('calid_lightning.sweep')", "top"),
        ("calid_lightning.metrics.x", "if True:\n    from calid_lightning.data import subject", "data"),
        ("calid_lightning.checkpoint_file", "from calid_lightning.data.subject import DataError", "data"),
    ],
)
def test_the_check_catches_upward_imports_at_any_depth(module: str, source: str, expected: str) -> None:
    found = violations(source, module)
    assert len(found) == 1 and f"may not import {expected})" in found[0]


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("calid_lightning.evaluation.x", "from calid_lightning.models.vae import VAEModule"),
        ("calid_lightning.models.x", "from calid_lightning.metrics.temporal import f\nimport torch"),
        ("calid_lightning.data.x", "from . import sampling\nfrom calid_lightning.io_safety import x"),
        ("calid_lightning.cli", "from calid_lightning.reproduce import cli"),
    ],
)
def test_the_check_allows_imports_of_the_same_or_a_lower_layer(module: str, source: str) -> None:
    assert violations(source, module) == []
