"""``calid sweep``: sweep YAMLs valid for W&B, W&B's command macros, the offline search and its trials.csv."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sweeps import SweepConfig

from calid_lightning.cli import run_lightning_cli
from calid_lightning.sweep import (
    SweepConfigError,
    expand_command,
    load_sweep_config,
    main,
    run_offline,
    run_online,
)

REPO = Path(__file__).resolve().parents[1]
SWEEPS = sorted((REPO / "experiments" / "sweeps").glob("*.yaml"))

# A stand-in for `calid fit`: writes the CSVLogger layout with val/psnr = 10 * x (fails for x < 0).
FAKE_FIT = """
import sys
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
x = float(args["x"])
if x < 0:
    sys.exit("negative x")
from pathlib import Path
folder = Path(args["trainer.default_root_dir"]) / "csv" / "version_0"
folder.mkdir(parents=True)
(folder / "metrics.csv").write_text(f"step,val/psnr\\n1,{x}\\n2,{10 * x}\\n")
"""


@pytest.fixture(autouse=True)
def offline_wandb(tmp_path: Path, monkeypatch) -> None:
    """Never touch the network: W&B offline, its files in the test's folder."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))


def test_sweep_files_exist() -> None:
    assert {path.stem for path in SWEEPS} >= {"vae", "calid_spatial"}


def _print_config(command: list[str], capsys) -> dict:
    """The config `calid fit` resolves for ``command`` (run from the repository, as the sweep agent does)."""
    cwd = Path.cwd()
    os.chdir(REPO)
    try:
        with pytest.raises(SystemExit) as done:
            run_lightning_cli([*command[command.index("fit") :], "--print_config"])
    finally:
        os.chdir(cwd)
    assert done.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_yaml_is_valid_wandb_config_and_its_overrides_resolve(path: Path, capsys) -> None:
    """W&B's schema accepts the file, and every swept value reaches the config `calid fit` resolves."""
    config = load_sweep_config(path)
    assert SweepConfig(config)["metric"]["name"].startswith("val/")
    params = {
        name: spec["values"][-1] if "values" in spec else spec["max"]
        for name, spec in config["parameters"].items()
    }
    command = expand_command(config, params)
    assert command[command.index("fit") - 2 : command.index("fit")] == ["-m", "calid_lightning.cli"]
    for i, arg in enumerate(command):
        if arg == "-c":
            assert (REPO / command[i + 1]).is_file(), command[i + 1]
    resolved = _print_config(command, capsys)
    for name, value in params.items():
        node = resolved
        for key in name.split("."):
            node = node[key]
        assert node == value, name


def test_invalid_sweep_file_names_file_and_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: sideways\nmetric: {name: val/psnr}\nparameters: {x: {values: [1]}}\n")
    with pytest.raises(SweepConfigError, match=r"bad\.yaml.*\n.*sideways"):
        load_sweep_config(bad)
    no_metric = tmp_path / "no_metric.yaml"
    no_metric.write_text("method: grid\nparameters: {x: {values: [1]}}\n")
    with pytest.raises(SweepConfigError, match=r"metric\.name"):
        load_sweep_config(no_metric)
    assert main([str(tmp_path / "missing.yaml")]) == 2


def test_expand_command_fills_wandb_macros(monkeypatch) -> None:
    monkeypatch.setenv("CALID_TEST_CFG", "experiments/vae.yaml")
    config = {
        "program": "train.py",
        "command": [
            "${env}",
            "${interpreter}",
            "${program}",
            "-c",
            "${envvar:CALID_TEST_CFG}",
            "${args_no_hyphens}",
        ],
    }
    command = expand_command(config, {"model.lr": 0.1, "flag": True}, ["--trainer.max_steps", "2"])
    assert command[1:] == [
        sys.executable,
        "train.py",
        "-c",
        "experiments/vae.yaml",
        "model.lr=0.1",
        "flag=True",
        "--trainer.max_steps",
        "2",
    ]
    assert expand_command({"program": "p.py"}, {"a": 1})[-2:] == ["p.py", "--a=1"]  # W&B's default command
    with pytest.raises(SweepConfigError, match="unknown macro"):
        expand_command({"command": ["${nonsense}"]}, {})


def _fake_sweep(tmp_path: Path, values: list[float], method: str = "grid") -> dict:
    script = tmp_path / "fake_fit.py"
    script.write_text(FAKE_FIT)
    return {
        "method": method,
        "metric": {"name": "val/psnr", "goal": "maximize"},
        "parameters": {"x": {"values": values}},
        "command": ["${interpreter}", str(script), "${args}"],
    }


