"""models/conditioning.py: lerp, expand_r, condition_input values and errors; the denoiser's parts."""

from __future__ import annotations

import pytest
import torch

from calid_lightning.models.conditioning import ConditionalDenoiser, condition_input, expand_r, lerp

TINY = {"channels": (8, 8), "attention_levels": (False, False), "num_res_blocks": 1, "norm_num_groups": 4}


def test_expand_r_broadcasts_per_item_in_the_dtype_of_like() -> None:
    like = torch.zeros(3, 2, 4, 5, dtype=torch.float64)
    r = expand_r(torch.tensor([0.1, 0.5, 0.9]), like)
    assert r.shape == (3, 1, 1, 1) and r.dtype == torch.float64
    assert r.flatten().tolist() == pytest.approx([0.1, 0.5, 0.9])
    assert expand_r(torch.tensor([0.5]), torch.zeros(1, 2, 3, 4, 5)).shape == (1, 1, 1, 1, 1)


def test_lerp_is_one_minus_r_below_plus_r_above_per_item() -> None:
    below, above = torch.full((2, 1, 2, 2), 2.0), torch.full((2, 1, 2, 2), 10.0)
    out = lerp(below, above, torch.tensor([0.25, 1.0]))
    assert out[0].unique().tolist() == [4.0] and out[1].unique().tolist() == [10.0]
    assert torch.equal(lerp(below, above, torch.tensor([0.0, 0.0])), below)


def test_condition_input_is_below_above_then_a_constant_r_channel() -> None:
    below, above = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    cond = condition_input(below, above, torch.tensor([0.2, 0.7]))
    assert cond.shape == (2, 7, 4, 4)
    assert torch.equal(cond[:, :3], below) and torch.equal(cond[:, 3:6], above)
    assert cond[0, 6].unique().tolist() == pytest.approx([0.2]) and cond[1, 6].unique().tolist() == [
        pytest.approx(0.7)
    ]
    assert condition_input(below[:, :, None], above[:, :, None], torch.tensor([0.5, 0.5])).shape == (
        2,
        7,
        1,
        4,
        4,
    )


def test_condition_input_errors_name_the_shapes() -> None:
    below = torch.zeros(2, 3, 4, 4)
    with pytest.raises(
        ValueError, match=r"below and above latents differ in shape: \(2, 3, 4, 4\) vs \(2, 3, 4, 5\)"
    ):
        condition_input(below, torch.zeros(2, 3, 4, 5), torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="r has 3 entries for a batch of 2"):
        condition_input(below, below, torch.tensor([0.1, 0.2, 0.3]))


def test_denoiser_channels_and_the_concatenation_only_ablation() -> None:
    torch.manual_seed(0)
    model = ConditionalDenoiser(latent_channels=2, injection=False, **TINY, num_head_channels=4)
    assert model.condition_channels == 5 and not model.injection and model.controlnet is None
    assert model.unet.conv_in.conv.in_channels == 2 + 5
    with pytest.raises(RuntimeError, match="no conditioning encoder"):
        model.condition_encoder(torch.zeros(1, 5, 8, 8))
    with pytest.raises(RuntimeError, match="no injection residuals"):
        model.residuals(torch.zeros(1, 7, 8, 8), torch.zeros(1, dtype=torch.long), torch.zeros(1, 5, 8, 8))


def test_denoiser_output_depends_on_below_above_order_and_r() -> None:
    torch.manual_seed(0)
    model = ConditionalDenoiser(latent_channels=2, **TINY, num_head_channels=4).eval()
    assert model.injection and model.controlnet is not None
    noisy, t = torch.randn(1, 2, 8, 8), torch.tensor([500])
    below, above = torch.randn(1, 2, 8, 8), torch.randn(1, 2, 8, 8)
    with torch.no_grad():
        for p in model.parameters():  # the zero-initialised output and injection convolutions come alive
            p.add_(0.05 * torch.randn_like(p))
        out = model(noisy, t, below, above, torch.tensor([0.3]))
        assert out.shape == noisy.shape
        assert not torch.allclose(out, model(noisy, t, above, below, torch.tensor([0.3])))
        assert not torch.allclose(out, model(noisy, t, below, above, torch.tensor([0.7])))
        residual_free = model.unet(
            x=torch.cat([noisy, condition_input(below, above, torch.tensor([0.3]))], 1), timesteps=t
        )
        assert not torch.allclose(out, residual_free), "the ControlNet residuals reach the U-Net"


def test_the_gap_channel_is_one_more_constant_channel_and_changes_the_prediction() -> None:
    below, above = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    r, gap = torch.tensor([0.25, 0.5]), torch.tensor([1.0, 0.5])
    stacked = condition_input(below, above, r, gap)
    assert stacked.shape == (2, 8, 4, 4)
    torch.testing.assert_close(stacked[:, :7], condition_input(below, above, r))
    assert torch.equal(stacked[:, 7], gap.reshape(2, 1, 1).expand(2, 4, 4))
    with pytest.raises(ValueError, match="gap has 1 entries for a batch of 2"):
        condition_input(below, above, r, torch.tensor([1.0]))

    torch.manual_seed(0)
    model = ConditionalDenoiser(latent_channels=2, **TINY, num_head_channels=4, gap_channel=True).eval()
    assert model.condition_channels == 6 and model.unet.conv_in.conv.in_channels == 2 + 6
    noisy, t = torch.randn(1, 2, 8, 8), torch.tensor([500])
    b, a, r1 = torch.randn(1, 2, 8, 8), torch.randn(1, 2, 8, 8), torch.tensor([0.5])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        near, far = (
            model(noisy, t, b, a, r1, torch.tensor([0.5])),
            model(noisy, t, b, a, r1, torch.tensor([1.0])),
        )
    assert not torch.allclose(near, far), "the gap reaches the prediction"
    with pytest.raises(ValueError, match="built with a gap channel: pass gap"):
        model(noisy, t, b, a, r1)
    plain = ConditionalDenoiser(latent_channels=2, **TINY, num_head_channels=4)
    with pytest.raises(ValueError, match="has no gap channel"):
        plain(noisy, t, b, a, r1, torch.tensor([1.0]))
