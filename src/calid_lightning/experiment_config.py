"""Experiment configs that compose: a top-level ``defaults`` list names the files a config builds on.

``experiments/calid_spatial.yaml`` starts with ``defaults: [shared/trainer.yaml]`` (paths relative to the
including file, as in lightning-hydra-template's defaults lists): the listed files are composed first, in
order, then the file's own keys; later wins (mappings merge key by key, lists and scalars replace, as
LightningCLI merges ``-c`` files). :func:`compose` is the one implementation: ``calid fit`` applies it to
every ``-c`` file before LightningCLI parses (:func:`expand_config_args`), and every other reader of
experiment YAMLs (``calid reproduce``, ``resume-path``, benchmarks, tests) reads them through it.

The names of a run come from one place, its ``run`` group (:class:`RunConfig`): ``runs/${run.stage}/
${run.profile}`` is the root every path derives from, the W&B name/group/job type and the checkpoint file
names interpolate it. ``${...}`` stays unresolved here: ``calid fit`` resolves it once, after every file and
override is merged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from calid_lightning.errors import DataError

DEFAULTS_KEY = "defaults"
CONFIG_FLAGS = ("-c", "--config")


class ConfigError(DataError):
    """An experiment config that cannot be composed: the message names the file and the problem."""


@dataclass
class RunConfig:
    """The names of one training run (the ``run`` group of ``calid fit``), set by its experiment config.

    Args:
        stage: the experiment (``vae``, ``calid_spatial``, ...): the root ``runs/<stage>/<profile>``, the W&B
            group and, with the profile, the W&B run name.
        profile: the sizing profile (``quick``, ``paper``; ``table-<profile>`` under ``calid reproduce``):
            the root's last folder and the W&B job type.
        checkpoint_prefix: the checkpoint file names, ``<prefix>-step=N.ckpt``.
        checkpoint_every: training steps between restart points (the rotating ``StepModelCheckpoint``).
    """

    stage: str | None = None
    profile: str | None = None
    checkpoint_prefix: str | None = None
    checkpoint_every: int | None = None


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base``: mappings merge key by key, anything else (lists too) replaces."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: str | Path) -> dict[str, Any]:
    """One YAML file as a mapping, read with jsonargparse's YAML loader (the types ``calid fit`` sees)."""
    from jsonargparse import get_loader

    path = Path(path)
    if not path.is_file():
        raise ConfigError(path, "no such config file")
    try:
        content = get_loader("yaml")(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(path, f"not valid YAML: {' '.join(str(error).split())}") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ConfigError(path, f"expected a mapping of config keys, got a {type(content).__name__}")
    return content


def _defaults(path: Path, content: dict[str, Any]) -> list[Path]:
    entries = content.get(DEFAULTS_KEY) or []
    if isinstance(entries, str):
        entries = [entries]
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise ConfigError(path, f"{DEFAULTS_KEY} must be a list of YAML files relative to {path.parent}")
    files = []
    for entry in entries:
        target = path.parent / entry
        if not target.is_file():
            raise ConfigError(path, f"{DEFAULTS_KEY} entry '{entry}': no such file {target}")
        files.append(target)
    return files


def _compose(path: Path, chain: tuple[Path, ...]) -> tuple[dict[str, Any], list[Path]]:
    if path.resolve() in chain:
        cycle = " -> ".join(str(p) for p in (*chain, path.resolve()))
        raise ConfigError(path, f"{DEFAULTS_KEY} include themselves: {cycle}")
    content = read_yaml(path)
    composed: dict[str, Any] = {}
    files: list[Path] = []
    for base in _defaults(path, content):
        config, read = _compose(base, (*chain, path.resolve()))
        composed, files = merge(composed, config), files + read
    own = {k: v for k, v in content.items() if k != DEFAULTS_KEY}
    return merge(composed, own), [*files, path]


def compose(path: str | Path) -> dict[str, Any]:
    """The config of ``path`` with its ``defaults`` expanded (recursively), ``${...}`` left unresolved.

    Raises :class:`ConfigError` naming the file for a missing default, a cycle or a file that is no mapping.
    """
    return _compose(Path(path), ())[0]


def composed_files(path: str | Path) -> list[Path]:
    """Every file :func:`compose` reads for ``path``, bases first, ``path`` last."""
    return _compose(Path(path), ())[1]


def merge_configs(paths: Sequence[str | Path]) -> dict[str, Any]:
    """The composed configs merged in order, as ``calid fit -c A -c B`` merges them; ``${...}`` unresolved."""
    merged: dict[str, Any] = {}
    for path in paths:
        merged = merge(merged, compose(path))
    return merged


def resolved(config: Mapping[str, Any], key: str, source: str = "config") -> Any:
    """The value at dotted ``key`` of a merged config with its ``${...}`` resolved (None when unset).

    ``source`` names the files in the one-line error for an interpolation that does not resolve.
    """
    try:
        return OmegaConf.select(OmegaConf.create(dict(config)), key, throw_on_missing=True)
    except OmegaConfBaseException as error:
        raise ConfigError(source, f"{key}: {_first_line(error)}") from None


def resolve_all(config: Mapping[str, Any], source: str = "config") -> dict[str, Any]:
    """A merged config with every ``${...}`` resolved, as ``calid fit`` resolves it after merging."""
    try:
        return OmegaConf.to_container(OmegaConf.create(dict(config)), resolve=True)  # type: ignore[return-value]
    except OmegaConfBaseException as error:
        raise ConfigError(source, _first_line(error)) from None


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0]


def expand_config_args(args: Sequence[str]) -> list[str]:
    """``args`` with every ``-c FILE`` / ``--config FILE`` whose YAML has ``defaults`` replaced by the
    composed config (a YAML string, which LightningCLI's ``--config`` accepts); other arguments unchanged."""
    expanded: list[str] = []
    pending = False
    for arg in args:
        flag, eq, value = arg.partition("=")
        if pending:
            expanded.append(_expanded(arg))
            pending = False
        elif arg in CONFIG_FLAGS:
            expanded.append(arg)
            pending = True
        elif eq and flag == "--config":
            expanded.append(f"--config={_expanded(value)}")
        else:
            expanded.append(arg)
    return expanded


def _expanded(value: str) -> str:
    path = Path(value)
    try:
        is_file = path.is_file()
    except (OSError, ValueError):  # a YAML string given as --config, too long or odd for a file name
        is_file = False
    if not is_file or DEFAULTS_KEY not in read_yaml(path):
        return value
    return yaml.safe_dump(compose(path), sort_keys=False)
