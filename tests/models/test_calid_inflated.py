"""CaLID 2D+T by inflation: identity with the spatial model at init, temporal mixing, training, checkpoints.

Tiny sizes: 16x16 frames -> 4x4 latents (VAE factor 4), U-Net channels (16, 32).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader

from calid_lightning.data.subject import DataError
from calid_lightning.inference.upsample import factor_positions, upsample_stack
from calid_lightning.models.calid_inflated import CaLIDInflated
from calid_lightning.models.calid_spatial import CaLIDSpatial
from calid_lightning.models.checkpoints import MODEL_CLASS_KEY, load_model
from calid_lightning.models.diffusion import ddim_sample
from calid_lightning.models.temporal_layers import TemporalMixer, phase_encoding
from checkpoints import TINY_UNET, quiet_trainer, save_checkpoint, tiny_vae_checkpoint

SIZE = 16
LATENT = 4


def beating_cine(radius: float, frames: int = 8, size: int = SIZE) -> torch.Tensor:
    """A disc whose radius beats over one cycle, (1, T, size, size) in [0, 1]."""
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    dist = (coords[:, None] ** 2 + coords[None, :] ** 2).sqrt()
    beat = radius * (1.0 - 0.3 * torch.sin(math.pi * torch.arange(frames) / frames) ** 2)
    return (0.1 + 0.8 * torch.sigmoid(2.0 * (beat[:, None, None] - dist))).unsqueeze(0)


def cine_examples(n: int = 8, frames: int = 8) -> list[dict[str, torch.Tensor]]:
    """(below, above, target, r, frames) cine items of a disc whose size changes through the stack."""
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


pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def spatial_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny residual CaLIDSpatial whose every weight (zero-initialised ControlNet outputs included) is
    random, so agreeing with it frame by frame is not agreeing with zeros."""
    folder = tmp_path_factory.mktemp("spatial")
    vae = tiny_vae_checkpoint(folder / "vae.ckpt")
    torch.manual_seed(0)
    model = CaLIDSpatial(vae_checkpoint=str(vae), **TINY_UNET, num_inference_steps=3, residual=True)
    with torch.no_grad():
        for p in model.ema.module.parameters():
            p.normal_(std=0.05)
        model.residual_scale.fill_(2.5)
    return save_checkpoint(model, folder / "spatial.ckpt")


def inflated(spatial_checkpoint: Path, **kwargs: object) -> CaLIDInflated:
    torch.manual_seed(1)
    args = {"temporal_layers": "conv+attention", "temporal_controlnet": True, "val_inference_steps": 2}
    return CaLIDInflated(spatial_checkpoint=str(spatial_checkpoint), **{**args, **kwargs})


def latent_cines(frames: int, batch: int = 2) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(frames)
    return tuple(torch.randn(batch, LATENT, frames, 4, 4, generator=gen) for _ in range(3))


def fold(x: torch.Tensor) -> torch.Tensor:
    """(B, C, T, h, w) -> (B * T, C, h, w), frame-major within each item."""
    return x.transpose(1, 2).reshape(-1, x.shape[1], *x.shape[3:])


