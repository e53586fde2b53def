"""The one optimizer of the trained models: AdamW's update, on the fused kernel where the device has one."""

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import nn

from calid_lightning.models.calid_inflated import CaLIDInflated
from calid_lightning.models.calid_spatial import CaLIDSpatial
from calid_lightning.models.optimizers import FusedClipping, adamw
from calid_lightning.models.pixel_diffusion import PixelSpatial
from calid_lightning.models.segmenter import SegmenterModule
from calid_lightning.models.vae import VAEModule


def _steps(
    optimizer: torch.optim.Optimizer, params: list[nn.Parameter], grads: list[list[torch.Tensor]]
) -> None:
    for step_grads in grads:
        for p, g in zip(params, step_grads, strict=True):
            p.grad = g.clone()
        optimizer.step()


def test_adamw_is_fused_on_cpu_and_makes_adamws_update() -> None:
    torch.manual_seed(0)
    start = [torch.randn(5, 3), torch.randn(7)]
    grads = [[torch.randn_like(t) for t in start] for _ in range(4)]
    ours = [nn.Parameter(t.clone()) for t in start]
    reference = [nn.Parameter(t.clone()) for t in start]
    optimizer = adamw(LightningModule(), ours, lr=1e-2, weight_decay=0.1)
    assert optimizer.defaults["fused"] is True
    _steps(optimizer, ours, grads)
    _steps(torch.optim.AdamW(reference, lr=1e-2, weight_decay=0.1, foreach=False), reference, grads)
    for p, q, s in zip(ours, reference, start, strict=True):
        assert not torch.equal(p.detach(), s)  # it moved
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-6, atol=1e-6)


def test_adamw_keeps_group_rates() -> None:
    a, b = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    groups = [{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.01}]
    optimizer = adamw(LightningModule(), groups, weight_decay=0.0)
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, 0.01]
    a.grad, b.grad = torch.ones(2), torch.ones(2)
    optimizer.step()
    # Adam's first step moves each parameter by its rate (times sign of the gradient).
    torch.testing.assert_close(a.detach(), torch.full((2,), 0.9))
    torch.testing.assert_close(b.detach(), torch.full((2,), 0.99))


def test_adamw_falls_back_where_no_fused_kernel() -> None:
    on_meta = nn.Parameter(torch.empty(3, device="meta"))
    assert not adamw(LightningModule(), [on_meta]).defaults["fused"]


MODELS = [
    lambda: SegmenterModule(channels=(8, 16, 32), strides=(2, 2), num_res_units=1),
    lambda: VAEModule(channels=(8, 16, 16), latent_channels=2, norm_num_groups=8),
]


@pytest.mark.parametrize("model", MODELS, ids=["segmenter", "vae"])
def test_models_train_with_the_fused_adamw(model) -> None:
    assert model().configure_optimizers()["optimizer"].defaults["fused"] is True


@pytest.mark.parametrize("cls", [CaLIDSpatial, CaLIDInflated, PixelSpatial, SegmenterModule, VAEModule])
def test_every_clipped_model_clips_through_the_fused_path(cls: type) -> None:
    """The denoisers train with ``gradient_clip_val`` in bf16-mixed, where Lightning's hook would raise."""
    assert issubclass(cls, FusedClipping)
    assert cls.configure_gradient_clipping is FusedClipping.configure_gradient_clipping


def _trainer(precision: str, **kwargs) -> Trainer:
    """A CPU trainer; ``16-mixed`` as a plugin with a gradient scaler (Lightning takes no 16-mixed on CPU)."""
    settings = (
        {"plugins": [MixedPrecision("16-mixed", "cpu")]}
        if precision == "16-mixed"
        else {"precision": precision}
    )
    return Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, **settings, **kwargs)


@pytest.mark.parametrize(
    ("precision", "fused"), [("32-true", True), ("bf16-mixed", True), ("16-mixed", False)]
)
def test_only_a_gradient_scaler_keeps_the_unfused_adamw(precision: str, fused: bool) -> None:
    """A fused step unscales the gradients itself, after clipping: so only where no scaler is there."""
    model = SegmenterModule(channels=(8, 16, 32), strides=(2, 2), num_res_units=1)
    model.trainer = _trainer(precision)
    assert bool(model.configure_optimizers()["optimizer"].defaults["fused"]) is fused


@pytest.mark.parametrize("model", MODELS, ids=["segmenter", "vae"])
@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [("norm", [[0.6, 0.0], [0.0, 0.8]]), ("value", [[0.5, 0.0], [0.0, 0.5]])],
)
def test_fused_adamw_under_bf16_mixed_is_clipped_by_hand(
    model, algorithm: str, expected: list[list[float]]
) -> None:
    """Gradients (3, 0) and (0, 4): norm 5 clipped to 1 scales them by 1/5; value 0.5 clamps each entry."""
    model = model()
    model.trainer = _trainer("bf16-mixed")
    params = [nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))]
    optimizer = adamw(model, params)
    params[0].grad, params[1].grad = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 4.0])
    clip_val = 1.0 if algorithm == "norm" else 0.5
    model.configure_gradient_clipping(optimizer, clip_val, algorithm)
    torch.testing.assert_close([p.grad for p in params], [torch.tensor(row) for row in expected])


class _Linear(FusedClipping, LightningModule):
    """One linear layer with a large loss, so that every gradient norm is far above the clip value."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)
        self.norms: list[float] = []

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return 100.0 * self.layer(batch).square().mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        optimizer = adamw(self, self.parameters())
        optimizer.register_step_post_hook(lambda opt, *_: self.norms.append(_grad_norm(opt)))
        return optimizer


def _grad_norm(optimizer: torch.optim.Optimizer) -> float:
    grads = [p.grad for group in optimizer.param_groups for p in group["params"]]
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))


def test_bf16_mixed_fit_clips_the_fused_adamws_gradients() -> None:
    """A whole fit: Lightning alone refuses to clip the fused AdamW under bf16-mixed; the step sees 0.1."""
    torch.manual_seed(0)
    model = _Linear()
    trainer = _trainer("bf16-mixed", max_steps=3, gradient_clip_val=0.1, enable_checkpointing=False)
    trainer.fit(model, torch.utils.data.DataLoader(torch.randn(12, 4) + 5.0, batch_size=4))
    assert trainer.optimizers[0].defaults["fused"] is True
    assert len(model.norms) == 3
    assert model.norms == pytest.approx([0.1] * 3, rel=1e-4)
