"""The DDIM sampler against an exact denoiser on Gaussian data, where the right answer is known."""

from __future__ import annotations

import pytest
import torch

from calid_lightning.models.diffusion import (
    check_loss_weighting,
    ddim_sample,
    inference_timesteps,
    loss_weights,
    make_schedulers,
    split_prediction,
    training_target,
)

MU, SIGMA = 1.5, 0.5  # the data distribution: every latent entry ~ N(MU, SIGMA^2), independent


def gaussian_oracle(prediction_type: str):
    """The exact denoiser of N(MU, SIGMA^2) data: E[x0 | x_t], in the model's output type."""
    ddpm, _ = make_schedulers(prediction_type=prediction_type)
    alphas = ddpm.alphas_cumprod

    def predict(sample: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = alphas[t].reshape(-1, *([1] * (sample.ndim - 1)))
        clean = MU + a.sqrt() * SIGMA**2 / (a * SIGMA**2 + 1 - a) * (sample - a.sqrt() * MU)
        noise = (sample - a.sqrt() * clean) / (1 - a).sqrt()
        return training_target(ddpm, clean, noise, t)

    return predict


def test_inference_timesteps_start_at_the_noisiest_level_and_trail_evenly() -> None:
    assert inference_timesteps(1000, 1) == [999]
    assert inference_timesteps(1000, 5) == [999, 799, 599, 399, 199]
    steps = inference_timesteps(1000, 30)
    assert len(steps) == 30 and steps[0] == 999 and steps == sorted(steps, reverse=True)
    assert len(set(steps)) == 30
    with pytest.raises(ValueError, match="num_steps"):
        inference_timesteps(1000, 0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_split_prediction_inverts_the_training_target(prediction_type: str) -> None:
    ddpm, _ = make_schedulers(prediction_type=prediction_type)
    clean, noise = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    t = torch.tensor([10, 500, 990])
    noisy = ddpm.add_noise(clean, noise, t)
    a = ddpm.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    got_clean, got_noise = split_prediction(prediction_type, training_target(ddpm, clean, noise, t), noisy, a)
    torch.testing.assert_close(got_clean, clean, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_noise, noise, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("num_steps", [5, 20, 50])
def test_ddim_with_the_exact_gaussian_denoiser_lands_on_the_data_mean(
    prediction_type: str, num_steps: int
) -> None:
    """Each step must land at the noise level the model is told next, else the chain drifts off the data.

    MONAI 1.6's set_timesteps/step pair (listed linspace timesteps, fixed 1000 // n jumps) gives a mean of
    1.29 / 1.44 / 1.47 here for 5 / 20 / 50 steps; a consistent chain is within 0.02 of 1.5 at every n,
    and the 1-step chain is the posterior mean from pure noise, which is MU itself.
    """
    _, ddim = make_schedulers(prediction_type=prediction_type)
    noise = torch.randn(8, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    out = ddim_sample(gaussian_oracle(prediction_type), ddim, noise, num_steps)
    assert abs(float(out.mean()) - MU) < 0.02
    assert 0.0 < float(out.std()) <= SIGMA * 1.02  # no leftover noise: DDIM only shrinks the spread
    one_step = ddim_sample(gaussian_oracle(prediction_type), ddim, noise, 1)
    assert abs(float(one_step.mean()) - MU) < 1e-3 and float(one_step.std()) < 0.01


def test_more_steps_approach_the_probability_flow_solution() -> None:
    """The spread grows towards SIGMA with the step count (first-order DDIM under-disperses)."""
    _, ddim = make_schedulers()
    noise = torch.randn(4, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    oracle = gaussian_oracle("v_prediction")
    spreads = [float(ddim_sample(oracle, ddim, noise, n).std()) for n in (5, 20, 200)]
    assert spreads == sorted(spreads)
    assert abs(spreads[-1] - SIGMA) < 0.03


def test_randn_like_from_is_the_cpu_float32_draw_cast_to_the_reference() -> None:
    from calid_lightning.models.diffusion import randn_like_from, sample_timesteps

    reference = torch.zeros(2, 3, 4, dtype=torch.float64)
    noise = randn_like_from(reference, torch.Generator().manual_seed(0))
    expected = torch.randn((2, 3, 4), generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    assert noise.dtype == torch.float64 and noise.device == reference.device
    assert torch.equal(noise, expected.double())
    half = randn_like_from(reference.half(), torch.Generator().manual_seed(0))
    assert half.dtype == torch.float16 and torch.equal(half, expected.half())
    t = sample_timesteps(4000, 10, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and t.shape == (4000,) and set(t.tolist()) == set(range(10))
    assert torch.equal(t, torch.randint(0, 10, (4000,), generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_min_snr_weights_are_min_snr_gamma_times_the_x0_error_whatever_the_target(
    prediction_type: str,
) -> None:
    """One wrong x0 estimate, expressed in each target's units: the weighted loss is min(SNR, gamma) x its
    x0 error for all three prediction types (the definition of min-SNR-gamma)."""
    ddpm, _ = make_schedulers(prediction_type=prediction_type)
    t = torch.tensor([0, 100, 400, 700, 999])
    clean, noise = torch.randn(5, 2, 4, 4), torch.randn(5, 2, 4, 4)
    noisy = ddpm.add_noise(clean, noise, t)
    a = ddpm.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    wrong_clean = clean + 0.3 * torch.randn_like(clean)
    wrong_noise = (noisy - a.sqrt() * wrong_clean) / (1 - a).sqrt()
    target = training_target(ddpm, clean, noise, t)
    predicted = training_target(ddpm, wrong_clean, wrong_noise, t)
    weights = loss_weights(ddpm, t, "min_snr", gamma=5.0)
    got = weights * (predicted - target).square().flatten(1).mean(1)
    snr = (a / (1 - a)).flatten()
    expected = snr.clamp(max=5.0) * (wrong_clean - clean).square().flatten(1).mean(1)
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-6)


def test_uniform_weights_are_ones_and_bad_weightings_are_refused() -> None:
    ddpm, _ = make_schedulers()
    assert torch.equal(loss_weights(ddpm, torch.tensor([3, 999]), "uniform"), torch.ones(2))
    with pytest.raises(ValueError, match="loss_weighting must be one of"):
        loss_weights(ddpm, torch.tensor([3]), "snr")
    with pytest.raises(ValueError, match="min_snr_gamma must be > 0"):
        check_loss_weighting("min_snr", 0.0)
