"""VAE stage: shapes, training, adversarial path, the latent scale factor and its checkpoint round trip."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from calid_lightning.errors import DataError
from calid_lightning.experiment_config import compose
from calid_lightning.models.checkpoints import load_model
from calid_lightning.models.vae import VAEModule

REPO = Path(__file__).resolve().parents[2]
TINY = {"channels": (8, 16, 16), "latent_channels": 3, "norm_num_groups": 8, "num_res_blocks": 1}


def blobs(n: int = 16, size: int = 32, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Bright ellipses on a dark background with a soft edge: a tiny, fixed stand-in for SAX slices."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    items = []
    for _ in range(n):
        cy, cx = (torch.rand(2, generator=g) - 0.5).tolist()
        ry, rx = (0.25 + 0.35 * torch.rand(2, generator=g)).tolist()
        r = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
        image = 0.1 + 0.8 * torch.sigmoid((1 - r) * 8)
        items.append({"image": image[None].float()})
    return items


def loader(batch_size: int = 4, **kwargs) -> DataLoader:
    return DataLoader(blobs(**kwargs), batch_size=batch_size, shuffle=False)


def trainer(max_steps: int, **kwargs) -> Trainer:
    defaults = {
        "accelerator": "cpu",
        "devices": 1,
        "max_steps": max_steps,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "limit_val_batches": 0,
    }
    return Trainer(**{**defaults, **kwargs})


class RecordLosses(Callback):
    def __init__(self, key: str) -> None:
        self.key, self.values = key, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.values.append(float(trainer.callback_metrics[self.key]))


def test_shapes_and_size_check() -> None:
    model = VAEModule(**TINY).eval()
    assert model.downsample_factor == 4 and model.latent_channels == 3
    x = torch.rand(2, 1, 32, 16)
    with torch.no_grad():
        z = model.encode(x)
        assert z.shape == (2, 3, 8, 4)
        assert model.decode(z).shape == x.shape
        assert model(x).shape == x.shape
    with pytest.raises(ValueError, match="not divisible by the VAE downsampling factor 4"):
        model.encode(torch.rand(1, 1, 30, 32))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        model.encode(torch.rand(1, 2, 32, 32))


def test_training_loss_falls_and_validation_logs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = VAEModule(**TINY, lr=3e-3, log_images=2)
    images: list[dict] = []

    class ImageLogger(CSVLogger):
        def log_image(self, **kwargs) -> None:
            images.append(kwargs)

    record = RecordLosses("train/l1")
    fit = trainer(
        40, callbacks=[record], logger=ImageLogger(tmp_path), limit_val_batches=1, check_val_every_n_epoch=5
    )
    fit.fit(model, loader(), loader())
    first, last = sum(record.values[:5]) / 5, sum(record.values[-5:]) / 5
    assert last < 0.7 * first, (first, last)
    assert {"val/l1", "val/psnr", "val/loss"} <= set(fit.callback_metrics)
    assert float(fit.callback_metrics["val/psnr"]) > 10.0
    grid = images[-1]["images"][0]
    assert grid.shape == (2 * 32, 2 * 32)  # two rows of input | reconstruction


@pytest.mark.parametrize(("recon_loss", "error"), [("l1", torch.abs), ("mse", torch.square)])
def test_reconstruction_loss_is_the_chosen_error(recon_loss: str, error) -> None:
    torch.manual_seed(0)
    model = VAEModule(**TINY, recon_loss=recon_loss, kl_weight=0.0)
    x = torch.rand(2, 1, 16, 16)
    loss, recon, parts = model._generator_loss(x, adversarial=False)
    assert set(parts) == {recon_loss, "kl", "loss"}
    torch.testing.assert_close(loss, error(recon - x).mean())
    with pytest.raises(ValueError, match="recon_loss: expected one of"):
        VAEModule(**TINY, recon_loss="l2")


def test_adversarial_path_steps_both_optimizers() -> None:
    torch.manual_seed(0)
    model = VAEModule(
        **TINY, adv_weight=0.1, adv_warmup_steps=2, disc_channels=8, disc_layers=2, grad_clip_norm=1.0
    )
    assert not model.automatic_optimization
    disc_before = [p.detach().clone() for p in model.discriminator.parameters()]
    record = RecordLosses("train/loss")
    fit = trainer(8, callbacks=[record])
    fit.fit(model, loader())
    # 2 warm-up batches (autoencoder only, one global step each), then 3 batches with both optimizers.
    assert fit.global_step == 8 and len(record.values) == 5
    opt_g, opt_d = (opt.optimizer for opt in model.optimizers())
    steps = [int(next(iter(opt.state.values()))["step"]) for opt in (opt_g, opt_d)]
    assert steps == [5, 3]
    assert any(
        not torch.equal(a, b) for a, b in zip(disc_before, model.discriminator.parameters(), strict=True)
    )
    assert {"train/adv_d", "train/adv_g"} <= set(fit.callback_metrics)
    assert torch.isfinite(fit.callback_metrics["train/adv_d"])


def latent_std(model: VAEModule, data: list[dict]) -> float:
    with torch.no_grad():
        x = torch.cat([item["image"][None] for item in data])
        return float(model.autoencoder.encode(x)[0].double().std())


def test_scale_factor_after_fit_is_in_last_checkpoint_and_load_frozen(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = VAEModule(**TINY, lr=1e-3)
    checkpoints = ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=1, save_top_k=-1)
    fit = trainer(6, callbacks=[checkpoints], enable_checkpointing=True, limit_val_batches=1)
    fit.fit(model, loader(), loader())

    assert bool(model.scale_factor_computed)
    expected = 1.0 / latent_std(model.eval(), blobs())  # 16 images = 4 batches < scale_factor_batches
    assert float(model.scale_factor) == pytest.approx(expected, rel=1e-5)
    assert expected != pytest.approx(1.0, rel=1e-2)

    state = torch.load(tmp_path / "last.ckpt", weights_only=False)["state_dict"]
    assert bool(state["scale_factor_computed"])
    assert float(state["scale_factor"]) == pytest.approx(expected, rel=1e-5)
    final_step = torch.load(next(tmp_path.glob("*step=6.ckpt")), weights_only=False)["state_dict"]
    assert bool(final_step["scale_factor_computed"])

    vae = load_model(tmp_path / "last.ckpt", VAEModule)
    assert not vae.training and not any(p.requires_grad for p in vae.parameters())
    assert float(vae.scale_factor) == pytest.approx(expected, rel=1e-5)
    x = torch.cat([item["image"][None] for item in blobs(4, seed=1)])
    with torch.no_grad():
        mu = vae.autoencoder.encode(x)[0]
        z = vae.encode(x)
        torch.testing.assert_close(z, mu * expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(vae.decode(z), vae.autoencoder.decode(mu), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(vae.decode(z), vae.autoencoder.reconstruct(x), rtol=1e-4, atol=1e-5)
        assert float(z.std()) == pytest.approx(1.0, abs=0.3)

    intermediate = next(tmp_path.glob("*step=1.ckpt"))
    with pytest.raises(DataError, match="scale_factor was never computed"):
        load_model(intermediate, VAEModule)


def test_scale_factor_when_training_stops_early(tmp_path: Path) -> None:
    class StopAfterTwo(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.global_step >= 2:
                trainer.should_stop = True

    model = VAEModule(**TINY)
    checkpoints = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    fit = trainer(50, callbacks=[StopAfterTwo(), checkpoints], enable_checkpointing=True)
    fit.fit(model, loader())
    assert fit.global_step == 2
    vae = load_model(tmp_path / "last.ckpt", VAEModule)
    assert float(vae.scale_factor) == pytest.approx(1.0 / latent_std(vae, blobs()), rel=1e-5)


def test_scale_factor_uses_at_most_scale_factor_batches() -> None:
    model = VAEModule(**TINY, scale_factor_batches=1).eval()
    data = blobs(8)
    model.compute_scale_factor(DataLoader(data, batch_size=4))
    assert float(model.scale_factor) == pytest.approx(1.0 / latent_std(model, data[:4]), rel=1e-5)


def test_perceptual_weights_missing_file_raises(tmp_path: Path) -> None:
    missing = tmp_path / "resnet50.pth"
    with pytest.raises(FileNotFoundError, match=r"resnet50\.pth.*ResNet-50.*perceptual_weights: null"):
        VAEModule(**TINY, perceptual_weights=str(missing))


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="torchvision is installed")
def test_perceptual_weights_without_torchvision_raises(tmp_path: Path) -> None:
    weights = tmp_path / "resnet50.pth"
    torch.save({}, weights)
    with pytest.raises(ImportError, match="needs torchvision"):
        VAEModule(**TINY, perceptual_weights=str(weights))


class EncoderAtStep(Callback):
    """The encoder's and decoder's weights when the training batch at ``global_step == step`` starts."""

    def __init__(self, step: int) -> None:
        self.step, self.encoder, self.decoder = step, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            self.encoder = _state(pl_module, ENCODER)
            self.decoder = _state(pl_module, DECODER)


ENCODER = ("encoder.", "quant_conv_")
DECODER = ("decoder.", "post_quant_conv.")
"""The autoencoder's state-dict prefixes of each half."""


