"""Experiment configs compose: ``defaults`` lists expanded (base, then the file, then later -c files and
overrides; later wins), one-line errors for a bad default, and every experiment's names from its ``run``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from calid_lightning.cli import main, run_lightning_cli
from calid_lightning.experiment_config import (
    ConfigError,
    compose,
    composed_files,
    expand_config_args,
    merge_configs,
    resolve_all,
)

REPO = Path(__file__).resolve().parents[1]
STAGES = ("vae", "segmenter", "calid_spatial", "calid_inflated", "pixel_spatial")
CHECKPOINT_NAMES = {
    "vae": "vae",
    "segmenter": "segmenter",
    "calid_spatial": "calid-spatial",
    "calid_inflated": "calid-inflated",
    "pixel_spatial": "pixel-spatial",
}
"""The checkpoint file prefixes users and tests know (``<prefix>-step=N.ckpt``)."""


def write(path: Path, content: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def checkpoint_args(callbacks: list[dict]) -> list[dict]:
    """The init_args of the checkpoint callbacks (those with a ``dirpath``)."""
    return [c["init_args"] for c in callbacks if "dirpath" in (c.get("init_args") or {})]


def print_config(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    """The config `calid fit` resolves for ``args``."""
    with pytest.raises(SystemExit) as done:
        run_lightning_cli(["fit", *args, "--print_config"])
    assert done.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_defaults_compose_base_then_file_then_later_files(tmp_path: Path) -> None:
    base = write(tmp_path / "shared" / "base.yaml", {"a": 1, "b": {"x": 1, "y": [1, 2]}, "c": "base"})
    write(tmp_path / "shared" / "more.yaml", {"defaults": ["base.yaml"], "c": "more", "d": True})
    stage = write(
        tmp_path / "stage.yaml",
        {"defaults": ["shared/more.yaml"], "b": {"y": [3]}, "e": "${b.x}"},
    )
    assert compose(stage) == {"a": 1, "b": {"x": 1, "y": [3]}, "c": "more", "d": True, "e": "${b.x}"}
    assert composed_files(stage) == [base, tmp_path / "shared" / "more.yaml", stage]
    override = write(tmp_path / "override.yaml", {"b": {"x": 5}, "c": "override"})
    merged = merge_configs([stage, override])
    assert merged == {"a": 1, "b": {"x": 5, "y": [3]}, "c": "override", "d": True, "e": "${b.x}"}
    assert resolve_all(merged)["e"] == 5  # interpolation after every file is merged


def test_defaults_compose_under_calid_fit_and_overrides_win(tmp_path: Path, capsys) -> None:
    base = {"trainer": {"max_steps": 7, "log_every_n_steps": 3, "default_root_dir": "${run.stage}/root"}}
    write(tmp_path / "base.yaml", {"run": {"stage": "base"}, **base})
    stage = write(
        tmp_path / "stage.yaml",
        {
            "defaults": ["base.yaml"],
            "run": {"stage": "mine"},
            "trainer": {"max_steps": 9},
            "model": {"class_path": "lightning.pytorch.demos.boring_classes.BoringModel"},
        },
    )
    data = str(REPO / "data_modules" / "phantom.yaml")
    config = print_config(["-c", str(stage), "-c", data, "--trainer.log_every_n_steps=4"], capsys)
    assert (config["trainer"]["max_steps"], config["trainer"]["log_every_n_steps"]) == (9, 4)
    assert config["trainer"]["default_root_dir"] == "mine/root" and "defaults" not in config
    config = print_config([f"--config={stage}", "-c", data, "--run.stage=other"], capsys)
    assert config["trainer"]["default_root_dir"] == "other/root"


def test_missing_or_bad_default_is_a_one_line_error_naming_the_file(tmp_path: Path, capsys) -> None:
    stage = write(tmp_path / "stage.yaml", {"defaults": ["shared/nope.yaml"], "trainer": {"max_steps": 1}})
    with pytest.raises(ConfigError, match=r"stage\.yaml: defaults entry 'shared/nope\.yaml': no such file"):
        compose(stage)
    assert main(["fit", "-c", str(stage), "--print_config"]) == 1
    message = capsys.readouterr().err.strip().splitlines()
    assert message[0] == f"calid: error: {stage}: defaults entry 'shared/nope.yaml': no such file " + str(
        tmp_path / "shared" / "nope.yaml"
    )
    write(tmp_path / "a.yaml", {"defaults": ["b.yaml"]})
    write(tmp_path / "b.yaml", {"defaults": ["a.yaml"]})
    with pytest.raises(ConfigError, match="defaults include themselves"):
        compose(tmp_path / "a.yaml")
    write(tmp_path / "odd.yaml", {"defaults": {"base": "x.yaml"}})
    with pytest.raises(ConfigError, match=r"odd\.yaml: defaults must be a list of YAML files"):
        compose(tmp_path / "odd.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"list\.yaml: expected a mapping"):
        compose(tmp_path / "list.yaml")


def test_expand_config_args_replaces_only_files_with_defaults(tmp_path: Path) -> None:
    plain = write(tmp_path / "plain.yaml", {"a": 1})
    stage = write(tmp_path / "stage.yaml", {"defaults": ["plain.yaml"], "b": 2})
    args = ["fit", "-c", str(plain), "--config", str(stage), f"--config={stage}", "--a=3", "-c", "{a: 4}"]
    expanded = expand_config_args(args)
    assert expanded[:3] == ["fit", "-c", str(plain)] and expanded[-3:] == ["--a=3", "-c", "{a: 4}"]
    assert yaml.safe_load(expanded[4]) == {"a": 1, "b": 2}
    assert yaml.safe_load(expanded[5].removeprefix("--config=")) == {"a": 1, "b": 2}


@pytest.mark.parametrize("profile", ["quick", "paper"])
@pytest.mark.parametrize("stage", STAGES)
def test_every_name_of_a_run_comes_from_its_run_group(stage: str, profile: str) -> None:
    """Root runs/<stage>/<profile>, W&B name/group/job type, checkpoint names; every path under the root."""
    configs = [REPO / "experiments" / f"{stage}.yaml", REPO / "data_modules" / "phantom.yaml"]
    if profile == "paper":
        configs.append(REPO / "experiments" / "profiles" / "paper" / f"{stage}.yaml")
    config = resolve_all(merge_configs(configs))
    assert config["run"]["stage"] == stage and config["run"]["profile"] == profile
    root = config["trainer"]["default_root_dir"]
    assert root == f"runs/{stage}/{profile}"
    loggers = config["trainer"]["logger"]
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        init = logger["init_args"]
        assert init["save_dir"] == root
        if logger["class_path"].endswith("WandbLogger"):
            assert (init["name"], init["group"], init["job_type"]) == (f"{stage}-{profile}", stage, profile)
    checkpoints = checkpoint_args(config["trainer"]["callbacks"])
    assert {c["dirpath"] for c in checkpoints} == {f"{root}/checkpoints"}
    prefix = CHECKPOINT_NAMES[stage]
    assert {c["filename"] for c in checkpoints} <= {
        f"{prefix}-{kind}{{step}}" for kind in ("", "best-", "milestone-")
    }


def test_default_root_dir_override_moves_every_path(capsys) -> None:
    """The paper profile's milestones too: nothing keeps the configs' runs/calid_spatial/paper."""
    configs = ["-c", "experiments/calid_spatial.yaml", "-c", "data_modules/phantom.yaml"]
    configs += ["-c", "experiments/profiles/paper/calid_spatial.yaml", "--trainer.default_root_dir=/x/D"]
    cwd = Path.cwd()
    os.chdir(REPO)
    try:
        trainer = print_config(configs, capsys)["trainer"]
    finally:
        os.chdir(cwd)
    assert [lg["init_args"]["save_dir"] for lg in trainer["logger"]] == ["/x/D", "/x/D"]
    assert {c["dirpath"] for c in checkpoint_args(trainer["callbacks"])} == {"/x/D/checkpoints"}


def test_resume_path_reads_the_composed_root(tmp_path: Path) -> None:
    """scripts/slurm/train.sbatch: `resume-path -c experiments/X.yaml ...` finds runs/X/<profile>."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    args = ["-c", "experiments/segmenter.yaml", "-c", "experiments/profiles/paper/segmenter.yaml"]
    command = [sys.executable, "-m", "calid_lightning.fault_tolerance", "resume-path", *args]
    root = tmp_path / "runs" / "segmenter" / "paper"
    (root / "checkpoints").mkdir(parents=True)
    (root / "checkpoints" / "last.ckpt").write_bytes(b"x")
    for folder in ("experiments", "data_modules"):
        (tmp_path / folder).symlink_to(REPO / folder)
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "runs/segmenter/paper/checkpoints/last.ckpt"
