"""The stages of `make reproduce-table` as commands: data -> training -> evaluation -> figures.

Every stage is the ``calid`` command a user would type (training stages are ``calid fit`` with the experiment
config, the data config, the profile's override config and one generated config that points logs and
checkpoints into the table's run folder by setting its root, ``trainer.default_root_dir``, from which every
path of the experiment configs derives, and names the W&B run through the ``run`` group), so a failing stage
can be re-run by hand from its log.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from calid_lightning.experiment_config import merge_configs
from calid_lightning.inference.methods import METHODS
from calid_lightning.precision import resolve_precision
from calid_lightning.reproduce.profile import Profile

STAGE_NEEDING_VAE = ("calid_spatial", "calid_concat")
COMPOSED_SUFFIX = ".composed.yaml"
"""``configs/<stage>.composed.yaml``: a training stage's experiment and profile configs composed and merged
(:func:`~calid_lightning.experiment_config.merge_configs`), the input its cache key hashes: a comment, a
key moved into a shared file or another layout of the same settings leaves the stage cached."""


@dataclasses.dataclass(frozen=True)
class Stage:
    """One step of the pipeline.

    Attributes:
        name: unique stage name (``vae``, ``eval_spatial_x4``, ...).
        argv: arguments of ``calid`` (or of the module in ``module``).
        needs: stages that must finish first.
        outputs: files the stage must leave behind to count as finished.
        inputs: files whose contents enter the stage's cache key (configs).
        run_dir: training stages: their folder (removed when stale, resumed when interrupted).
        total_steps: training stages: ``max_steps``, for progress lines.
        module: the Python module run with ``-m`` (``calid_lightning.cli`` unless said otherwise).
    """

    name: str
    argv: tuple[str, ...]
    needs: tuple[str, ...] = ()
    outputs: tuple[Path, ...] = ()
    inputs: tuple[Path, ...] = ()
    run_dir: Path | None = None
    total_steps: int | None = None
    module: str = "calid_lightning.cli"

    def command(self) -> list[str]:
        """The process to start: this Python running :attr:`module` with :attr:`argv`."""
        return [sys.executable, "-m", self.module, *self.argv]

    def display(self) -> str:
        """The command as a user would type it."""
        head = "calid" if self.module == "calid_lightning.cli" else f"python -m {self.module}"
        return " ".join([head, *self.argv])


RUN_OUTPUTS = (
    "checkpoints/*.ckpt",
    "checkpoints/.*.partial",
    "csv/version_*",
    "wandb",
    "config.yaml",
    "hpc_ckpt_*.ckpt",
)
"""What ``calid fit`` writes into its run folder (the layout of experiments/*.yaml): checkpoints, the CSV and
W&B logs, the resolved config, SLURM requeue checkpoints. A stage started afresh removes these only."""


def last_checkpoint(run_dir: Path) -> Path:
    """Where a training stage's ``last.ckpt`` lands."""
    return run_dir / "checkpoints" / "last.ckpt"


def clear_run_folder(run_dir: Path) -> list[Path]:
    """Remove what ``calid fit`` wrote into ``run_dir`` (:data:`RUN_OUTPUTS`); returns the files left there.

    Anything else (a user's notes, a copied checkpoint under another name) stays; emptied folders go.
    """
    for pattern in RUN_OUTPUTS:
        for path in sorted(run_dir.glob(pattern)):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    for folder in sorted((p for p in run_dir.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        if not any(folder.iterdir()):
            folder.rmdir()
    kept = sorted(p for p in run_dir.rglob("*") if not p.is_dir())
    if run_dir.is_dir() and not any(run_dir.iterdir()):
        run_dir.rmdir()
    return kept


def training_overrides(
    merged: dict[str, Any],
    stage: str,
    run_dir: Path,
    profile: str,
    vae_checkpoint: Path | None,
    spatial_checkpoint: Path | None = None,
) -> dict[str, Any]:
    """The generated config of a training stage: its root ``run_dir``, its ``run`` names and the VAE (and, for
    the inflated 2D+T model, the spatial CaLID) it starts from.

    ``merged`` is the experiment config merged with the profile's override config, unresolved: the loggers
    and checkpoints of experiments/*.yaml derive their paths from ``${trainer.default_root_dir}`` and their
    names from the ``run`` group, so setting the root and ``run.stage`` / ``run.profile`` (W&B run
    ``<stage>-table-<profile>``, group ``<stage>``, job type ``table-<profile>``) moves and names them all.
    """
    overrides: dict[str, Any] = {
        "trainer": {"default_root_dir": str(run_dir)},
        "run": {"stage": stage, "profile": f"table-{profile}"},
    }
    model_init = (merged.get("model") or {}).get("init_args") or {}
    init: dict[str, str] = {}
    if vae_checkpoint is not None and "vae_checkpoint" in model_init:
        init["vae_checkpoint"] = str(vae_checkpoint)
    if spatial_checkpoint is not None and "spatial_checkpoint" in model_init:
        init["spatial_checkpoint"] = str(spatial_checkpoint)
    if init:
        overrides["model"] = {"init_args": init}
    return overrides


def _max_steps(merged: dict[str, Any], args: tuple[str, ...]) -> int | None:
    steps = (merged.get("trainer") or {}).get("max_steps")
    for arg in args:
        key, _, value = arg.partition("=")
        if key == "--trainer.max_steps" and value:
            steps = int(value)
    return int(steps) if steps not in (None, -1) else None


def training_stages(profile: Profile, run_root: Path) -> list[Stage]:
    """One ``calid fit`` stage per model of the profile; writes their generated configs under ``run_root``."""
    config_dir = run_root / "configs"
    config_dir.mkdir(parents=True, exist_ok=True)
    stages = []
    for name, spec in profile.train.items():
        run_dir = run_root / name
        # The profile's override of the stage's experiment config (calid_concat takes calid_spatial's).
        extra = Path(profile.profile_dir) / Path(spec.config).name if profile.profile_dir else None
        configs = [Path(spec.config), *([extra] if extra and extra.is_file() else [])]
        merged = merge_configs(configs)
        needs = tuple(spec.needs)
        vae = last_checkpoint(run_root / "vae") if name in STAGE_NEEDING_VAE else None
        if vae is not None and "vae" not in needs:
            needs = ("vae", *needs)
        model_init = (merged.get("model") or {}).get("init_args") or {}
        spatial = last_checkpoint(run_root / "calid_spatial") if "spatial_checkpoint" in model_init else None
        if spatial is not None and "calid_spatial" not in needs:
            needs = ("calid_spatial", *needs)
        generated = config_dir / f"{name}.yaml"
        overrides = training_overrides(merged, name, run_dir, profile.name, vae, spatial)
        generated.write_text(yaml.safe_dump(overrides, sort_keys=False))
        composed = config_dir / f"{name}{COMPOSED_SUFFIX}"
        composed.write_text(yaml.safe_dump(merged, sort_keys=True))
        argv = ["fit", "-c", spec.config, "-c", profile.data]
        argv += [*(["-c", str(extra)] if extra and extra.is_file() else []), "-c", str(generated), *spec.args]
        if spec.precision is not None:
            argv.append(f"--trainer.precision={resolve_precision(spec.precision)}")
        stages.append(
            Stage(
                name=name,
                argv=tuple(argv),
                needs=needs,
                outputs=(last_checkpoint(run_dir),),
                inputs=(composed, Path(profile.data), generated),
                run_dir=run_dir,
                total_steps=_max_steps(merged, spec.args),
            )
        )
    return stages


def evaluation_stages(profile: Profile, run_root: Path, results: Path) -> list[Stage]:
    """Held-out evaluation (spatial, pixel, cine) and figure stages for the trained models of the profile."""
    ev, trained = profile.evaluate, set(profile.train)
    ckpt = {name: str(last_checkpoint(run_root / name)) for name in trained}
    overrides = [arg for item in ev.get("data_overrides") or [] for arg in ("--data-override", str(item))]
    data = ["--data", profile.data, *overrides]
    common = [*data, "--split", str(ev.get("split", "test")), "--quiet"]
    steps = ["--steps", str(ev["steps"])] if ev.get("steps") else []
    seg = ["--segmenter", ckpt["segmenter"]] if "segmenter" in trained else []
    seg_needs = ("segmenter",) if seg else ()
    eval_dir, figure_dir = results / "eval", results / "figures"
    frames = str(ev.get("frames", "ed_es"))

    def evaluate(
        name: str, models: list[str], factor: int, methods: str, frames: str, needs: tuple[str, ...]
    ) -> Stage:
        """A ``calid evaluate`` stage writing ``eval_dir/<name without eval_>.csv``."""
        out = eval_dir / f"{name.removeprefix('eval_')}.csv"
        argv = (
            "evaluate",
            *common,
            *models,
            "--factor",
            str(factor),
            "--methods",
            methods,
            "--frames",
            frames,
        )
        return Stage(name, (*argv, "--out", str(out)), needs, (out,))

    stages = []  # the longest stage first: ready stages start in plan order (runner.StageRunner.run)
    cine = ev.get("cine") or {}
    if cine and "calid_inflated" in trained:
        stages += cine_stages(cine, ckpt, common, steps, eval_dir, figure_dir)
    for factor in ev["factors"]:
        spatial = ["--checkpoint", ckpt["calid_spatial"]] if "calid_spatial" in trained else []
        needs = (*(("calid_spatial",) if spatial else ()), *seg_needs)
        methods = ",".join(ev["methods"])
        stages.append(
            evaluate(f"eval_spatial_x{factor}", [*spatial, *seg, *steps], factor, methods, frames, needs)
        )
    ablation = ev.get("steps_ablation") or {}
    if ablation and "calid_spatial" in trained:
        factor = int(ablation.get("factor", 4))
        for count in ablation.get("steps", []):
            models = ["--checkpoint", ckpt["calid_spatial"], *seg, "--steps", str(count)]
            name = f"eval_steps{count}_x{factor}"
            stages.append(evaluate(name, models, factor, "calid", frames, ("calid_spatial", *seg_needs)))
    concat = ev.get("injection_ablation") or {}
    if concat and "calid_concat" in trained:
        factor = int(concat.get("factor", 4))
        models = ["--checkpoint", ckpt["calid_concat"], *seg, *steps]
        methods = ",".join(concat.get("methods", ["calid_mean", "calid"]))
        needs = ("calid_concat", *seg_needs)
        stages.append(evaluate(f"eval_concat_x{factor}", models, factor, methods, frames, needs))
    pixel = ev.get("pixel") or {}
    if pixel and "pixel_spatial" in trained:
        for factor in pixel.get("factors", ev["factors"]):
            models = ["--pixel-checkpoint", ckpt["pixel_spatial"], *seg, *steps]
            pixel_frames = str(pixel.get("frames", "ed_es"))
            needs = ("pixel_spatial", *seg_needs)
            stages.append(evaluate(f"eval_pixel_x{factor}", models, factor, "pixel", pixel_frames, needs))
    figures = profile.figures
    if figures and "calid_spatial" in trained:
        factor = int(figures.get("factor", 4))
        argv = ["figures", *data, "--split", str(ev.get("split", "test")), *steps]
        argv += ["--checkpoint", ckpt["calid_spatial"], "--factor", str(factor)]
        argv += ["--samples", str(figures.get("samples", 4)), "--out", str(figure_dir)]
        methods = list(figures.get("methods", ["calid", "linear", "nearest"]))
        needs: tuple[str, ...] = ("calid_spatial",)
        if "pixel" in methods and "pixel_spatial" in trained:
            argv += ["--pixel-checkpoint", ckpt["pixel_spatial"]]
            needs += ("pixel_spatial",)
        else:
            methods = [m for m in methods if m != "pixel"]
        argv += ["--methods", ",".join(methods)]
        names = ("comparison", "through_plane", "uncertainty")
        outputs = tuple(figure_dir / f"{n}_x{factor}.png" for n in names)
        stages.append(Stage(f"figures_x{factor}", tuple(argv), needs, outputs))
    return stages


CINE_METHODS = ("calid_inflated", "calid", "linear")
"""The 2D+T methods (and those of the intensity-over-time figure) when the profile names none."""


def cine_stages(
    cine: dict[str, Any],
    ckpt: dict[str, str],
    common: list[str],
    steps: list[str],
    eval_dir: Path,
    figure_dir: Path,
) -> list[Stage]:
    """The 2D+T evaluation as two ``calid evaluate-cine`` stages on the same cines, scored alike.

    ``eval_cine_inflated_x<k>`` runs the inflated model's methods and those the intensity-over-time figure
    compares (``figure_methods``) and draws the figure; it waits for ``calid_inflated``. ``eval_cine_x<k>``
    runs the remaining frame-by-frame methods, which need only ``calid_spatial``, so they run while the
    inflated model trains instead of after it (the table merges both CSVs into one section). Without a
    trained ``calid_spatial`` every method goes to the first stage, which skips those it has no model for.
    """
    factor = int(cine.get("factor", 4))
    methods = list(cine.get("methods", CINE_METHODS))
    figure_methods = list(cine.get("figure_methods", CINE_METHODS))
    has_spatial = "calid_spatial" in ckpt
    frame_by_frame = [
        m
        for m in methods
        if has_spatial
        and m not in figure_methods
        and getattr(METHODS.get(m), "needs", None) != "inflated_checkpoint"
    ]
    inflated = [m for m in methods if m not in frame_by_frame]
    steps = ["--steps", str(cine["steps"])] if cine.get("steps") else steps
    args = [*common, *steps, "--factor", str(factor), "--frames", str(cine.get("frames", 8))]
    spatial = ["--checkpoint", ckpt["calid_spatial"]] if has_spatial else []
    out = eval_dir / f"cine_inflated_x{factor}.csv"
    figure = figure_dir / f"intensity_over_time_x{factor}.png"
    argv = ["evaluate-cine", *args, "--inflated-checkpoint", ckpt["calid_inflated"], *spatial]
    argv += ["--methods", ",".join(inflated), "--out", str(out), "--figure", str(figure)]
    argv += ["--figure-methods", ",".join(figure_methods)]
    needs = ("calid_inflated", *(("calid_spatial",) if has_spatial else ()))
    stages = [Stage(f"eval_cine_inflated_x{factor}", tuple(argv), needs, (out, figure))]
    if frame_by_frame:
        out = eval_dir / f"cine_x{factor}.csv"
        argv = ["evaluate-cine", *args, *spatial, "--methods", ",".join(frame_by_frame), "--out", str(out)]
        stages.append(Stage(f"eval_cine_x{factor}", tuple(argv), ("calid_spatial",), (out,)))
    return stages


def data_stage(profile: Profile) -> Stage:
    """Generate the phantom (when the data config asks for it) and fill the prepared-subject cache once."""
    argv = ("--data", profile.data, "--jobs", str(profile.jobs))
    return Stage("data", argv, module="calid_lightning.reproduce.prepare", inputs=(Path(profile.data),))


def plan(profile: Profile, run_root: Path, results: Path) -> list[Stage]:
    """All stages of the profile: data, then training (needing data), evaluation and figures."""
    data = data_stage(profile)
    train = [dataclasses.replace(s, needs=("data", *s.needs)) for s in training_stages(profile, run_root)]
    return [data, *train, *evaluation_stages(profile, run_root, results)]