def _state(model: VAEModule, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """A copy of the autoencoder's tensors whose names start with one of ``prefixes``."""
    return {
        k: v.detach().clone() for k, v in model.autoencoder.state_dict().items() if k.startswith(prefixes)
    }


@pytest.mark.parametrize("adversarial", [False, True])
def test_frozen_encoder_trains_the_decoder_alone(adversarial: bool) -> None:
    torch.manual_seed(0)
    extra = (
        {"adv_weight": 0.1, "adv_warmup_steps": 3, "disc_channels": 8, "disc_layers": 2}
        if adversarial
        else {}
    )
    model = VAEModule(**TINY, lr=3e-3, freeze_encoder_at=3, **extra)
    at_freeze, at_start = EncoderAtStep(3), EncoderAtStep(0)
    trainer(9, callbacks=[at_start, at_freeze]).fit(model, loader())
    assert at_freeze.encoder is not None
    # Before the freeze the encoder learned; from it on its weights (so the latents) are those of step 3.
    assert any(not torch.equal(at_start.encoder[k], v) for k, v in at_freeze.encoder.items())
    for key, value in _state(model, ENCODER).items():
        assert torch.equal(value, at_freeze.encoder[key]), key
    assert any(not torch.equal(at_freeze.decoder[k], v) for k, v in _state(model, DECODER).items())


def test_frozen_encoder_loss_is_the_decoded_mean_error() -> None:
    torch.manual_seed(0)
    model = VAEModule(**TINY, freeze_encoder_at=0)
    x = torch.rand(2, 1, 16, 16)
    loss, recon, parts = model._generator_loss(x, adversarial=False)
    assert set(parts) == {"l1", "loss"}  # no KL: the encoder is fixed
    torch.testing.assert_close(recon, model.autoencoder.decode(model.autoencoder.encode(x)[0]))
    torch.testing.assert_close(loss, (recon - x).abs().mean())
    with pytest.raises(ValueError, match="freeze_encoder_at: expected a step >= 0"):
        VAEModule(**TINY, freeze_encoder_at=-1)


def test_adversarial_bf16_mixed_with_clipping_runs() -> None:
    """The paper profile's combination: manual optimization, bf16 autocast, gradient clipping by hand."""
    model = VAEModule(
        **TINY, adv_weight=0.1, adv_warmup_steps=1, disc_channels=8, disc_layers=2, grad_clip_norm=0.5
    )
    fit = trainer(5, precision="bf16-mixed")
    fit.fit(model, loader())
    assert fit.global_step == 5
    assert all(torch.isfinite(fit.callback_metrics[k]) for k in ("train/loss", "train/adv_d", "train/adv_g"))
    assert bool(model.scale_factor_computed) and model.scale_factor.dtype == torch.float32


def test_experiment_configs_build_the_model() -> None:
    quick = compose(REPO / "experiments/vae.yaml")
    paper = compose(REPO / "experiments/profiles/paper/vae.yaml")
    assert quick["model"]["class_path"] == "calid_lightning.models.vae.VAEModule"
    model = VAEModule(**quick["model"]["init_args"])
    assert model.downsample_factor == 4 and model.discriminator is None
    paper_model = VAEModule(**{**quick["model"]["init_args"], **paper["model"]["init_args"]})
    assert paper_model.downsample_factor == 4 and paper_model.discriminator is not None
    assert paper["trainer"]["precision"] == "bf16-mixed"


DDP_SCRIPT = """
import sys
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader
from calid_lightning.models.vae import VAEModule

out = sys.argv[1]
torch.manual_seed(0)
data = torch.load(out + "/data.pt")
model = VAEModule(channels=(8, 16, 16), latent_channels=3, norm_num_groups=8)
trainer = Trainer(
    accelerator="cpu", devices=2, strategy="ddp", max_steps=2, logger=False, enable_progress_bar=False,
    enable_model_summary=False, callbacks=[ModelCheckpoint(dirpath=out, save_last=True)],
)
trainer.fit(model, DataLoader(data, batch_size=2, shuffle=False))
torch.save(float(model.scale_factor), f"{out}/factor_rank{trainer.global_rank}.pt")
"""


@pytest.mark.ddp
def test_scale_factor_is_reduced_over_ddp_ranks(tmp_path: Path) -> None:
    """Two CPU ranks see disjoint halves of the data; both must end with 1 / std over all of it."""
    import subprocess
    import sys

    data = blobs(8)
    torch.save(data, tmp_path / "data.pt")
    script = tmp_path / "ddp_vae.py"
    script.write_text(DDP_SCRIPT)
    subprocess.run([sys.executable, str(script), str(tmp_path)], check=True, timeout=300, cwd=tmp_path)
    factors = [torch.load(tmp_path / f"factor_rank{rank}.pt") for rank in (0, 1)]
    vae = load_model(tmp_path / "last.ckpt", VAEModule)
    expected = 1.0 / latent_std(vae, data)
    assert factors[0] == pytest.approx(expected, rel=1e-5) and factors[1] == pytest.approx(expected, rel=1e-5)
    per_rank = [1.0 / latent_std(vae, data[rank::2]) for rank in (0, 1)]
    assert all(f != pytest.approx(expected, rel=1e-3) for f in per_rank)  # the test can tell the difference


@pytest.mark.parametrize("adversarial", [False, True])
def test_cosine_decay_ends_at_a_tenth_of_the_rate_at_max_steps(adversarial: bool) -> None:
    """Automatic and manual optimisation both step the autoencoder's schedule once per generator step."""
    torch.manual_seed(0)
    extra = {"adv_weight": 0.1, "disc_channels": 8, "disc_layers": 2} if adversarial else {}
    model = VAEModule(**TINY, lr=1e-3, lr_warmup_steps=2, lr_decay="cosine", **extra)
    fit = trainer(8 if adversarial else 4)
    fit.fit(model, loader())
    optimizer = model.optimizers()[0] if adversarial else model.optimizers()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)
    if adversarial:
        assert model.optimizers()[1].param_groups[0]["lr"] == pytest.approx(1e-3), (
            "the discriminator's is kept"
        )
    with pytest.raises(ValueError, match="lr_decay must be one of"):
        VAEModule(**TINY, lr_decay="step")


