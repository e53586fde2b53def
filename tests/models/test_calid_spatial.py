"""CaLID spatial interpolator: parts, zero-initialised injection, training, EMA, sampling, checkpoints.

Tiny sizes: 16x16 images -> 4x4 latents (VAE factor 4), U-Net channels (16, 32).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.cli import LightningCLI
from torch.utils.data import DataLoader

from calid_lightning.models.calid_spatial import CaLIDSpatial
from calid_lightning.models.conditioning import ConditionalDenoiser, condition_input
from calid_lightning.models.diffusion import ddim_sample, make_schedulers, randn_like_from, training_target
from checkpoints import TINY_UNET, quiet_trainer, tiny_vae_checkpoint

SIZE = 16
LATENT = 4


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread avoids OpenMP barrier stalls (100x) on a loaded 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def disc_slice(radius: float, size: int = SIZE) -> torch.Tensor:
    """A bright disc on a dark background, (1, size, size) in [0, 1]."""
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    dist = (coords[:, None] ** 2 + coords[None, :] ** 2).sqrt()
    return (0.1 + 0.8 * torch.sigmoid(2.0 * (radius - dist))).unsqueeze(0)


def spatial_examples(n: int = 16) -> list[dict[str, torch.Tensor]]:
    """(below, above, target, r) tuples of a disc whose radius changes linearly through the stack."""
    examples = []
    for i in range(n):
        r_below, r_above = 2.0 + 0.25 * i, 6.0 - 0.1 * i
        r = torch.tensor(0.2 + 0.6 * (i % 4) / 3)
        examples.append(
            {
                "below": disc_slice(r_below),
                "above": disc_slice(r_above),
                "target": disc_slice(float((1 - r) * r_below + r * r_above)),
                "r": r,
            }
        )
    return examples


def loader(shuffle: bool = False) -> DataLoader:
    return DataLoader(spatial_examples(), batch_size=8, shuffle=shuffle)


@pytest.fixture(scope="module")
def vae_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny VAE (factor 4, 4 latent channels) with a computed scale factor, as a Lightning checkpoint."""
    images = torch.stack([ex["target"] for ex in spatial_examples()])
    return tiny_vae_checkpoint(tmp_path_factory.mktemp("vae") / "vae.ckpt", images)


def make_model(vae_checkpoint: Path, **kwargs: object) -> CaLIDSpatial:
    torch.manual_seed(0)
    args = {**TINY_UNET, "num_inference_steps": 4, "val_inference_steps": 3, "lr": 2e-3, "ema_decay": 0.9}
    return CaLIDSpatial(vae_checkpoint=str(vae_checkpoint), **{**args, **kwargs})


def fixed_loss(model: CaLIDSpatial, batch: dict[str, torch.Tensor]) -> float:
    """Diffusion loss at seeded timesteps and noise, averaged over a few seeds."""
    with torch.no_grad():
        losses = [model._diffusion_loss(batch, torch.Generator().manual_seed(s))[0] for s in range(8)]
    return float(torch.stack(losses).mean())


