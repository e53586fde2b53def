"""The reproduce pipeline: profile checks, stage planning, the cached resumable runner, the results table."""

from __future__ import annotations

import csv
import math
import textwrap
from pathlib import Path

import pytest
import yaml

from calid_lightning.experiment_config import merge_configs
from calid_lightning.reproduce.profile import ProfileError, load_profile
from calid_lightning.reproduce.runner import StageRunner, stage_keys, topological_order
from calid_lightning.reproduce.stages import (
    Stage,
    cine_stages,
    last_checkpoint,
    plan,
    training_overrides,
    training_stages,
)
from calid_lightning.reproduce.table import build_table, ci95_half_width, write_table

REPO = Path(__file__).resolve().parents[2]

FAKE_STAGE = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    out, counter = Path(sys.argv[1]), Path(sys.argv[2])
    counter.parent.mkdir(parents=True, exist_ok=True)
    with counter.open("a") as handle:
        handle.write(" ".join(sys.argv[3:]) + "\\n")
    if "--fail" in sys.argv:
        print("something broke in this stage")
        raise SystemExit(3)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("ok")
    """
)


@pytest.fixture
def fake_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module ``fake_stage`` on the child processes' path: writes its output, logs each call."""
    (tmp_path / "fake_stage.py").write_text(FAKE_STAGE)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    return "fake_stage"


def stage(tmp_path: Path, name: str, needs: tuple[str, ...] = (), *extra: str, **kwargs) -> Stage:
    out = tmp_path / "out" / f"{name}.txt"
    argv = (str(out), str(tmp_path / "calls" / f"{name}.log"), *extra)
    return Stage(name, argv, needs, (out,), module="fake_stage", **kwargs)


def calls(tmp_path: Path, name: str) -> list[str]:
    path = tmp_path / "calls" / f"{name}.log"
    return path.read_text().splitlines() if path.exists() else []


def quiet_runner(tmp_path: Path, jobs: int = 2) -> tuple[StageRunner, list[str]]:
    lines: list[str] = []
    return StageRunner(tmp_path / "state", jobs=jobs, heartbeat=1e9, echo=lines.append), lines


def test_topological_order_and_bad_graphs(tmp_path: Path) -> None:
    a, b, c = stage(tmp_path, "a"), stage(tmp_path, "b", ("c",)), stage(tmp_path, "c", ("a",))
    assert [s.name for s in topological_order([b, c, a])] == ["a", "c", "b"]
    with pytest.raises(ValueError, match="needs \\['zzz'\\]"):
        topological_order([stage(tmp_path, "x", ("zzz",))])
    with pytest.raises(ValueError, match="cycle"):
        topological_order([stage(tmp_path, "x", ("y",)), stage(tmp_path, "y", ("x",))])
    with pytest.raises(ValueError, match="two stages"):
        topological_order([a, a])


