"""The method registry: which tool offers what, what each method needs, how it is built and checked."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from calid_lightning.inference.baselines import IMAGE_BASELINES
from calid_lightning.inference.interpolator import DETAIL_WEIGHT, ConditionalMean, DetailTransfer, LatentBlend
from calid_lightning.inference.methods import (
    MEAN_DRAWS,
    METHODS,
    MODEL_FILES,
    CodecCeiling,
    MethodModels,
    TrueSlices,
    add_model_arguments,
    build_method,
    checked_methods,
    label_of,
    methods_of,
    models_from_args,
    split_variant,
    title_of,
    training_mismatches,
    variant_name,
)
from calid_lightning.inference.nifti_io import DATAMODULE_HPARAMS
from calid_lightning.inference.upsample import EngineUpsampler
from calid_lightning.models.calid_inflated import CaLIDInflated
from calid_lightning.models.calid_spatial import CaLIDSpatial
from calid_lightning.reproduce.table import CEILINGS, METHOD_ORDER
from checkpoints import TINY_UNET, save_checkpoint, tiny_vae_checkpoint

CINE = ("calid_inflated", "calid_inflated_shared", "calid_inflated_mean", "calid_shared")
LATENT = ("calid_mean", "calid", "calid_sequential", "lerp", "slerp")
IMAGES = ("linear", "cubic", "nearest")


@pytest.fixture(scope="module")
def spatial(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("methods")
    torch.manual_seed(0)
    model = CaLIDSpatial(vae_checkpoint=str(tiny_vae_checkpoint(folder / "vae.ckpt")), **TINY_UNET)
    return save_checkpoint(model, folder / "spatial.ckpt")


def test_each_tool_offers_its_methods_in_table_order() -> None:
    detail = ("calid_mean_detail", "calid_detail")
    slices = (*detail, "calid_mean", "calid", "calid_sequential", "pixel", "lerp", "slerp", *IMAGES)
    assert methods_of("evaluate") == (*slices, "truth", "vae_truth")
    assert methods_of("evaluate-cine") == (
        *detail,
        "calid_mean",
        "calid",
        *CINE,
        "calid_sequential",
        "lerp",
        "slerp",
        *IMAGES,
    )
    assert methods_of("figures") == (
        *detail,
        "calid_mean",
        "calid",
        "calid_sequential",
        "pixel",
        "lerp",
        "slerp",
        *IMAGES,
    )
    assert methods_of("upsample") == ("calid", *IMAGES)
    with pytest.raises(ValueError, match="unknown tool 'train'"):
        methods_of("train")


def test_the_table_and_figures_read_the_registry() -> None:
    assert tuple(METHODS) == METHOD_ORDER and CEILINGS == ("truth", "vae_truth")
    assert title_of("calid_mean") == "CaLID, conditional mean" and label_of("calid_mean") == "CaLID mean"
    assert (
        title_of("calid, 5 DDIM steps") == "CaLID, one sample, 5 DDIM steps" and label_of("other") == "other"
    )
    assert title_of("other, a variant") == "other, a variant"
    # An ablation's row: built and split in one place; the variant keeps its own commas.
    row = variant_name("calid_mean", "input concatenation only, 1210 steps")
    assert row == "calid_mean, input concatenation only, 1210 steps"
    assert split_variant(row) == ("calid_mean", "input concatenation only, 1210 steps")
    assert split_variant("calid") == ("calid", "")
    assert title_of(row) == "CaLID, conditional mean, input concatenation only, 1210 steps"
    assert all(m.cine == (m.name in CINE) for m in METHODS.values())
    assert {m.needs for m in METHODS.values()} == {None, *MODEL_FILES}


def test_image_and_ceiling_methods_build_without_files() -> None:
    for name in IMAGES:
        assert build_method(name) is IMAGE_BASELINES[name]
    assert isinstance(build_method("truth"), TrueSlices)
    with pytest.raises(ValueError, match="unknown method 'bicubic'"):
        build_method("bicubic")


@pytest.mark.parametrize("name", [n for n, m in METHODS.items() if m.needs not in (None, "segmenter")])
def test_a_method_without_its_file_names_the_option(name: str) -> None:
    file = MODEL_FILES[METHODS[name].needs]
    with pytest.raises(
        ValueError, match=f"method '{name}' needs a {file.class_name} checkpoint \\({file.option}"
    ):
        build_method(name)


def test_latent_methods_share_one_loaded_model(spatial: Path) -> None:
    models = MethodModels(checkpoint=str(spatial), max_batch=5, mean_draws=3)
    built = {name: build_method(name, models) for name in (*LATENT, "vae_truth")}
    calid = built["calid"].interpolator
    assert isinstance(calid, CaLIDSpatial) and not calid.training
    assert not any(p.requires_grad for p in calid.parameters())
    assert built["calid"].order == "bisection" and built["calid_sequential"].order == "sequential"
    assert built["calid_sequential"].interpolator is calid and built["calid"].max_batch == 5
    mean = built["calid_mean"].interpolator
    assert isinstance(mean, ConditionalMean) and mean.draws == 3 and mean.base is calid
    for kind in ("lerp", "slerp"):
        blend = built[kind].interpolator
        assert isinstance(blend, LatentBlend) and blend.mode == kind and blend.base is calid
    assert isinstance(built["vae_truth"], CodecCeiling) and built["vae_truth"].model is calid
    assert all(isinstance(built[n], EngineUpsampler) for n in LATENT)


def test_cine_methods_get_their_own_noise(spatial: Path, tmp_path: Path) -> None:
    inflated = save_checkpoint(CaLIDInflated(spatial_checkpoint=str(spatial)), tmp_path / "inflated.ckpt")
    models = MethodModels(checkpoint=str(spatial), inflated_checkpoint=str(inflated))
    built = {name: build_method(name, models) for name in CINE}
    noise = {name: getattr(u.interpolator, "base", u.interpolator).frame_noise for name, u in built.items()}
    assert noise == {
        "calid_inflated": 0.0,
        "calid_inflated_shared": 1.0,
        "calid_inflated_mean": 0.0,
        "calid_shared": 1.0,
    }
    assert built["calid_inflated"].interpolator is not built["calid_inflated_shared"].interpolator
    assert isinstance(built["calid_inflated_mean"].interpolator, ConditionalMean)
    assert built["calid_shared"].interpolator.hparams.temporal_layers == "none"


def test_a_file_of_the_wrong_model_names_the_option(spatial: Path) -> None:
    with pytest.raises(
        ValueError,
        match=f"--pixel-checkpoint {spatial}: holds a CaLIDSpatial checkpoint, expected a PixelSpatial",
    ):
        build_method("pixel", MethodModels(pixel_checkpoint=str(spatial)))


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        (None, None),
        ({"intensity_percentiles": (1.0, 99.5), "pixel_spacing": None}, None),
        (
            {"intensity_percentiles": (5.0, 95.0)},
            "data.intensity_percentiles [5.0, 95.0], but the evaluation",
        ),
        (
            {"intensity_percentiles": (1.0, 99.5), "pixel_spacing": 1.25},
            "--data-override pixel_spacing=1.25 would match",
        ),
    ],
    ids=["no-record", "same", "other-percentiles", "other-spacing"],
)
def test_evaluation_data_prepared_otherwise_is_a_warning(spatial: Path, tmp_path: Path, record, problem):
    checkpoint = torch.load(spatial, weights_only=True)
    if record is not None:
        checkpoint[DATAMODULE_HPARAMS] = record
    torch.save(checkpoint, tmp_path / "m.ckpt")
    models = MethodModels(checkpoint=str(tmp_path / "m.ckpt"))
    data = {"intensity_percentiles": [1.0, 99.5], "pixel_spacing": None}
    notes = training_mismatches(models, data)
    if problem is None:
        assert notes == []
    else:
        [note] = notes
        assert problem in note and note.startswith(
            f"--checkpoint {tmp_path / 'm.ckpt'} was trained with data."
        )


def parser_for(tool: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"calid {tool}")
    add_model_arguments(parser, tool)
    parser.add_argument("--methods", default="calid,linear")
    parser.add_argument("--factor", type=int, default=4)
    return parser


def test_model_options_follow_the_methods_of_the_tool() -> None:
    options = {a.option_strings[0]: a.help for a in parser_for("evaluate")._actions if a.option_strings}
    assert "--inflated-checkpoint" not in options and "--pixel-checkpoint" in options
    assert options["--segmenter"].endswith("for truth") and "calid_mean" in options["--checkpoint"]
    cine = {a.option_strings[0] for a in parser_for("evaluate-cine")._actions if a.option_strings}
    assert {"--inflated-checkpoint", "--checkpoint"} <= cine and "--pixel-checkpoint" not in cine


def check(tool: str, argv: list[str]) -> list[str]:
    parser = parser_for(tool)
    return checked_methods(parser, parser.parse_args(argv), tool)


def test_checked_methods_skip_what_lacks_a_file(spatial: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check("evaluate", ["--methods", "calid, lerp,linear,truth"]) == ["linear"]
    err = capsys.readouterr().err
    assert "calid evaluate: skipping calid, lerp: they need --checkpoint CKPT" in err
    assert "skipping truth: they need --segmenter CKPT" in err
    assert check("evaluate", ["--methods", "calid,linear", "--checkpoint", str(spatial)]) == [
        "calid",
        "linear",
    ]


@pytest.mark.parametrize(
    ("tool", "argv", "message"),
    [
        ("evaluate", ["--methods", "calid_inflated"], "unknown ['calid_inflated']; choose from calid_mean"),
        ("figures", ["--methods", "truth"], "unknown ['truth']"),
        ("evaluate", ["--methods", ","], "unknown []"),
        ("evaluate", ["--factor", "1", "--methods", "linear"], "--factor must be >= 2"),
        ("evaluate", ["--checkpoint", "missing.ckpt"], "--checkpoint missing.ckpt: file not found"),
        ("evaluate", ["--methods", "calid"], "no method left to run: pass --checkpoint"),
    ],
)
def test_checked_methods_refuse_bad_options(tool, argv, message, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        check(tool, argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("tool", ["evaluate", "evaluate-cine", "figures"])
def test_each_tool_passes_its_estimate_settings_to_the_built_methods(tool: str, spatial: Path) -> None:
    """--mean-draws and --detail-weight of every scoring tool reach the conditional mean and the residual."""
    from calid_lightning.evaluation import cine_eval, evaluate_cli, figures

    parser = {"evaluate": evaluate_cli, "evaluate-cine": cine_eval, "figures": figures}[tool].build_parser()
    argv = ["--data", "d.yaml", "--checkpoint", str(spatial), "--mean-draws", "3", "--detail-weight", "0.5"]
    models = models_from_args(parser.parse_args(argv))
    detail = build_method("calid_mean_detail", models).interpolator
    assert isinstance(detail, DetailTransfer) and detail.weight == 0.5
    assert isinstance(detail.inner, ConditionalMean) and detail.inner.draws == 3
    defaults = models_from_args(parser.parse_args(["--data", "d.yaml"]))
    assert (defaults.mean_draws, defaults.detail_weight) == (MEAN_DRAWS, DETAIL_WEIGHT)
    with pytest.raises(SystemExit):
        parser.parse_args(["--data", "d.yaml", "--detail-weight", "-0.5"])