@pytest.fixture(scope="module")
def trained(vae_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A model trained for a few dozen steps, with its loss before and after and the trainer."""
    model = make_model(vae_checkpoint)
    batch = next(iter(loader()))
    before = fixed_loss(model, batch)
    trainer = quiet_trainer(tmp_path_factory.mktemp("fit"), 40)
    trainer.fit(model, loader(shuffle=True), loader())
    return {"model": model, "trainer": trainer, "before": before, "after": fixed_loss(model, batch)}


def test_condition_input_stacks_neighbours_and_r() -> None:
    below, above = torch.randn(2, LATENT, 4, 4), torch.randn(2, LATENT, 4, 4)
    cond = condition_input(below, above, torch.tensor([0.25, 0.75]))
    assert cond.shape == (2, 2 * LATENT + 1, 4, 4)
    assert torch.equal(cond[:, :LATENT], below) and torch.equal(cond[:, LATENT : 2 * LATENT], above)
    assert torch.all(cond[0, -1] == 0.25) and torch.all(cond[1, -1] == 0.75)


def test_part_shapes() -> None:
    net = ConditionalDenoiser(LATENT, **TINY_UNET)
    noisy, below, above = (torch.randn(3, LATENT, 4, 4) for _ in range(3))
    r, t = torch.rand(3), torch.tensor([0, 500, 999])
    cond = condition_input(below, above, r)
    assert net.condition_encoder(cond).shape == (3, TINY_UNET["channels"][0], 4, 4)
    down, mid = net.residuals(torch.cat([noisy, cond], 1), t, cond)
    # one residual per U-Net skip: conv_in, one per res block and one per downsampler
    assert [tuple(d.shape[1:]) for d in down] == [(16, 4, 4), (16, 4, 4), (16, 2, 2), (32, 2, 2)]
    assert mid.shape == (3, 32, 2, 2)
    assert net(noisy, t, below, above, r).shape == (3, LATENT, 4, 4)


def test_injection_is_zero_at_init_and_live_after_perturbation() -> None:
    torch.manual_seed(0)
    net = ConditionalDenoiser(LATENT, **TINY_UNET)
    for p in net.unet.out.parameters():  # the U-Net's zero-initialised output would hide any difference
        torch.nn.init.normal_(p, std=0.1)
    noisy, below, above = (torch.randn(2, LATENT, 4, 4) for _ in range(3))
    r, t = torch.tensor([0.3, 0.6]), torch.tensor([10, 700])
    plain = net.unet(torch.cat([noisy, condition_input(below, above, r)], 1), t)
    assert plain.abs().max() > 0
    torch.testing.assert_close(net(noisy, t, below, above, r), plain, rtol=0, atol=0)
    # the ControlNet starts as a copy of the U-Net's encoder
    torch.testing.assert_close(net.controlnet.conv_in.conv.weight, net.unet.conv_in.conv.weight)
    with torch.no_grad():
        torch.nn.init.normal_(net.controlnet.controlnet_mid_block.conv.weight, std=0.1)
    assert not torch.allclose(net(noisy, t, below, above, r), plain)


def test_no_injection_builds_no_controlnet() -> None:
    net = ConditionalDenoiser(LATENT, injection=False, **TINY_UNET)
    assert net.controlnet is None and not net.injection
    assert not any("controlnet" in name for name, _ in net.named_parameters())
    latents = torch.randn(2, LATENT, 4, 4)
    assert net(latents, torch.tensor([1, 2]), latents, latents, torch.rand(2)).shape == (2, LATENT, 4, 4)


def test_schedulers_do_not_clip_latents(vae_checkpoint: Path) -> None:
    model = make_model(vae_checkpoint)
    assert model.ddpm.clip_sample is False and model.ddim.clip_sample is False
    assert model.ddpm.prediction_type == model.ddim.prediction_type == "v_prediction"
    assert model.size_multiple == 4 * 2


def test_encode_decode_and_size_check(vae_checkpoint: Path) -> None:
    model = make_model(vae_checkpoint)
    images = torch.stack([ex["target"] for ex in spatial_examples(4)])
    z = model.encode(images)
    assert z.shape == (4, LATENT, 4, 4)
    decoded = model.decode(z)
    assert decoded.shape == images.shape and decoded.min() >= 0 and decoded.max() <= 1
    with pytest.raises(ValueError, match="size_multiple=8"):
        model.encode(torch.rand(1, 1, 12, 12))


def test_missing_vae_checkpoint_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"model\.vae_checkpoint"):
        CaLIDSpatial(**TINY_UNET)


def test_sampling_is_deterministic_per_generator(vae_checkpoint: Path) -> None:
    model = make_model(vae_checkpoint)
    with torch.no_grad():  # a non-zero U-Net output so the chain depends on the model
        for p in model.ema.module.unet.out.parameters():
            p.normal_(std=0.1)
    below, above = torch.randn(2, LATENT, 4, 4), torch.randn(2, LATENT, 4, 4)
    r = torch.tensor([0.3, 0.7])
    first = model.interpolate(below, above, r, generator=torch.Generator().manual_seed(1))
    again = model.interpolate(below, above, r, generator=torch.Generator().manual_seed(1))
    other = model.interpolate(below, above, r, generator=torch.Generator().manual_seed(2))
    assert first.shape == (2, LATENT, 4, 4)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
    assert model.interpolate(below, above, 0.5, num_steps=2).shape == (2, LATENT, 4, 4)


def test_training_lowers_the_loss_and_logs_metrics(trained: dict[str, object]) -> None:
    assert trained["after"] < 0.7 * trained["before"], (trained["before"], trained["after"])
    metrics = trained["trainer"].callback_metrics
    for key in ("train/loss_epoch", "val/loss", "val/psnr", "val/ssim", "val/psnr_linear"):
        assert key in metrics and torch.isfinite(metrics[key]), key


def test_vae_is_frozen_and_outside_the_optimizer(trained: dict[str, object]) -> None:
    model: CaLIDSpatial = trained["model"]
    vae_params = list(model.vae.parameters())
    assert vae_params and all(not p.requires_grad and p.grad is None for p in vae_params)
    optimised = {id(p) for group in model.trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimised == {id(p) for p in model.denoiser.parameters()}
    assert not optimised & {id(p) for p in [*vae_params, *model.ema.parameters()]}
    assert model.trainer.optimizers[0].defaults["fused"] is True  # models/optimizers.py
    model.train()
    assert not model.vae.training and model.denoiser.training


def test_ema_differs_from_raw_weights_and_drives_sampling(trained: dict[str, object]) -> None:
    model: CaLIDSpatial = trained["model"]
    assert int(model.ema.num_updates) == 40
    raw, ema = dict(model.denoiser.named_parameters()), dict(model.ema.module.named_parameters())
    assert raw.keys() == ema.keys()
    assert any(not torch.allclose(raw[k], ema[k]) for k in raw)
    below, above, r = torch.randn(2, LATENT, 4, 4), torch.randn(2, LATENT, 4, 4), torch.tensor([0.4, 0.6])
    reference = model.interpolate(below, above, r, generator=torch.Generator().manual_seed(0))
    saved = {k: v.clone() for k, v in model.denoiser.state_dict().items()}
    with torch.no_grad():
        for p in model.denoiser.parameters():
            p.add_(1.0)
    assert torch.equal(
        model.interpolate(below, above, r, generator=torch.Generator().manual_seed(0)), reference
    )
    model.denoiser.load_state_dict(saved)


def test_checkpoint_round_trip_without_the_vae_file(
    trained: dict[str, object], vae_checkpoint: Path, tmp_path: Path
) -> None:
    model: CaLIDSpatial = trained["model"]
    path = tmp_path / "calid.ckpt"
    trained["trainer"].save_checkpoint(path)
    moved = vae_checkpoint.rename(vae_checkpoint.with_suffix(".moved"))
    try:
        loaded = CaLIDSpatial.load_from_checkpoint(path, map_location="cpu")
    finally:
        moved.rename(vae_checkpoint)
    assert float(loaded.vae.scale_factor) == float(model.vae.scale_factor) != 1.0
    assert bool(loaded.vae.scale_factor_computed) and loaded.vae.discriminator is None
    below, above, r = torch.randn(2, LATENT, 4, 4), torch.randn(2, LATENT, 4, 4), torch.tensor([0.4, 0.6])
    expected = model.interpolate(below, above, r, generator=torch.Generator().manual_seed(3))
    actual = loaded.interpolate(below, above, r, generator=torch.Generator().manual_seed(3))
    assert torch.equal(actual, expected)
    images = torch.stack([ex["target"] for ex in spatial_examples(2)])
    assert torch.equal(loaded.encode(images), model.encode(images))


def test_lightning_cli_builds_the_vae_with_its_own_hparams(vae_checkpoint: Path, tmp_path: Path) -> None:
    """LightningCLI hands the outer module's hparams to any nested save_hyperparameters unless isolated."""
    args = [f"--model.{k}={json.dumps(v)}" for k, v in TINY_UNET.items()]
    cli = LightningCLI(
        CaLIDSpatial,
        run=False,
        args=[f"--model.vae_checkpoint={vae_checkpoint}", *args],
        save_config_callback=None,
        trainer_defaults={"default_root_dir": str(tmp_path), "logger": False},
    )
    assert tuple(cli.model.vae.hparams["channels"]) == (8, 8, 8)
    assert tuple(cli.model.hparams["vae_hparams"]["channels"]) == (8, 8, 8)
    assert "_instantiator" in cli.model.hparams


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_with_an_oracle_recovers_unclipped_latents(prediction_type: str) -> None:
    """A model predicting the exact noise/velocity towards x0 must lead DDIM to x0, even outside [-1, 1]."""
    ddpm, ddim = make_schedulers(prediction_type=prediction_type)
    clean = 3.0 * torch.randn(2, LATENT, 4, 4)
    alphas = ddim.alphas_cumprod

    def oracle(sample: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = alphas[t].reshape(-1, 1, 1, 1)
        noise = (sample - a.sqrt() * clean) / (1 - a).sqrt()
        return training_target(ddpm, clean, noise, t)

    out = ddim_sample(oracle, ddim, randn_like_from(clean, torch.Generator().manual_seed(0)), num_steps=10)
    torch.testing.assert_close(out, clean, rtol=1e-4, atol=1e-4)
    assert clean.abs().max() > 1.5


def test_training_target_and_prediction_type_check() -> None:
    clean, noise, t = torch.randn(2, LATENT, 4, 4), torch.randn(2, LATENT, 4, 4), torch.tensor([0, 999])
    ddpm, _ = make_schedulers(prediction_type="epsilon")
    assert torch.equal(training_target(ddpm, clean, noise, t), noise)
    ddpm, _ = make_schedulers(prediction_type="v_prediction")
    a = ddpm.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    torch.testing.assert_close(
        training_target(ddpm, clean, noise, t), a.sqrt() * noise - (1 - a).sqrt() * clean
    )
    with pytest.raises(ValueError, match="prediction_type"):
        make_schedulers(prediction_type="x0")


def test_resume_reproduces_the_uninterrupted_run(vae_checkpoint: Path, tmp_path: Path) -> None:
    """4 + 4 steps with a checkpoint in between give the weights and EMA of 8 uninterrupted steps.

    One batch per epoch: Lightning's own resume bookkeeping of the data order is not what is tested here.
    """

    def fit(max_steps: int, ckpt_path: Path | None = None) -> Trainer:
        seed_everything(0)
        trainer = quiet_trainer(tmp_path, max_steps, limit_val_batches=0)
        trainer.fit(
            make_model(vae_checkpoint), DataLoader(spatial_examples(), batch_size=16), ckpt_path=ckpt_path
        )
        return trainer

    straight = fit(8).lightning_module
    fit(4).save_checkpoint(tmp_path / "half.ckpt")
    resumed = fit(8, tmp_path / "half.ckpt").lightning_module
    assert int(resumed.ema.num_updates) == int(straight.ema.num_updates) == 8
    for (name, expected), actual in zip(
        straight.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(actual, expected, rtol=0, atol=0, msg=name)


def test_concatenation_only_model_trains_and_samples(vae_checkpoint: Path) -> None:
    model = make_model(vae_checkpoint, injection=False)
    assert model.denoiser.controlnet is None and model.ema.module.controlnet is None
    loss, (below, above, _, r) = model._diffusion_loss(next(iter(loader())))
    loss.backward()
    assert all(p.grad is not None for p in model.denoiser.unet.parameters())
    assert model.interpolate(below, above, r, num_steps=2).shape == below.shape


class EaseInOracle(torch.nn.Module):
    """An analytic denoiser: its clean-sample estimate is ``below + r**2 (above - below)`` (not symmetric in
    below/above, not linear in r), returned as the prediction type the model expects at x_t."""

    def __init__(self, model: CaLIDSpatial) -> None:
        super().__init__()
        self.model = [model]  # not a sub-module

    def forward(self, noisy, t, below, above, r, gap=None):
        model = self.model[0]
        w = r.reshape(-1, *([1] * (below.ndim - 1)))
        shift = 0.0 if gap is None else gap.reshape(w.shape)  # a gap-conditioned oracle adds the gap
        clean = model.to_diffused(below + w**2 * (above - below) + shift, below, above, r)
        alpha = model.ddim.alphas_cumprod[t].reshape(w.shape).float()
        a, b = alpha.sqrt(), (1 - alpha).sqrt()
        eps = (noisy - a * clean) / b
        kind = model.ddim.prediction_type
        return {"epsilon": eps, "v_prediction": a * eps - b * clean, "sample": clean}[kind]


@pytest.mark.parametrize("residual", [False, True])
def test_interpolate_passes_below_above_and_r_to_the_denoiser_in_order(
    vae_checkpoint: Path, residual: bool
) -> None:
    """With an analytic denoiser DDIM lands on its clean estimate: swapping below/above or ignoring r in the
    sampling path (e.g. always 0.5) changes the result."""
    model = make_model(vae_checkpoint, residual=residual)
    if residual:
        model.residual_scale.fill_(2.0)
    model.ema.module = EaseInOracle(model)
    below, above = torch.randn(2, LATENT, 4, 4), torch.randn(2, LATENT, 4, 4)
    r = torch.tensor([0.25, 0.8])
    expected = below + r.reshape(-1, 1, 1, 1) ** 2 * (above - below)
    for steps in (1, 3):
        out = model.interpolate(below, above, r, num_steps=steps, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    one_r = model.interpolate(below[:1], above[:1], 0.25, num_steps=2)  # one r for the whole batch
    torch.testing.assert_close(one_r, expected[:1], atol=1e-4, rtol=1e-4)


def test_a_gap_conditioned_model_gets_each_items_gap_in_units_of_gap_unit_mm(vae_checkpoint: Path) -> None:
    """The oracle adds the gap channel's value to its estimate: 5 mm and 20 mm at gap_unit_mm 10 add 0.5
    and 2.0 per item; without gap_mm the model refuses, naming what to pass."""
    model = make_model(vae_checkpoint, gap_conditioning=True, gap_unit_mm=10.0)
    assert model.denoiser.condition_channels == 2 * LATENT + 2
    model.ema.module = EaseInOracle(model)
    below, above = torch.randn(2, LATENT, 4, 4), torch.randn(2, LATENT, 4, 4)
    r = torch.tensor([0.25, 0.8])
    expected = (
        below + r.reshape(-1, 1, 1, 1) ** 2 * (above - below) + torch.tensor([0.5, 2.0]).reshape(-1, 1, 1, 1)
    )
    out = model.interpolate(below, above, r, num_steps=2, gap_mm=torch.tensor([5.0, 20.0]))
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="trained with gap_conditioning: pass gap_mm"):
        model.interpolate(below, above, r, num_steps=2)


def test_a_gap_conditioned_model_trains_on_the_batch_gap_and_refuses_a_batch_without_it(
    vae_checkpoint: Path,
) -> None:
    model = make_model(vae_checkpoint, gap_conditioning=True)
    batch = next(iter(loader()))
    with pytest.raises(ValueError, match="pass gap_mm"):
        model._diffusion_loss(batch)
    near = {**batch, "gap_mm": torch.full((8,), 5.0)}
    far = {**batch, "gap_mm": torch.full((8,), 10.0)}
    loss, _ = model._diffusion_loss(near, torch.Generator().manual_seed(0))
    loss.backward()
    assert model.denoiser.unet.conv_in.conv.weight.grad is not None
    with torch.no_grad():
        for p in model.denoiser.parameters():  # the zero-initialised output convolution comes alive
            p.add_(0.05 * torch.randn_like(p))
        losses = [float(model._diffusion_loss(b, torch.Generator().manual_seed(0))[0]) for b in (near, far)]
    assert losses[0] != pytest.approx(losses[1]), "the batch gap reaches the denoiser"
    with pytest.raises(ValueError, match="gap_unit_mm must be > 0"):
        make_model(vae_checkpoint, gap_unit_mm=0.0)


def test_min_snr_weighting_changes_the_loss_and_bad_weightings_are_refused(vae_checkpoint: Path) -> None:
    batch = next(iter(loader()))
    losses = []
    for weighting in ("uniform", "min_snr"):
        model = make_model(vae_checkpoint, loss_weighting=weighting)
        losses.append(float(model._diffusion_loss(batch, torch.Generator().manual_seed(0))[0]))
    assert losses[0] != pytest.approx(losses[1])
    with pytest.raises(ValueError, match="loss_weighting must be one of"):
        make_model(vae_checkpoint, loss_weighting="p2")
