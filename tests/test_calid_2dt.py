"""CaLID 2D+T: cine shapes over any frame count, zero-initialised injection, training, sampling, checkpoints.

Tiny sizes: 16x16 frames -> 4x4 latents (VAE factor 4), 3D U-Net channels (16, 32) -> time padded to even T.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from calid_lightning.data.subject import DataError
from calid_lightning.inference.upsample import factor_positions, upsample_stack
from calid_lightning.models.calid_2dt import CaLID2DT, wrap_pad_time
from calid_lightning.models.calid_spatial import CaLIDSpatial
from calid_lightning.models.conditioning import ConditionalDenoiser, condition_input
from calid_lightning.models.latent_interpolator import MODEL_CLASS_KEY, load_interpolator
from checkpoints import TINY_UNET, quiet_trainer, save_checkpoint, tiny_vae_checkpoint

SIZE = 16
LATENT = 4
FRAMES = 8


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def beating_cine(radius: float, frames: int = FRAMES, size: int = SIZE) -> torch.Tensor:
    """A disc whose radius beats over one cycle, (1, T, size, size) in [0, 1]."""
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    dist = (coords[:, None] ** 2 + coords[None, :] ** 2).sqrt()
    beat = radius * (1.0 - 0.3 * torch.sin(math.pi * torch.arange(frames) / frames) ** 2)
    return (0.1 + 0.8 * torch.sigmoid(2.0 * (beat[:, None, None] - dist))).unsqueeze(0)


def cine_examples(n: int = 8, frames: int = FRAMES) -> list[dict[str, torch.Tensor]]:
    """(below, above, target, r, frames) cine tuples of a disc whose size changes through the stack."""
    examples = []
    for i in range(n):
        r_below, r_above = 2.0 + 0.25 * i, 6.0 - 0.1 * i
        r = torch.tensor(0.2 + 0.6 * (i % 4) / 3)
        examples.append(
            {
                "below": beating_cine(r_below, frames),
                "above": beating_cine(r_above, frames),
                "target": beating_cine(float((1 - r) * r_below + r * r_above), frames),
                "r": r,
                "frames": torch.tensor(frames),
            }
        )
    return examples


def loader(shuffle: bool = False) -> DataLoader:
    return DataLoader(cine_examples(), batch_size=4, shuffle=shuffle)


@pytest.fixture(scope="module")
def vae_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    images = torch.cat([ex["target"].transpose(0, 1) for ex in cine_examples()])
    return tiny_vae_checkpoint(tmp_path_factory.mktemp("vae") / "vae.ckpt", images)


def make_model(vae_checkpoint: Path, **kwargs: object) -> CaLID2DT:
    torch.manual_seed(0)
    args = {**TINY_UNET, "num_inference_steps": 3, "val_inference_steps": 2, "lr": 2e-3, "ema_decay": 0.9}
    return CaLID2DT(vae_checkpoint=str(vae_checkpoint), **{**args, **kwargs})


def randomise_output(model: CaLID2DT) -> None:
    """A non-zero U-Net output layer (zero at init), so sampling depends on the model."""
    with torch.no_grad():
        for p in [*model.ema.module.unet.out.parameters(), *model.denoiser.unet.out.parameters()]:
            p.normal_(std=0.1)


def fixed_loss(model: CaLID2DT, batch: dict[str, torch.Tensor]) -> float:
    with torch.no_grad():
        losses = [model._diffusion_loss(batch, torch.Generator().manual_seed(s))[0] for s in range(6)]
    return float(torch.stack(losses).mean())


@pytest.fixture(scope="module")
def trained(vae_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    model = make_model(vae_checkpoint)
    batch = next(iter(loader()))
    before = fixed_loss(model, batch)
    trainer = quiet_trainer(tmp_path_factory.mktemp("fit"), 30)
    trainer.fit(model, loader(shuffle=True), loader())
    return {"model": model, "trainer": trainer, "before": before, "after": fixed_loss(model, batch)}


def test_wrap_pad_continues_the_cycle() -> None:
    x = torch.arange(5.0).reshape(1, 1, 5, 1, 1)
    assert wrap_pad_time(x, 4).flatten().tolist() == [0, 1, 2, 3, 4, 0, 1, 2]
    assert wrap_pad_time(x, 5) is x
    assert wrap_pad_time(torch.zeros(1, 1, 25, 2, 2), 8).shape[2] == 32


@pytest.mark.parametrize("frames", [5, 7, 25])
def test_shapes_over_odd_frame_counts(vae_checkpoint: Path, frames: int) -> None:
    model = make_model(vae_checkpoint)
    assert model.time_multiple == 2 and model.size_multiple == 8 and model.task == "cine"
    cines = torch.stack([ex["target"] for ex in cine_examples(2, frames)])
    z = model.encode(cines)
    assert z.shape == (2, LATENT, frames, 4, 4)
    # frame t of the cine latent is the 2D VAE latent of frame t
    torch.testing.assert_close(z[:, :, 3], model.vae.encode(cines[:, :, 3]))
    decoded = model.decode(z)
    assert decoded.shape == cines.shape and decoded.min() >= 0 and decoded.max() <= 1
    seen: list[int] = []
    hook = model.ema.module.unet.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["x"].shape[2]), with_kwargs=True
    )
    out = model.interpolate(z, z.flip(0), torch.tensor([0.3, 0.6]), num_steps=2)
    hook.remove()
    assert out.shape == z.shape
    assert set(seen) == {frames + frames % 2}  # padded to the U-Net's multiple inside, cropped back outside
    batch = {key: torch.stack([ex[key] for ex in cine_examples(2, frames)]) for key in cine_examples(1)[0]}
    loss, _ = model._diffusion_loss(batch)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.denoiser.unet.parameters())


def test_three_level_net_pads_time_to_four(vae_checkpoint: Path) -> None:
    model = make_model(vae_checkpoint, channels=(8, 16, 16), attention_levels=(False, False, False))
    assert model.time_multiple == 4
    z = model.encode(torch.stack([ex["target"] for ex in cine_examples(1, 5)]))
    assert model.interpolate(z, z, torch.tensor([0.5]), num_steps=1).shape == (1, LATENT, 5, 4, 4)


def test_size_and_layout_errors(vae_checkpoint: Path) -> None:
    model = make_model(vae_checkpoint)
    with pytest.raises(ValueError, match="size_multiple=8"):
        model.encode(torch.rand(1, 1, 4, 12, 12))
    with pytest.raises(ValueError, match=r"\(N, C, T, H, W\)"):
        model.encode(torch.rand(2, 1, 16, 16))
    with pytest.raises(KeyError, match="task 'cine'"):
        model._diffusion_loss({"below": torch.rand(1, 1, 4, 16, 16)})


def test_injection_is_zero_at_init_in_3d() -> None:
    torch.manual_seed(0)
    net = ConditionalDenoiser(LATENT, spatial_dims=3, **TINY_UNET)
    for p in net.unet.out.parameters():
        torch.nn.init.normal_(p, std=0.1)
    noisy, below, above = (torch.randn(2, LATENT, 4, 4, 4) for _ in range(3))
    r, t = torch.tensor([0.3, 0.6]), torch.tensor([10, 700])
    plain = net.unet(torch.cat([noisy, condition_input(below, above, r)], 1), t)
    torch.testing.assert_close(net(noisy, t, below, above, r), plain, rtol=0, atol=0)
    assert net.controlnet.conv_in.conv.weight.ndim == 5
    with torch.no_grad():
        torch.nn.init.normal_(net.controlnet.controlnet_mid_block.conv.weight, std=0.1)
    assert not torch.allclose(net(noisy, t, below, above, r), plain)


def test_loss_counts_only_real_frames(vae_checkpoint: Path) -> None:
    """Frames past ``frames`` (the DataModule's wrap padding) are not counted; without ``frames`` all are."""
    model = make_model(vae_checkpoint)
    prediction, target = torch.randn(2, LATENT, 8, 4, 4), torch.randn(2, LATENT, 8, 4, 4)
    batch = {"frames": torch.tensor([5, 6])}
    expected = torch.cat(
        [((prediction - target)[0, :, :5] ** 2).flatten(), ((prediction - target)[1, :, :6] ** 2).flatten()]
    )
    torch.testing.assert_close(model._regression_loss(prediction, target, batch), expected.mean())
    changed = prediction.clone()
    changed[0, :, 5:] += 10.0
    changed[1, :, 6:] += 10.0
    torch.testing.assert_close(model._regression_loss(changed, target, batch), expected.mean())
    torch.testing.assert_close(
        model._regression_loss(prediction, target, {}), ((prediction - target) ** 2).mean()
    )


def test_sampling_is_deterministic_per_generator(vae_checkpoint: Path) -> None:
    model = make_model(vae_checkpoint)
    randomise_output(model)
    below, above = torch.randn(2, LATENT, 5, 4, 4), torch.randn(2, LATENT, 5, 4, 4)
    r = torch.tensor([0.3, 0.7])
    first = model.interpolate(below, above, r, generator=torch.Generator().manual_seed(1))
    again = model.interpolate(below, above, r, generator=torch.Generator().manual_seed(1))
    other = model.interpolate(below, above, r, generator=torch.Generator().manual_seed(2))
    assert torch.equal(first, again) and not torch.allclose(first, other)


def test_training_lowers_the_loss_and_logs_temporal_metrics(trained: dict[str, object]) -> None:
    assert trained["after"] < 0.7 * trained["before"], (trained["before"], trained["after"])
    metrics = trained["trainer"].callback_metrics
    keys = (
        "train/loss_epoch",
        "val/loss",
        "val/psnr",
        "val/ssim",
        "val/temporal_error",
        "val/temporal_error_linear",
    )
    for key in keys:
        assert key in metrics and torch.isfinite(metrics[key]), key
    model: CaLID2DT = trained["model"]
    assert int(model.ema.num_updates) == 30
    assert all(not p.requires_grad for p in model.vae.parameters())


def test_checkpoint_round_trip_and_kind_detection(
    trained: dict[str, object], vae_checkpoint: Path, tmp_path: Path
) -> None:
    model: CaLID2DT = trained["model"]
    path = tmp_path / "cine.ckpt"
    trained["trainer"].save_checkpoint(path)
    assert (
        torch.load(path, weights_only=False)[MODEL_CLASS_KEY] == "calid_lightning.models.calid_2dt.CaLID2DT"
    )
    moved = vae_checkpoint.rename(vae_checkpoint.with_suffix(".moved"))
    try:
        loaded = load_interpolator(path)
        # no class entry: the kind is detected from the weights
        bare = load_interpolator(save_checkpoint(model, tmp_path / "bare.ckpt"))
    finally:
        moved.rename(vae_checkpoint)
    assert type(loaded) is CaLID2DT and type(bare) is CaLID2DT and not loaded.training
    assert float(loaded.vae.scale_factor) == float(model.vae.scale_factor) != 1.0
    below, above, r = (
        torch.randn(2, LATENT, 7, 4, 4),
        torch.randn(2, LATENT, 7, 4, 4),
        torch.tensor([0.4, 0.6]),
    )
    expected = model.interpolate(below, above, r, generator=torch.Generator().manual_seed(3))
    for other in (loaded, bare):
        assert torch.equal(
            other.interpolate(below, above, r, generator=torch.Generator().manual_seed(3)), expected
        )


def test_spatial_checkpoints_are_still_detected_as_spatial(vae_checkpoint: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    spatial = CaLIDSpatial(vae_checkpoint=str(vae_checkpoint), **TINY_UNET)
    assert type(load_interpolator(save_checkpoint(spatial, tmp_path / "spatial.ckpt"))) is CaLIDSpatial
    (tmp_path / "junk.ckpt").write_text("not a checkpoint")
    with pytest.raises(DataError, match=r"junk\.ckpt"):
        load_interpolator(tmp_path / "junk.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(DataError, match="not a CaLID checkpoint"):
        load_interpolator(tmp_path / "other.ckpt")


def test_engine_upsamples_whole_cines(vae_checkpoint: Path) -> None:
    """The generic engine drives the 2D+T model with (Z, 1, 1, T, H, W) stacks; acquired cines stay exact."""
    model = make_model(vae_checkpoint)
    randomise_output(model)
    stack = torch.stack([ex["target"] for ex in cine_examples(3, frames=5)])[:, None]  # (3, 1, 1, 5, 16, 16)
    result = upsample_stack(stack, factor_positions(3, 2), model, num_steps=2, seed=0)
    assert result.dense.shape == (5, 1, 1, 5, 16, 16)
    assert torch.equal(result.dense[::2], stack)
    again = upsample_stack(stack, factor_positions(3, 2), model, num_steps=2, seed=0)
    assert torch.equal(again.dense, result.dense)