@pytest.mark.parametrize("frames", [5, 8])
def test_untrained_inflation_is_the_spatial_model_frame_by_frame(
    spatial_checkpoint: Path, frames: int
) -> None:
    spatial = load_model(spatial_checkpoint)
    model = inflated(spatial_checkpoint).eval()
    assert len(model.denoiser.mixers) == 2 * len(TINY_UNET["channels"]) + 1 + len(TINY_UNET["channels"]) + 1
    noisy, below, above = latent_cines(frames)
    t, r = torch.tensor([999, 300]), torch.tensor([0.25, 0.6])
    expected = spatial.ema.module(
        fold(noisy), t.repeat_interleave(frames), fold(below), fold(above), r.repeat_interleave(frames)
    )
    got = model.ema.module(noisy, t, below, above, r)
    torch.testing.assert_close(fold(got), expected, rtol=1e-5, atol=1e-6)
    # the whole sampler too: same noise, same steps -> the spatial model's slices, frame by frame
    noise = torch.randn(noisy.shape, generator=torch.Generator().manual_seed(3))
    model._initial_noise = lambda like, generator: noise  # type: ignore[method-assign]
    sampled = model.interpolate(below, above, r, num_steps=3)

    def spatial_predict(x: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        rr = r.repeat_interleave(frames)
        return spatial._predict(spatial.ema.module, x, step, fold(below), fold(above), rr, None)

    reference = ddim_sample(spatial_predict, spatial.ddim, fold(noise), 3)
    reference = spatial.from_diffused(reference, fold(below), fold(above), r.repeat_interleave(frames))
    torch.testing.assert_close(fold(sampled), reference, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.residual_scale, spatial.residual_scale)
    torch.testing.assert_close(model.vae.scale_factor, spatial.vae.scale_factor)


def perturb_mixers(model: CaLIDInflated) -> None:
    with torch.no_grad():
        for mixer in [*model.denoiser.mixers, *model.ema.module.mixers]:
            mixer.proj.weight.normal_(std=0.2)


def test_trained_mixers_couple_the_frames(spatial_checkpoint: Path) -> None:
    """With non-zero mixers, changing one frame's input changes the other frames' outputs; with
    ``temporal_layers=none`` it never does (frames independent)."""
    noisy, below, above = latent_cines(6, batch=1)
    t, r = torch.tensor([500]), torch.tensor([0.5])
    changed = noisy.clone()
    changed[:, :, 0] += 1.0
    model = inflated(spatial_checkpoint)
    perturb_mixers(model)
    net = model.ema.module
    diff = (net(changed, t, below, above, r) - net(noisy, t, below, above, r))[:, :, 1:].abs().max()
    assert diff > 1e-3
    plain = inflated(spatial_checkpoint, temporal_layers="none").ema.module
    assert plain.mixers == []
    diff = (plain(changed, t, below, above, r) - plain(noisy, t, below, above, r))[:, :, 1:].abs().max()
    assert diff == 0


def test_temporal_convolution_is_cyclic() -> None:
    """Rolling the frames rolls the output (frame T - 1 neighbours frame 0): no edge at the cycle's end."""
    torch.manual_seed(0)
    mixer = TemporalMixer(16, "conv", norm_num_groups=8)
    with torch.no_grad():
        mixer.proj.weight.normal_(std=0.3)
    mixer.frames = 7
    x = torch.randn(2 * 7, 16, 3, 3)
    out = mixer(x).reshape(2, 7, 16, 3, 3)
    rolled = mixer(x.reshape(2, 7, 16, 3, 3).roll(2, dims=1).reshape(14, 16, 3, 3)).reshape(2, 7, 16, 3, 3)
    torch.testing.assert_close(rolled, out.roll(2, dims=1), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out.reshape(x.shape), x)


def test_phase_encoding_is_periodic_and_any_length() -> None:
    code = phase_encoding(8, 6, torch.device("cpu"), torch.float32)
    assert code.shape == (8, 6)
    torch.testing.assert_close(code[0], torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0]))
    # frame 2 of 8 and frame 5 of 20 are the same phase of the cycle (a quarter)
    torch.testing.assert_close(code[2], phase_encoding(20, 6, torch.device("cpu"), torch.float32)[5])


@pytest.mark.parametrize("rho", [0.0, 0.5, 1.0])
def test_frame_noise_correlation(spatial_checkpoint: Path, rho: float) -> None:
    model = inflated(spatial_checkpoint, frame_noise=rho)
    like = torch.zeros(4000, 1, 2, 1, 1)
    noise = model._initial_noise(like, torch.Generator().manual_seed(0))
    a, b = noise[:, 0, 0].flatten(), noise[:, 0, 1].flatten()
    assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1]) - rho) < 0.05
    assert abs(float(noise.std()) - 1.0) < 0.05
    if rho == 1.0:
        assert torch.equal(a, b)


