"""Pixel-space diffusion interpolator (no VAE), its checkpoints and kind detection, the upsampling bench.

Tiny sizes: 16x16 image slices, U-Net channels (16, 32) -> size multiple 2.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from benchmark_scripts import load_benchmark
from calid_lightning.inference.interpolator import SliceInterpolator
from calid_lightning.inference.methods import MethodModels, build_method
from calid_lightning.inference.upsample import EngineUpsampler
from calid_lightning.models.calid_spatial import CaLIDSpatial
from calid_lightning.models.checkpoints import MODEL_CLASS_KEY, checkpoint_class, load_model
from calid_lightning.models.pixel_diffusion import PixelSpatial
from checkpoints import TINY_UNET

ROOT = Path(__file__).resolve().parents[2]
SIZE = 16


def tiny_pixel(**kwargs: object) -> PixelSpatial:
    torch.manual_seed(0)
    return PixelSpatial(**TINY_UNET, val_sample_every=0, **kwargs)


def disc_slice(radius: float) -> torch.Tensor:
    """A bright disc on a dark background, (1, SIZE, SIZE) in [0, 1]."""
    coords = torch.arange(SIZE, dtype=torch.float32) - (SIZE - 1) / 2
    dist = (coords[:, None] ** 2 + coords[None, :] ** 2).sqrt()
    return (0.1 + 0.8 * torch.sigmoid(2.0 * (radius - dist))).unsqueeze(0)


def examples(n: int = 16) -> list[dict[str, torch.Tensor]]:
    """(below, above, target, r) tuples of a disc whose radius changes linearly through the stack."""
    out = []
    for i in range(n):
        r_below, r_above = 2.0 + 0.25 * i, 6.0 - 0.1 * i
        r = torch.tensor(0.2 + 0.6 * (i % 4) / 3)
        target = disc_slice(float((1 - r) * r_below + r * r_above))
        out.append({"below": disc_slice(r_below), "above": disc_slice(r_above), "target": target, "r": r})
    return out


def fit(model: PixelSpatial, steps: int, root: Path) -> Trainer:
    trainer = Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    trainer.fit(model, DataLoader(examples(), batch_size=8, shuffle=True))
    return trainer


def test_no_vae_and_image_representation() -> None:
    model = tiny_pixel()
    assert not hasattr(model, "vae")
    assert not any(key.startswith("vae.") for key in model.state_dict())
    assert "vae_checkpoint" not in model.hparams and "vae_hparams" not in model.hparams
    assert model.latent_channels == 1 and model.size_multiple == 2
    assert isinstance(model, SliceInterpolator)
    x = torch.rand(3, 1, SIZE, SIZE)
    z = model.encode(x)
    assert z.shape == x.shape and z.min() >= -1 and z.max() <= 1
    torch.testing.assert_close(z, x * 2 - 1)
    torch.testing.assert_close(model.decode(z), x)
    assert model.decode(torch.tensor([-3.0, 0.0, 3.0])).tolist() == [0.0, 0.5, 1.0]
    with pytest.raises(ValueError, match=r"not divisible by PixelSpatial\.size_multiple=2"):
        model.encode(torch.rand(1, 1, 15, 16))


def test_interpolate_works_on_images_and_is_seeded() -> None:
    model = tiny_pixel().eval()
    below, above = model.encode(torch.rand(2, 1, SIZE, SIZE)), model.encode(torch.rand(2, 1, SIZE, SIZE))
    r = torch.tensor([0.25, 0.75])
    first = model.interpolate(below, above, r, num_steps=3, generator=torch.Generator().manual_seed(1))
    again = model.interpolate(below, above, r, num_steps=3, generator=torch.Generator().manual_seed(1))
    other = model.interpolate(below, above, r, num_steps=3, generator=torch.Generator().manual_seed(2))
    assert first.shape == (2, 1, SIZE, SIZE)
    assert torch.equal(first, again) and not torch.equal(first, other)
    image = model.decode(first)
    assert image.shape == (2, 1, SIZE, SIZE) and image.min() >= 0 and image.max() <= 1


def test_engine_upsamples_with_pixel_model() -> None:
    model = tiny_pixel().eval()
    stack = torch.rand(3, 2, 1, 15, 14)  # H = 15 is padded to the size multiple and cropped back
    dense = EngineUpsampler(model, num_steps=2, max_batch=4).upsample(stack, 2)
    assert dense.shape == (5, 2, 1, 15, 14)
    assert torch.equal(dense[::2], stack)
    assert dense.min() >= 0 and dense.max() <= 1


def fixed_loss(model: PixelSpatial) -> float:
    """Diffusion loss of all examples at fixed timesteps and noise (EMA-free raw weights)."""
    batch = {k: torch.stack([ex[k] for ex in examples()]) for k in ("below", "above", "target", "r")}
    with torch.no_grad():
        losses = [model._diffusion_loss(batch, torch.Generator().manual_seed(s))[0] for s in range(4)]
    return float(torch.stack(losses).mean())


def test_short_training_lowers_loss(tmp_path: Path) -> None:
    seed_everything(0)
    model = tiny_pixel(lr=2e-3, prediction_type="epsilon")
    before = fixed_loss(model)
    fit(model, 40, tmp_path)
    after = fixed_loss(model.eval())
    assert after < 0.7 * before, (before, after)
    assert int(model.ema.num_updates) == 40


@pytest.fixture(scope="module")
def pixel_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PixelSpatial trained a few steps (EMA differs from the raw weights), saved by a Trainer."""
    root = tmp_path_factory.mktemp("pixel")
    seed_everything(0)
    model = tiny_pixel(lr=1e-3)
    trainer = fit(model, 3, root)
    path = root / "pixel.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_save_load_round_trip(pixel_checkpoint: Path) -> None:
    checkpoint = torch.load(pixel_checkpoint, map_location="cpu", weights_only=False)
    assert checkpoint[MODEL_CLASS_KEY] == "calid_lightning.models.pixel_diffusion.PixelSpatial"
    model = PixelSpatial.load_from_checkpoint(pixel_checkpoint).eval()
    loaded = load_model(pixel_checkpoint)
    assert type(loaded) is PixelSpatial and not loaded.training
    assert tuple(model.hparams.channels) == TINY_UNET["channels"]
    below, above = torch.rand(2, 1, SIZE, SIZE) * 2 - 1, torch.rand(2, 1, SIZE, SIZE) * 2 - 1
    r = torch.tensor([0.5, 0.5])
    outs = [
        m.interpolate(below, above, r, num_steps=2, generator=torch.Generator().manual_seed(0))
        for m in (model, loaded)
    ]
    assert torch.equal(*outs)
    for key, value in checkpoint["state_dict"].items():
        torch.testing.assert_close(loaded.state_dict()[key], value)