def test_offline_grid_runs_every_point_once_and_records_metric_and_failures(tmp_path: Path) -> None:
    config = _fake_sweep(tmp_path, [0.5, -1.0, 2.0])
    results = run_offline(config, "fake", None, tmp_path / "sweeps")
    assert sorted(r.params["x"] for r in results) == [-1.0, 0.5, 2.0]
    with open(tmp_path / "sweeps" / "fake" / "trials.csv", newline="") as handle:
        rows = {float(row["x"]): row for row in csv.DictReader(handle)}
    assert (
        rows[0.5]["status"] == "finished" and float(rows[0.5]["metric"]) == 5.0
    )  # last value, not the first
    assert rows[2.0]["status"] == "finished" and float(rows[2.0]["metric"]) == 20.0
    assert rows[-1.0]["status"] == "failed" and rows[-1.0]["metric"] == ""
    assert "negative x" in (Path(rows[-1.0]["folder"]) / "output.log").read_text()


def test_offline_random_needs_count_and_stops_at_it(tmp_path: Path) -> None:
    config = _fake_sweep(tmp_path, [1.0, 2.0, 3.0], method="random")
    with pytest.raises(SweepConfigError, match="--count"):
        run_offline(config, "fake", None, tmp_path / "sweeps")
    results = run_offline(config, "fake", 2, tmp_path / "sweeps")
    assert len(results) == 2 and all(r.status == "finished" for r in results)
    assert [r.metric for r in results] == [10 * r.params["x"] for r in results]
    again = run_offline(config, "fake", 1, tmp_path / "sweeps")  # a re-run: new folders, old trials kept
    assert [r.name for r in again] == ["trial-002"] and all(r.folder.is_dir() for r in results)


@pytest.mark.slow
def test_two_trial_offline_vae_sweep_end_to_end(tmp_path: Path) -> None:
    """`calid sweep experiments/sweeps/vae.yaml --count 2` on a tiny VAE and phantom: 2 rows with metrics."""
    out = tmp_path / "sweeps"
    tiny = [
        f"--data.init_args.root={tmp_path / 'phantom'}",
        "--data.init_args.phantom.subjects=3",
        "--data.init_args.cache_dir=null",
        "--data.init_args.samples_per_epoch=16",
        "--data.init_args.batch_size=2",
        "--model.init_args.channels=[8,16,16]",
        "--model.init_args.norm_num_groups=8",
        "--model.init_args.scale_factor_batches=1",
        "--trainer.max_steps=2",
        "--trainer.val_check_interval=2",
        "--trainer.limit_val_batches=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WANDB_MODE")  # the detection, not the test, chooses offline (the fixture removed the API key)
    env["NETRC"] = str(tmp_path / "no-netrc")
    command = [
        sys.executable,
        "-m",
        "calid_lightning.cli",
        "sweep",
        "experiments/sweeps/vae.yaml",
        "--count",
        "2",
    ]
    done = subprocess.run(
        [*command, "--out", str(out), "--extra", *tiny],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "offline" in done.stdout
    with open(out / "vae-kl-latent" / "trials.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["trial"] for row in rows] == ["trial-000", "trial-001"]
    for row in rows:
        assert row["status"] == "finished" and math.isfinite(float(row["metric"]))
        assert 1e-8 <= float(row["model.init_args.kl_weight"]) <= 1e-4
        trial = Path(row["folder"])
        resolved = yaml.safe_load((trial / "config.yaml").read_text())
        assert resolved["model"]["init_args"]["kl_weight"] == float(row["model.init_args.kl_weight"])
        assert (trial / "checkpoints" / "last.ckpt").is_file()
        assert list((trial / "wandb").glob("offline-run-*/run-*.wandb"))


def test_online_agent_jobs_run_in_their_own_folders_and_append_rows(tmp_path: Path, monkeypatch) -> None:
    """The W&B path with the server stubbed: each agent job reads its parameters where the agent puts them."""
    import wandb

    config = _fake_sweep(tmp_path, [1.0, 3.0])
    created = {}

    def fake_sweep(sweep_config, project=None, entity=None):
        created.update(config=sweep_config, project=project)
        return "sweep01"

    def fake_agent(sweep_id, function, project=None, entity=None, count=None):
        assert sweep_id == "sweep01" and count == 2
        for run_id, x in (("run-a", 1.0), ("run-b", 3.0)):
            params = tmp_path / f"config-{run_id}.yaml"
            params.write_text(yaml.safe_dump({"wandb_version": 1, "x": {"value": x}}))
            monkeypatch.setenv("WANDB_SWEEP_PARAM_PATH", str(params))
            monkeypatch.setenv("WANDB_RUN_ID", run_id)
            function()

    monkeypatch.setattr(wandb, "sweep", fake_sweep)
    monkeypatch.setattr(wandb, "agent", fake_agent)
    results = run_online(config, "fake", 2, tmp_path / "sweeps", project="p")
    assert created["project"] == "p" and [r.metric for r in results] == [10.0, 30.0]
    with open(tmp_path / "sweeps" / "fake" / "trials.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["trial"], float(row["metric"])) for row in rows] == [("run-a", 10.0), ("run-b", 30.0)]
    assert Path(rows[1]["folder"]) == tmp_path / "sweeps" / "fake" / "run-b"