def train(model: CaLIDInflated, root: Path, steps: int = 4) -> Trainer:
    trainer = quiet_trainer(root, steps)
    data = DataLoader(cine_examples(4, 5), batch_size=2)
    trainer.fit(model, data, data)
    return trainer


def test_fine_tuning_trains_only_the_temporal_layers_unless_asked(
    spatial_checkpoint: Path, tmp_path: Path
) -> None:
    model = inflated(spatial_checkpoint, lr=1e-2)
    spatial_before = {
        k: v.clone() for k, v in model.denoiser.spatial.state_dict().items() if ".mixer." not in k
    }
    mixers_before = [m.proj.weight.clone() for m in model.denoiser.mixers]
    train(model, tmp_path / "frozen")
    spatial_after = model.denoiser.spatial.state_dict()
    assert all(torch.equal(v, spatial_after[k]) for k, v in spatial_before.items())
    assert all(
        not torch.equal(m.proj.weight, b) for m, b in zip(model.denoiser.mixers, mixers_before, strict=True)
    )
    model = inflated(spatial_checkpoint, lr=1e-2, spatial_lr=1e-3)
    train(model, tmp_path / "all")
    spatial_after = model.denoiser.spatial.state_dict()
    assert any(not torch.equal(v, spatial_after[k]) for k, v in spatial_before.items())


def test_checkpoint_needs_no_spatial_file(spatial_checkpoint: Path, tmp_path: Path) -> None:
    folder = tmp_path / "copy"
    folder.mkdir()
    copy = folder / "spatial.ckpt"
    copy.write_bytes(spatial_checkpoint.read_bytes())
    model = inflated(copy, lr=1e-2, frame_noise=0.5)
    trainer = train(model, tmp_path / "fit")
    path = tmp_path / "inflated.ckpt"
    trainer.save_checkpoint(path)
    copy.unlink()
    loaded = load_model(path)
    assert type(loaded) is CaLIDInflated
    assert torch.load(path, weights_only=True)[MODEL_CLASS_KEY].endswith("calid_inflated.CaLIDInflated")
    assert loaded.frame_noise == 0.5 and loaded.hparams.temporal_layers == "conv+attention"
    _, below, above = latent_cines(5, batch=1)
    r = torch.tensor([0.4])
    for net in (model, loaded):
        net.eval()
    first = model.interpolate(below, above, r, num_steps=2, generator=torch.Generator().manual_seed(0))
    again = loaded.interpolate(below, above, r, num_steps=2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again, first)


def test_bad_spatial_checkpoints(spatial_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"needs model\.init_args\.spatial_checkpoint"):
        CaLIDInflated()
    with pytest.raises(DataError, match="not found"):
        CaLIDInflated(spatial_checkpoint=str(tmp_path / "missing.ckpt"))
    vae = tiny_vae_checkpoint(tmp_path / "vae.ckpt")
    with pytest.raises(DataError, match="holds a VAEModule; spatial_checkpoint must be a CaLIDSpatial"):
        CaLIDInflated(spatial_checkpoint=str(vae))
    inflated_path = save_checkpoint(inflated(spatial_checkpoint), tmp_path / "inflated.ckpt")
    with pytest.raises(DataError, match="holds a CaLIDInflated; spatial_checkpoint must be a CaLIDSpatial"):
        CaLIDInflated(spatial_checkpoint=str(inflated_path))
    retired = {
        "state_dict": {
            "vae.x": torch.zeros(1),
            "denoiser.unet.conv_in.conv.weight": torch.zeros(1, 1, 1, 1, 1),
        }
    }
    torch.save(retired, tmp_path / "2dt.ckpt")
    with pytest.raises(DataError, match=r"holds a CaLID2DT .* retired"):
        load_model(tmp_path / "2dt.ckpt")
    with pytest.raises(ValueError, match="frame_noise must be in"):
        CaLIDInflated(spatial_checkpoint=str(spatial_checkpoint), frame_noise=1.5)
    with pytest.raises(ValueError, match="temporal_layers must be one of"):
        CaLIDInflated(spatial_checkpoint=str(spatial_checkpoint), temporal_layers="lstm")
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        CaLIDInflated(spatial_checkpoint=str(spatial_checkpoint), temporal_kernel=4)