def test_keys_follow_inputs_and_upstream(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("a: 1")
    stages = [stage(tmp_path, "a", inputs=(config,)), stage(tmp_path, "b", ("a",))]
    before = stage_keys(stages)
    config.write_text("a: 2")
    after = stage_keys(stages)
    assert before["a"] != after["a"] and before["b"] != after["b"]  # b follows from a
    assert stage_keys(stages) == after


def test_runner_caches_and_reruns_what_changed(tmp_path: Path, fake_module: str) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("steps: 1")
    stages = [
        stage(tmp_path, "a", inputs=(config,)),
        stage(tmp_path, "b", ("a",)),
        stage(tmp_path, "c"),
    ]
    runner, _ = quiet_runner(tmp_path)
    assert runner.run(stages)
    assert all(len(calls(tmp_path, n)) == 1 for n in "abc")

    runner, lines = quiet_runner(tmp_path)
    assert runner.run(stages)
    assert all(len(calls(tmp_path, n)) == 1 for n in "abc")  # nothing ran again
    assert sorted(runner.cached) == ["a", "b", "c"]
    assert sum(line.startswith("skip") for line in lines) == 3

    config.write_text("steps: 2")  # a's config changed: a and b run, c stays
    runner, _ = quiet_runner(tmp_path)
    assert runner.run(stages)
    assert [len(calls(tmp_path, n)) for n in "abc"] == [2, 2, 1]

    runner, _ = quiet_runner(tmp_path)
    assert runner.run(stages, force=["a"])  # forced: a and what needs it
    assert [len(calls(tmp_path, n)) for n in "abc"] == [3, 3, 1]

    (tmp_path / "out" / "c.txt").unlink()  # an output gone: the stage is not finished
    runner, _ = quiet_runner(tmp_path)
    assert runner.run(stages)
    assert len(calls(tmp_path, "c")) == 2


def test_ready_stages_start_in_plan_order_not_level_order(tmp_path: Path, fake_module: str) -> None:
    """With one job, a stage listed first starts as soon as its needs are met, before stages of an earlier
    topological level listed after it (the plan puts its longest chain first)."""
    stages = [stage(tmp_path, "train"), stage(tmp_path, "long", ("train",)), stage(tmp_path, "short")]
    runner, lines = quiet_runner(tmp_path, jobs=1)
    assert runner.run(stages)
    assert [line.split()[1] for line in lines if line.startswith("done")] == ["train", "long", "short"]


def test_runner_stops_after_a_failure_and_shows_the_log(tmp_path: Path, fake_module: str) -> None:
    stages = [stage(tmp_path, "bad", (), "--fail"), stage(tmp_path, "after", ("bad",))]
    runner, lines = quiet_runner(tmp_path, jobs=1)
    assert not runner.run(stages)
    assert calls(tmp_path, "after") == []  # never started
    text = "\n".join(lines)
    assert "FAIL  bad (exit 3" in text and "something broke in this stage" in text
    assert str(runner.log_path("bad")) in text
    assert not (tmp_path / "state" / "stamps" / "bad.json").exists()


def test_training_stage_resumes_or_starts_clean(tmp_path: Path, fake_module: str) -> None:
    run_dir = tmp_path / "runs" / "vae"
    train = stage(tmp_path, "vae", run_dir=run_dir)
    key = stage_keys([train])["vae"]
    checkpoint = last_checkpoint(run_dir)
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_text("weights")
    started = tmp_path / "state" / "stamps" / "vae.started"
    started.parent.mkdir(parents=True)
    started.write_text(key)  # interrupted earlier with the same command: resume
    runner, _ = quiet_runner(tmp_path)
    assert runner.run([train])
    assert calls(tmp_path, "vae")[-1] == f"--ckpt_path {checkpoint}"

    (tmp_path / "state" / "stamps" / "vae.json").unlink()
    started.write_text(
        "another-key"
    )  # started with other settings: remove what calid fit wrote, start afresh
    written = [run_dir / "csv" / "version_0" / "metrics.csv", run_dir / "wandb" / "offline-run-1" / "x.wandb"]
    written += [run_dir / "config.yaml", run_dir / "checkpoints" / "vae-step=4.ckpt"]
    for path in written:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("from the earlier run")
    notes = run_dir / "notes.txt"
    notes.write_text("a user's file")
    runner, lines = quiet_runner(tmp_path)
    assert runner.run([train])
    assert calls(tmp_path, "vae")[-1] == ""
    assert not checkpoint.exists() and not any(p.exists() for p in written)
    assert sorted(p.name for p in run_dir.iterdir()) == ["notes.txt"] and notes.read_text() == "a user's file"
    assert f"vae: kept 1 file(s) not from calid in {run_dir}" in "\n".join(lines)

    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.write_text("weights of the finished run")
    runner, _ = quiet_runner(tmp_path)
    assert runner.run([train], force=["vae"])  # a forced finished stage trains afresh, not from its last.ckpt
    assert calls(tmp_path, "vae")[-1] == "" and not checkpoint.exists()


def test_training_overrides_set_the_root_and_name_the_wandb_run(tmp_path: Path) -> None:
    merged = {
        "trainer": {"default_root_dir": "runs/${run.stage}/${run.profile}"},
        "model": {"init_args": {"vae_checkpoint": "runs/vae/quick/checkpoints/last.ckpt", "lr": 1.0}},
    }
    run_dir = tmp_path / "calid_spatial"
    out = training_overrides(merged, "calid_spatial", run_dir, "quick", tmp_path / "vae.ckpt")
    assert out["trainer"] == {"default_root_dir": str(run_dir)}  # logger and checkpoint paths derive from it
    assert out["run"] == {"stage": "calid_spatial", "profile": "table-quick"}  # W&B calid_spatial-table-quick
    assert out["model"] == {"init_args": {"vae_checkpoint": str(tmp_path / "vae.ckpt")}}
    no_vae = training_overrides({"trainer": {"logger": False}}, "segmenter", run_dir, "quick", None)
    assert no_vae == {
        "trainer": {"default_root_dir": str(run_dir)},
        "run": {"stage": "segmenter", "profile": "table-quick"},
    }
    inflated = {
        "model": {"init_args": {"spatial_checkpoint": "runs/calid_spatial/quick/checkpoints/last.ckpt"}}
    }
    spatial = tmp_path / "calid_spatial" / "last.ckpt"
    out = training_overrides(inflated, "calid_inflated", run_dir, "quick", None, spatial)
    assert out["model"] == {"init_args": {"spatial_checkpoint": str(spatial)}}


def test_training_stage_key_follows_the_composed_configs_not_their_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A comment or a setting moved into a shared file keeps the stage cached; a changed value does not."""
    experiments = tmp_path / "experiments"
    (experiments / "shared").mkdir(parents=True)
    (experiments / "shared" / "base.yaml").write_text("trainer:\n  max_steps: 4\n  log_every_n_steps: 2\n")
    config = experiments / "vae.yaml"
    config.write_text("defaults: [shared/base.yaml]\nrun: {stage: vae}\n")
    data = tmp_path / "data.yaml"
    data.write_text("data: {init_args: {layout: phantom}}\n")
    profile = tmp_path / "profile.yaml"
    profile.write_text(
        f"name: q\ndata: {data}\nevaluate: {{factors: [4]}}\ntrain: {{vae: {{config: {config}}}}}\n"
    )
    monkeypatch.chdir(tmp_path)

    def key() -> str:
        return stage_keys(training_stages(load_profile(profile), tmp_path / "runs"))["vae"]

    before = key()
    config.write_text("# the VAE\ndefaults: [shared/base.yaml]\nrun:\n  stage: vae  # its root\n")
    assert key() == before
    (experiments / "shared" / "base.yaml").write_text("trainer: {max_steps: 4}\n")
    config.write_text("defaults: [shared/base.yaml]\nrun: {stage: vae}\ntrainer: {log_every_n_steps: 2}\n")
    assert key() == before
    (experiments / "shared" / "base.yaml").write_text("trainer: {max_steps: 8}\n")
    assert key() != before


def test_quick_profile_plans_every_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    profile = load_profile("experiments/reproduce/quick.yaml")
    planned = plan(profile, tmp_path / "runs", tmp_path / "results")
    stages = {s.name: s for s in planned}
    order = [s.name for s in planned]
    assert order.index("calid_inflated") < order.index("calid_concat"), (
        "of two ready stages the first listed starts: the 2D+T model (critical path) before the ablation"
    )
    assert {
        "data",
        "vae",
        "segmenter",
        "calid_spatial",
        "calid_concat",
        "calid_inflated",
        "pixel_spatial",
    } <= set(stages)
    assert {"eval_spatial_x2", "eval_spatial_x4", "eval_pixel_x4", "eval_cine_x4", "figures_x4"} <= set(
        stages
    )
    assert "eval_cine_inflated_x4" in stages
    assert set(stages["calid_spatial"].needs) == {"data", "vae"}
    assert set(stages["calid_inflated"].needs) == {"data", "calid_spatial"}
    assert set(stages["eval_cine_inflated_x4"].needs) == {"calid_inflated", "calid_spatial"}
    argv = stages["eval_cine_inflated_x4"].argv
    inflated_ckpt = str(last_checkpoint(tmp_path / "runs" / "calid_inflated"))
    assert argv[argv.index("--inflated-checkpoint") + 1] == inflated_ckpt
    inflated_methods = argv[argv.index("--methods") + 1].split(",")
    assert {"calid_inflated", "calid_inflated_shared", "calid", "linear"} <= set(inflated_methods)
    assert set(stages["eval_cine_x4"].needs) == {"calid_spatial"}, "frame-by-frame cines need no 2D+T model"
    argv = stages["eval_cine_x4"].argv
    assert "--inflated-checkpoint" not in argv and "--figure" not in argv
    frame_by_frame = argv[argv.index("--methods") + 1].split(",")
    assert frame_by_frame and not set(frame_by_frame) & set(inflated_methods), "each method runs once"
    cine = profile.evaluate["cine"]["methods"]
    assert sorted(frame_by_frame + inflated_methods) == sorted(cine), "every cine method runs"
    generated = yaml.safe_load((tmp_path / "runs" / "configs" / "calid_inflated.yaml").read_text())
    assert generated["model"]["init_args"]["spatial_checkpoint"] == str(
        last_checkpoint(tmp_path / "runs" / "calid_spatial")
    )
    assert set(stages["eval_spatial_x4"].needs) == {"calid_spatial", "segmenter"}
    generated = yaml.safe_load((tmp_path / "runs" / "configs" / "calid_spatial.yaml").read_text())
    assert generated["model"]["init_args"]["vae_checkpoint"] == str(
        last_checkpoint(tmp_path / "runs" / "vae")
    )
    argv = stages["calid_spatial"].argv
    assert argv[:3] == ("fit", "-c", "experiments/calid_spatial.yaml") and "--trainer.max_steps=700" in argv
    assert stages["eval_spatial_x4"].outputs == (tmp_path / "results" / "eval" / "spatial_x4.csv",)
    # The injection ablation: calid_spatial's config and budget without tau_theta2, on the same VAE.
    assert set(stages["calid_concat"].needs) == {"data", "vae"}
    argv = stages["calid_concat"].argv
    assert argv[:3] == ("fit", "-c", "experiments/calid_spatial.yaml")
    assert {"--trainer.max_steps=700", "--model.init_args.injection=false"} <= set(argv)
    generated = yaml.safe_load((tmp_path / "runs" / "configs" / "calid_concat.yaml").read_text())
    assert generated["model"]["init_args"]["vae_checkpoint"] == str(
        last_checkpoint(tmp_path / "runs" / "vae")
    )
    assert generated["trainer"]["default_root_dir"] == str(tmp_path / "runs" / "calid_concat")
    assert set(stages["eval_concat_x4"].needs) == {"calid_concat", "segmenter"}
    argv = stages["eval_concat_x4"].argv
    assert argv[argv.index("--checkpoint") + 1] == str(last_checkpoint(tmp_path / "runs" / "calid_concat"))
    assert argv[argv.index("--methods") + 1] == "calid_mean,calid"
    assert stages["eval_concat_x4"].outputs == (tmp_path / "results" / "eval" / "concat_x4.csv",)
    # The DDIM-steps rows are segmented too: does a sample nearer the mean (fewer steps) segment better?
    for count in profile.evaluate["steps_ablation"]["steps"]:
        argv = stages[f"eval_steps{count}_x4"].argv
        assert argv[argv.index("--steps") + 1] == str(count)
        assert argv[argv.index("--segmenter") + 1] == str(last_checkpoint(tmp_path / "runs" / "segmenter"))
        assert set(stages[f"eval_steps{count}_x4"].needs) == {"calid_spatial", "segmenter"}
    topological_order(list(stages.values()))


@pytest.mark.parametrize("fast", [True, False])
def test_precision_if_fast_is_resolved_on_the_planning_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fast: bool
) -> None:
    """The quick profile's latent stages train in bf16-mixed only where bf16 is fast; the others keep the
    precision of their config (no precision argument at all)."""
    monkeypatch.chdir(REPO)
    monkeypatch.setattr("calid_lightning.precision.bf16_is_fast", lambda: fast)
    stages = {s.name: s for s in plan(load_profile("experiments/reproduce/quick.yaml"), tmp_path, tmp_path)}
    want = "--trainer.precision=bf16-mixed" if fast else "--trainer.precision=32-true"
    for name in ("vae", "calid_spatial", "calid_concat", "calid_inflated"):
        assert [a for a in stages[name].argv if a.startswith("--trainer.precision")] == [want], name
    for name in ("segmenter", "pixel_spatial"):
        assert not [a for a in stages[name].argv if a.startswith("--trainer.precision")], name


def test_cine_stages_without_a_trained_spatial_model_keep_one_stage() -> None:
    """A profile whose 2D+T model comes without a trained calid_spatial stage: one cine stage, needing only
    calid_inflated, given every method (evaluate-cine skips those it has no model file for)."""
    cine = {"methods": ["calid_inflated", "calid_shared", "linear"]}
    (stage,) = cine_stages(cine, {"calid_inflated": "inflated.ckpt"}, [], [], Path("e"), Path("f"))
    assert stage.needs == ("calid_inflated",) and "--checkpoint" not in stage.argv
    assert stage.argv[stage.argv.index("--methods") + 1] == "calid_inflated,calid_shared,linear"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (
            "name: q\ndata: data_modules/phantom.yaml\nevaluate: {factors: [4]}\ntrain: {gan: {config: x}}",
            "train",
        ),
        (
            "name: q\ndata: data_modules/phantom.yaml\nevaluate: {factors: [4]}\n"
            "train: {vae: {config: experiments/missing.yaml}}",
            "train.vae.config",
        ),
        (
            "name: q\ndata: data_modules/phantom.yaml\nevaluate: {factors: [4]}\n"
            "train: {calid_spatial: {config: experiments/calid_spatial.yaml, needs: [vae]}}",
            "train.calid_spatial.needs",
        ),
        (
            "name: q\ndata: data_modules/phantom.yaml\nevaluate: {factors: [1]}\n"
            "train: {vae: {config: experiments/vae.yaml}}",
            "evaluate.factors",
        ),
        (
            "name: q\ndata: nowhere.yaml\nevaluate: {factors: [4]}\n"
            "train: {vae: {config: experiments/vae.yaml}}",
            "data",
        ),
        (
            "name: q\ndata: data_modules/phantom.yaml\ntrain: {vae: {config: experiments/vae.yaml}}",
            "evaluate",
        ),
        (
            "name: q\ndata: data_modules/phantom.yaml\nevaluate: {factors: [4]}\n"
            "train: {vae: {config: experiments/vae.yaml, precision: bf16}}",
            "train.vae.precision",
        ),
    ],
)
def test_bad_profiles_name_file_and_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, field: str
) -> None:
    monkeypatch.chdir(REPO)
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    assert str(path) in str(info.value) and f"`{field}`" in str(info.value)


def write_subjects(path: Path, rows: list[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def test_table_means_stds_best_and_missing_columns(tmp_path: Path) -> None:
    rows = []
    for subject, (calid, linear) in enumerate([(20.0, 21.0), (22.0, 21.0), (24.0, 21.0)]):
        common = {"subject": f"p{subject}", "factor": 4}
        rows.append(
            common | {"method": "calid", "psnr": calid, "ssim": 0.7, "seconds_per_volume": 1 + subject}
        )
        rows.append(common | {"method": "linear", "psnr": linear, "ssim": 0.6, "seconds_per_volume": 0.01})
        rows.append(common | {"method": "truth", "psnr": "nan", "ssim": "", "seconds_per_volume": 0})
    write_subjects(tmp_path / "eval" / "spatial_x4_subjects.csv", rows)
    cine = [{"subject": "p0", "method": "calid_inflated", "factor": 4, "psnr": 19.0, "temporal_error": 0.05}]
    write_subjects(tmp_path / "eval" / "cine_x4_subjects.csv", cine)
    frame_by_frame = [{"subject": "p0", "method": "calid_shared", "factor": 4, "psnr": 18.0}]
    write_subjects(tmp_path / "eval" / "cine_inflated_x4_subjects.csv", frame_by_frame)
    write_subjects(tmp_path / "eval" / "unrelated_subjects.csv", [{"subject": "x", "method": "y"}])

    text, csv_rows = build_table(tmp_path / "eval", "Test table", ["a note"])
    by_method = {(r["section"], r["method"]): r for r in csv_rows}
    calid = by_method[("slices", "calid")]
    assert calid["psnr"] == pytest.approx(22.0) and calid["psnr_std"] == pytest.approx(2.0)
    assert calid["seconds_per_volume"] == 2  # median
    assert math.isnan(by_method[("slices", "truth")]["psnr"])
    assert by_method[("cine", "calid_inflated")]["temporal_error"] == pytest.approx(0.05)
    assert by_method[("cine", "calid_shared")]["psnr"] == pytest.approx(18.0), "both cine CSVs, one section"
    lines = text.splitlines()
    calid_line = next(line for line in lines if line.startswith("| CaLID, one sample"))
    linear_line = next(line for line in lines if line.startswith("| linear in z"))
    assert "**22.00 ± 2.00**" in calid_line and "21.00 ± 0.00" in linear_line
    assert "**0.700 ± 0.000**" in calid_line and "**" not in linear_line.split("|")[4]
    truth_line = next(line for line in lines if line.startswith("| true slices"))
    assert truth_line.count("-") >= 3 and "**" not in truth_line
    assert "## Gap factor x4" in text and "## 2D+T cines, gap factor x4" in text and "- a note" in text
    assert text.index("## Gap factor x4") < text.index("## 2D+T")

    md, table_csv = write_table(tmp_path / "eval", tmp_path / "out", "Test table")
    assert md.read_text().startswith("# Test table")
    with table_csv.open() as handle:
        assert len(list(csv.DictReader(handle))) == 5
    with pytest.raises(FileNotFoundError, match="no spatial_x"):
        build_table(tmp_path / "empty", "x")


def test_table_pairs_each_method_with_linear_on_the_same_subjects(tmp_path: Path) -> None:
    """The paired table is the mean of per-subject differences, not the difference of means, counts the
    subjects where a method is better (lower is better for HD95; a tie is not), and never pairs rows of
    another file (pixel scores other frames) or a ceiling."""
    spatial, pixel = [], []
    linear_psnr, calid_psnr = [18.0, 22.0, 26.0], [19.0, 22.0, 26.5]
    for s, (lin, cal) in enumerate(zip(linear_psnr, calid_psnr, strict=True)):
        common = {"subject": f"p{s}", "factor": 4, "seconds_per_volume": 1}
        linear_scores = {"psnr": lin, "dice_myo": 0.8, "dice3d_myo": 0.7, "hd95_mean": 5.0}
        spatial.append(common | {"method": "linear"} | linear_scores)
        calid_scores = {"psnr": cal, "dice_myo": 0.79, "dice3d_myo": 0.72 - 0.01 * s, "hd95_mean": 4.0 + s}
        spatial.append(common | {"method": "calid"} | calid_scores)
        spatial.append(common | {"method": "truth", "psnr": "nan", "dice_myo": 0.9, "hd95_mean": 1.0})
        pixel.append(common | {"method": "pixel", "psnr": 30.0, "dice_myo": 0.7, "hd95_mean": 9.0})
    write_subjects(tmp_path / "eval" / "spatial_x4_subjects.csv", spatial)
    write_subjects(tmp_path / "eval" / "pixel_x4_subjects.csv", pixel)

    text, csv_rows = build_table(tmp_path / "eval", "t")
    calid = next(r for r in csv_rows if r["method"] == "calid")
    assert calid["psnr_vs_linear"] == pytest.approx(0.5)  # (1 + 0 + 0.5) / 3
    assert (calid["psnr_better"], calid["psnr_pairs"]) == (2, 3)  # the tie on p1 is not a win
    assert calid["dice_myo_vs_linear"] == pytest.approx(-0.01) and calid["dice_myo_better"] == 0
    assert calid["dice3d_myo_vs_linear"] == pytest.approx(0.01) and calid["dice3d_myo_better"] == 2
    assert calid["hd95_mean_vs_linear"] == pytest.approx(0.0) and calid["hd95_mean_better"] == 1  # 4 < 5
    pixel_row = next(r for r in csv_rows if r["method"] == "pixel")
    assert "psnr_vs_linear" not in pixel_row, "pixel is scored on other frames: never paired"
    assert "psnr_vs_linear" not in next(r for r in csv_rows if r["method"] == "truth")
    paired_part = text[text.index("Paired with linear in z") :]
    calid_line = next(line for line in paired_part.splitlines() if line.startswith("| CaLID, one sample |"))
    # 95 % intervals by hand: t(0.975, 2 df) = 4.3027; PSNR differences 1, 0, 0.5 (sd 0.5); HD95 -1, 0, 1
    assert calid["psnr_ci95"] == pytest.approx(4.3027 * 0.5 / math.sqrt(3), rel=1e-4)
    assert calid["dice_myo_ci95"] == pytest.approx(0.0), "the same difference on every subject: no spread"
    assert "+0.50 ± 1.24 (2/3)" in calid_line and "-0.010 ± 0.000 (0/3)" in calid_line
    assert "+0.0 ± 2.5 (1/3)" in calid_line
    assert "+0.010 ± 0.025 (2/3)" in calid_line, "the 3D Dice pairs like the per-slice one (0.72, 0.71, 0.70)"
    assert "pixel" not in paired_part.lower()


def test_ci95_half_width_is_the_student_t_interval() -> None:
    """1..5: mean 3, sd sqrt(2.5), t(0.975, 4 df) = 2.7764 from a printed table; one value has no interval."""
    assert ci95_half_width([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(2.7764 * math.sqrt(2.5 / 5), rel=1e-4)
    assert ci95_half_width([2.0, 2.0]) == 0.0
    assert math.isnan(ci95_half_width([1.5])) and math.isnan(ci95_half_width([]))


def test_table_puts_the_injection_ablation_beside_the_full_model(tmp_path: Path) -> None:
    """concat_x4 (CaLID without tau_theta2) scores the spatial file's slices: its rows join that section
    right after the method they vary, titled with the variant, and pair with linear; the DDIM-steps rows
    get their method's title too."""
    spatial, concat, steps = [], [], []
    for s, lin in enumerate([18.0, 22.0, 26.0]):
        common = {"subject": f"p{s}", "factor": 4, "seconds_per_volume": 1}
        spatial += [
            common | {"method": m, "psnr": lin + d} for m, d in (("linear", 0), ("calid", 1), ("lerp", -1))
        ]
        concat.append(common | {"method": "calid", "psnr": lin + (0.5 if s else -0.5)})
        steps.append(common | {"method": "calid", "psnr": lin})
    write_subjects(tmp_path / "eval" / "spatial_x4_subjects.csv", spatial)
    write_subjects(tmp_path / "eval" / "concat_x4_subjects.csv", concat)
    write_subjects(tmp_path / "eval" / "steps5_x4_subjects.csv", steps)

    text, csv_rows = build_table(tmp_path / "eval", "t")
    row = next(r for r in csv_rows if r["method"] == "calid, input concatenation only")
    assert row["section"] == "slices" and row["psnr"] == pytest.approx(22.0 + 0.5 / 3)
    assert row["psnr_vs_linear"] == pytest.approx(0.5 / 3) and row["psnr_better"] == 2
    slices = text[: text.index("Paired with")].splitlines()
    titles = [line.split(" | ")[0] for line in slices if line.startswith("| ") and "---" not in line][1:]
    assert titles == [
        "| CaLID, one sample",
        "| CaLID, one sample, input concatenation only",
        "| latent lerp (same VAE)",
        "| linear in z (image)",
    ]
    assert "| CaLID, one sample, 5 DDIM steps |" in text


def test_dry_run_lists_stages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from calid_lightning.reproduce.cli import main

    monkeypatch.chdir(REPO)
    assert main(["--dry-run", "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "res")]) == 0
    out = capsys.readouterr().out
    assert "vae" in out and "to run" in out and "calid evaluate" in out
    with pytest.raises(SystemExit) as info:
        main(["--dry-run", "--runs", str(tmp_path / "runs"), "--force", "nonsense"])
    assert info.value.code == 2


def test_paper_profile_adds_its_overrides_and_evaluates_at_its_crop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    profile = load_profile("experiments/reproduce/paper.yaml", data="data_modules/acdc.yaml")
    stages = {s.name: s for s in plan(profile, tmp_path / "runs", tmp_path / "results")}
    vae = stages["vae"].argv
    assert vae[vae.index("data_modules/acdc.yaml") + 2] == "experiments/profiles/paper/vae.yaml"
    concat = stages["calid_concat"].argv  # the ablation takes the override of the config it trains
    assert (
        concat[concat.index("data_modules/acdc.yaml") + 2] == "experiments/profiles/paper/calid_spatial.yaml"
    )
    for name in ("eval_spatial_x4", "eval_cine_x4", "figures_x4"):
        argv = stages[name].argv
        assert argv[argv.index("--data-override") + 1] == "crop_size=128", name


@pytest.mark.parametrize("name", ["quick", "paper"])
def test_diffusion_configs_default_to_the_steps_their_table_measured(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`calid upsample` and `calid evaluate` without --steps use the DDIM steps of the profile's table."""
    monkeypatch.chdir(REPO)
    profile = load_profile(f"experiments/reproduce/{name}.yaml")
    for stage in ("calid_spatial", "pixel_spatial"):
        configs = [profile.train[stage].config]
        if profile.profile_dir is not None:
            configs.append(Path(profile.profile_dir) / f"{stage}.yaml")
        steps = merge_configs(configs)["model"]["init_args"]["num_inference_steps"]
        assert steps == profile.evaluate["steps"], (name, stage)