class RecordRate(Callback):
    def __init__(self) -> None:
        self.rates: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        optimizer = trainer.optimizers[0]
        self.rates.append(optimizer.param_groups[0]["lr"])


@pytest.mark.parametrize("adversarial", [False, True])
def test_cosine_decay_ends_where_the_encoder_freezes(adversarial: bool) -> None:
    """The joint phase anneals as a run of ``freeze_encoder_at`` steps would; the decoder then trains at
    a tenth of the rate (each batch after the adversarial start counts two global steps)."""
    torch.manual_seed(0)
    extra = (
        {"adv_weight": 0.1, "adv_warmup_steps": 4, "disc_channels": 8, "disc_layers": 2}
        if adversarial
        else {}
    )
    model = VAEModule(**TINY, lr=1e-3, lr_decay="cosine", freeze_encoder_at=4, **extra)
    record = RecordRate()
    trainer(10 if adversarial else 7, callbacks=[record]).fit(model, loader())
    # Batches 0-3 at the cosine of a 4-step run (the 4th at 1e-4), then 3 decoder batches at 1e-4.
    expected = [1e-3 * (0.1 + 0.45 * (1 + math.cos(math.pi * s / 3))) for s in range(4)] + [1e-4] * 3
    assert record.rates == pytest.approx(expected)