def test_shared_noise_makes_a_static_cine_static(spatial_checkpoint: Path) -> None:
    """Frame by frame (no temporal layers): with one noise for all frames, a cine whose frames are all equal
    gives equal generated frames; with independent noise it does not."""
    model = inflated(spatial_checkpoint, temporal_layers="none").eval()
    below, above = (x[:, :, :1].expand(-1, -1, 6, -1, -1) for x in latent_cines(1, batch=2)[:2])
    r = torch.tensor([0.5, 0.3])
    model.frame_noise = 1.0
    shared = model.interpolate(below, above, r, num_steps=2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(shared, shared[:, :, :1].expand_as(shared), rtol=0, atol=1e-6)
    model.frame_noise = 0.0
    independent = model.interpolate(below, above, r, num_steps=2, generator=torch.Generator().manual_seed(0))
    assert (independent - independent[:, :, :1]).abs().max() > 1e-3


@pytest.mark.parametrize("frames", [5, 7, 25])
def test_cines_of_any_frame_count_without_padding(spatial_checkpoint: Path, frames: int) -> None:
    model = inflated(spatial_checkpoint).eval()
    assert model.time_multiple == 1 and model.size_multiple == 4 * 2 and model.task == "cine"
    cines = torch.stack([ex["target"] for ex in cine_examples(2, frames)])
    z = model.encode(cines)
    assert z.shape == (2, LATENT, frames, 4, 4)
    torch.testing.assert_close(z[:, :, 3], model.vae.encode(cines[:, :, 3]))  # frame t = the 2D latent of t
    decoded = model.decode(z)
    assert decoded.shape == cines.shape and decoded.min() >= 0 and decoded.max() <= 1
    seen: list[int] = []
    hook = model.ema.module.spatial.unet.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["x"].shape[0]), with_kwargs=True
    )
    out = model.interpolate(z, z.flip(0), torch.tensor([0.3, 0.6]), num_steps=2)
    hook.remove()
    assert out.shape == z.shape and set(seen) == {2 * frames}  # every frame an item, no padded frame


def test_size_and_layout_errors(spatial_checkpoint: Path) -> None:
    model = inflated(spatial_checkpoint)
    with pytest.raises(ValueError, match="size_multiple=8"):
        model.encode(torch.rand(1, 1, 4, 12, 12))
    with pytest.raises(ValueError, match=r"\(N, C, T, H, W\)"):
        model.encode(torch.rand(2, 1, 16, 16))
    with pytest.raises(KeyError, match="task 'cine'"):
        model._diffusion_loss({"below": torch.rand(1, 1, 4, 16, 16)})


def test_loss_counts_only_real_frames(spatial_checkpoint: Path) -> None:
    """Frames past ``frames`` (a DataModule's wrap padding) are not counted; without ``frames`` all are."""
    model = inflated(spatial_checkpoint)
    prediction, target = torch.randn(2, LATENT, 8, 4, 4), torch.randn(2, LATENT, 8, 4, 4)
    batch, ones = {"frames": torch.tensor([5, 6])}, torch.ones(2)
    errors = [
        ((prediction - target)[0, :, :5] ** 2).flatten(),
        ((prediction - target)[1, :, :6] ** 2).flatten(),
    ]
    expected = torch.cat(errors)
    torch.testing.assert_close(model._regression_loss(prediction, target, batch, ones), expected.mean())
    changed = prediction.clone()
    changed[0, :, 5:] += 10.0
    changed[1, :, 6:] += 10.0
    torch.testing.assert_close(model._regression_loss(changed, target, batch, ones), expected.mean())
    torch.testing.assert_close(
        model._regression_loss(prediction, target, {}, ones), ((prediction - target) ** 2).mean()
    )
    weighted = (0.5 * errors[0].sum() + 3.0 * errors[1].sum()) / expected.numel()  # per-item weights
    torch.testing.assert_close(
        model._regression_loss(prediction, target, batch, torch.tensor([0.5, 3.0])), weighted
    )


