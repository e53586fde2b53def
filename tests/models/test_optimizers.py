"""The one optimizer of the trained models: AdamW's update, on the fused kernel where the device has one."""

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from torch import nn

from calid_lightning.models.optimizers import adamw
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


@pytest.mark.parametrize(
    "model",
    [
        lambda: SegmenterModule(channels=(8, 16, 32), strides=(2, 2), num_res_units=1),
        lambda: VAEModule(channels=(8, 16, 16), latent_channels=2, norm_num_groups=8),
    ],
    ids=["segmenter", "vae"],
)
def test_models_train_with_the_fused_adamw(model) -> None:
    assert model().configure_optimizers()["optimizer"].defaults["fused"] is True


@pytest.mark.parametrize(("precision", "fused"), [("32-true", True), ("bf16-mixed", False)])
def test_mixed_precision_keeps_the_unfused_adamw(precision: str, fused: bool) -> None:
    """Lightning refuses to clip a fused optimizer's gradients under mixed precision."""
    model = SegmenterModule(channels=(8, 16, 32), strides=(2, 2), num_res_units=1)
    model.trainer = Trainer(accelerator="cpu", precision=precision, logger=False, enable_progress_bar=False)
    assert bool(model.configure_optimizers()["optimizer"].defaults["fused"]) is fused
