"""The reproduce profile: which models `make reproduce-table` trains, with what budget, and how it evaluates.

A profile is a YAML file (``experiments/reproduce/{quick,paper}.yaml``); :func:`load_profile` reads and checks
it, naming the file and the field of anything wrong.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

from lightning.fabric.connector import _PRECISION_INPUT_STR
from omegaconf import OmegaConf

from calid_lightning.precision import IF_FAST

TRAIN_STAGES = ("vae", "segmenter", "calid_spatial", "calid_concat", "calid_inflated", "pixel_spatial")
"""The models the table needs, in the order they are listed; ``needs`` orders them for running.
``calid_concat`` is the injection ablation: the spatial CaLID config without tau_theta2 (input concatenation
only), trained like ``calid_spatial``."""
PRECISIONS = (*typing.get_args(_PRECISION_INPUT_STR), IF_FAST)
"""What a stage's ``precision`` may be: Lightning's precision strings, or ``bf16-mixed-if-fast``."""


class ProfileError(ValueError):
    """A reproduce profile that cannot be used: names the file and the field."""

    def __init__(self, path: str | Path, field: str, problem: str) -> None:
        super().__init__(f"{path}: `{field}`: {problem}")


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    """One training stage: its experiment config, the stages it needs, extra ``calid fit`` arguments and the
    trainer precision (None: the config's; ``bf16-mixed-if-fast``: resolved on the machine that plans)."""

    config: str
    needs: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    precision: str | None = None


@dataclasses.dataclass(frozen=True)
class Profile:
    """A checked reproduce profile (``experiments/reproduce/quick.yaml`` explains each field)."""

    path: Path
    name: str
    data: str
    jobs: int
    threads: int | None
    profile_dir: str | None
    train: dict[str, TrainSpec]
    evaluate: dict[str, Any]
    figures: dict[str, Any]


def _int(path: Path, field: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ProfileError(path, field, f"expected an integer >= {minimum}, got {value!r}")
    return value


def _train_spec(path: Path, name: str, raw: Any) -> TrainSpec:
    field = f"train.{name}"
    if not isinstance(raw, dict) or not isinstance(raw.get("config"), str):
        raise ProfileError(path, field, "expected a mapping with `config: experiments/<model>.yaml`")
    unknown = set(raw) - {"config", "needs", "args", "precision"}
    if unknown:
        raise ProfileError(
            path, field, f"unknown keys {sorted(unknown)}; expected config, needs, args, precision"
        )
    needs, args = raw.get("needs") or [], raw.get("args") or []
    if not all(isinstance(n, str) for n in needs) or not all(isinstance(a, str) for a in args):
        raise ProfileError(path, field, "`needs` and `args` must be lists of strings")
    precision = raw.get("precision")
    if precision is not None and precision not in PRECISIONS:
        raise ProfileError(
            path, f"{field}.precision", f"expected one of {', '.join(PRECISIONS)}, got {precision!r}"
        )
    return TrainSpec(raw["config"], tuple(needs), tuple(args), precision)


def load_profile(path: str | Path, data: str | None = None) -> Profile:
    """Read and check a reproduce profile; ``data`` replaces its data config (the ``DATA=`` of make).

    Raises :class:`ProfileError` naming the file and field for a missing file, unknown training stage, a stage
    that needs an unknown one, or a missing config file.
    """
    path = Path(path)
    if not path.is_file():
        raise ProfileError(path, "-", "profile not found (see experiments/reproduce/*.yaml)")
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    if not isinstance(raw, dict):
        raise ProfileError(path, "-", "expected a mapping at the top level")
    for key in ("name", "data", "train", "evaluate"):
        if key not in raw:
            raise ProfileError(path, key, "missing")
    if not isinstance(raw["train"], dict) or not raw["train"]:
        raise ProfileError(path, "train", f"expected a mapping of stages from {', '.join(TRAIN_STAGES)}")
    unknown = set(raw["train"]) - set(TRAIN_STAGES)
    if unknown:
        raise ProfileError(
            path, "train", f"unknown stages {sorted(unknown)}; expected {', '.join(TRAIN_STAGES)}"
        )
    train = {name: _train_spec(path, name, spec) for name, spec in raw["train"].items()}
    for name, spec in train.items():
        missing = [n for n in spec.needs if n not in train]
        if missing:
            raise ProfileError(path, f"train.{name}.needs", f"{missing} are not stages of this profile")
        if not Path(spec.config).is_file():
            raise ProfileError(path, f"train.{name}.config", f"{spec.config} not found")
    data = data or raw["data"]
    if not Path(data).is_file():
        raise ProfileError(
            path, "data", f"{data} not found (a data config such as data_modules/phantom.yaml)"
        )
    profile_dir = raw.get("profile_dir")
    if profile_dir is not None and not Path(profile_dir).is_dir():
        raise ProfileError(path, "profile_dir", f"{profile_dir} is not a folder")
    evaluate = dict(raw["evaluate"])
    factors = evaluate.get("factors")
    if not isinstance(factors, list) or not factors:
        raise ProfileError(path, "evaluate.factors", f"expected a list of gap factors >= 2, got {factors!r}")
    for factor in factors:
        _int(path, "evaluate.factors", factor, minimum=2)
    threads = raw.get("threads")
    return Profile(
        path=path,
        name=str(raw["name"]),
        data=str(data),
        jobs=_int(path, "jobs", raw.get("jobs", 1)),
        threads=None if threads is None else _int(path, "threads", threads),
        profile_dir=profile_dir,
        train=train,
        evaluate=evaluate,
        figures=dict(raw.get("figures") or {}),
    )