def test_sampling_is_deterministic_per_generator(spatial_checkpoint: Path) -> None:
    model = inflated(spatial_checkpoint).eval()
    _, below, above = latent_cines(5)
    r = torch.tensor([0.3, 0.7])
    first = model.interpolate(below, above, r, num_steps=2, generator=torch.Generator().manual_seed(1))
    again = model.interpolate(below, above, r, num_steps=2, generator=torch.Generator().manual_seed(1))
    other = model.interpolate(below, above, r, num_steps=2, generator=torch.Generator().manual_seed(2))
    assert torch.equal(first, again) and not torch.allclose(first, other)


def test_validation_logs_temporal_metrics(spatial_checkpoint: Path, tmp_path: Path) -> None:
    trainer = train(inflated(spatial_checkpoint, lr=1e-2), tmp_path)
    for key in ("val/loss", "val/psnr", "val/ssim", "val/temporal_error", "val/temporal_error_linear"):
        assert key in trainer.callback_metrics and torch.isfinite(trainer.callback_metrics[key]), key


def test_engine_upsamples_whole_cines(spatial_checkpoint: Path) -> None:
    """The engine drives the inflated model with (Z, 1, 1, T, H, W) stacks; acquired cines stay exact."""
    model = inflated(spatial_checkpoint).eval()
    stack = torch.stack([ex["target"] for ex in cine_examples(3, frames=5)])[:, None]  # (3, 1, 1, 5, 16, 16)
    result = upsample_stack(stack, factor_positions(3, 2), model, num_steps=2, seed=0)
    assert result.dense.shape == (5, 1, 1, 5, 16, 16)
    assert torch.equal(result.dense[::2], stack)
    again = upsample_stack(stack, factor_positions(3, 2), model, num_steps=2, seed=0)
    assert torch.equal(again.dense, result.dense)


def test_a_gap_conditioned_spatial_model_inflates_with_its_gap_channel(tmp_path: Path) -> None:
    """The inflated model keeps the spatial model's gap channel: untrained it is still the spatial model
    frame by frame for the same gap, and it needs gap_mm like the spatial model does."""
    vae = tiny_vae_checkpoint(tmp_path / "vae.ckpt")
    torch.manual_seed(0)
    spatial = CaLIDSpatial(vae_checkpoint=str(vae), **TINY_UNET, gap_conditioning=True, gap_unit_mm=5.0)
    with torch.no_grad():
        for p in spatial.ema.module.parameters():
            p.normal_(std=0.05)
    model = inflated(save_checkpoint(spatial, tmp_path / "spatial.ckpt")).eval()
    assert model.gap_conditioning and model.gap_unit_mm == 5.0
    noisy, below, above = latent_cines(4)
    t, r, gap = torch.tensor([999, 300]), torch.tensor([0.25, 0.6]), torch.tensor([1.0, 2.0])
    expected = spatial.ema.module(
        fold(noisy),
        t.repeat_interleave(4),
        fold(below),
        fold(above),
        r.repeat_interleave(4),
        gap.repeat_interleave(4),
    )
    torch.testing.assert_close(
        fold(model.ema.module(noisy, t, below, above, r, gap)), expected, rtol=1e-5, atol=1e-6
    )
    assert (
        model.interpolate(below, above, r, num_steps=2, gap_mm=torch.tensor([5.0, 10.0])).shape == below.shape
    )
    with pytest.raises(ValueError, match="pass gap_mm"):
        model.interpolate(below, above, r, num_steps=2)