def test_kind_detection_without_class_entry(pixel_checkpoint: Path) -> None:
    checkpoint = torch.load(pixel_checkpoint, map_location="cpu", weights_only=False)
    del checkpoint[MODEL_CLASS_KEY]
    assert checkpoint_class(checkpoint, pixel_checkpoint) is PixelSpatial
    latent = {"state_dict": {**checkpoint["state_dict"], "vae.scale_factor": torch.tensor(1.0)}}
    assert checkpoint_class(latent) is CaLIDSpatial


def test_calid_spatial_keeps_vae_hparams_and_keys() -> None:
    """The codec hook leaves the latent models' checkpoints as before (VAE keys and hyperparameters)."""
    model = CaLIDSpatial(
        vae_hparams={"channels": (8, 8, 8), "latent_channels": 4, "norm_num_groups": 4}, **TINY_UNET
    )
    assert "vae_checkpoint" in model.hparams and "vae_hparams" in model.hparams
    assert any(key.startswith("vae.autoencoder.") for key in model.state_dict())
    assert model.size_multiple == 8 and model.latent_channels == 4


def test_evaluate_pixel_method(pixel_checkpoint: Path) -> None:
    with pytest.raises(ValueError, match="needs a PixelSpatial checkpoint"):
        build_method("pixel")
    upsampler = build_method("pixel", MethodModels(pixel_checkpoint=str(pixel_checkpoint)))
    assert isinstance(upsampler, EngineUpsampler) and isinstance(upsampler.interpolator, PixelSpatial)


def test_configs_share_the_denoiser() -> None:
    """The pixel configs use CaLID's U-Net (the speed comparison is like for like)."""
    keys = ("channels", "attention_levels", "num_res_blocks", "num_head_channels", "norm_num_groups")
    for folder in ("experiments", "experiments/profiles/paper"):
        calid = OmegaConf.load(ROOT / folder / "calid_spatial.yaml").model.init_args
        pixel = OmegaConf.load(ROOT / folder / "pixel_spatial.yaml").model.init_args
        assert {k: pixel[k] for k in keys} == {k: calid[k] for k in keys}, folder
    quick = OmegaConf.load(ROOT / "experiments/pixel_spatial.yaml")
    assert quick.model.class_path == "calid_lightning.models.pixel_diffusion.PixelSpatial"
    assert quick.data.init_args.crop_size == 64
    assert (
        OmegaConf.load(ROOT / "experiments/profiles/paper/pixel_spatial.yaml").data.init_args.crop_size == 128
    )


def test_bench_times_untrained_models() -> None:
    bench = load_benchmark("bench_upsample")
    vae = {"channels": (8, 8, 8), "norm_num_groups": 4}
    calid, pixel = bench.untrained_models(vae_overrides=vae, denoiser_overrides=TINY_UNET)
    assert isinstance(calid, CaLIDSpatial) and isinstance(pixel, PixelSpatial)
    assert calid.hparams.num_inference_steps == pixel.hparams.num_inference_steps == 5  # quick configs
    assert tuple(calid.hparams.channels) == tuple(pixel.hparams.channels) == TINY_UNET["channels"]
    assert bench.architecture_differences(calid, pixel) == []
    assert bench.architecture_differences(calid, tiny_pixel(injection=False)) == ["injection"]
    methods = bench.diffusion_methods(calid, pixel, steps=2, device="cpu", max_batch=8)
    stack = torch.rand(3, 1, 1, SIZE, SIZE)
    times = dict(bench.time_methods(methods, stack, [0, 0.5, 1, 1.5, 2], warmup=1, repeats=2))
    assert set(times) == {"latent lerp", "latent slerp", "calid", "calid mean", "pixel diffusion"}
    assert all(len(t) == 2 and min(t) > 0 for t in times.values())
    assert bench.speed_ratio(times) == statistics.median(times["pixel diffusion"]) / statistics.median(
        times["calid"]
    )
    with torch.no_grad(), bench.autocast("cpu", "bf16"):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
