"""Diffusion pieces shared by the latent interpolators: schedulers, training target, DDIM sampling.

MONAI's DDPM/DDIM schedulers do the maths; this module only fixes the choices that are easy to get wrong
(``clip_sample=False`` because VAE latents are not in [-1, 1]; one place that maps the prediction type to its
regression target) and adds a sampling loop that is deterministic for a given generator and works for any
number of spatial dimensions (the 2D spatial model and the 3D (T, h, w) cine model share it).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler
from torch import Tensor

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
LOSS_WEIGHTINGS = ("uniform", "min_snr")


def make_schedulers(
    num_train_timesteps: int = 1000,
    schedule: str = "scaled_linear_beta",
    prediction_type: str = "v_prediction",
    beta_start: float = 0.0015,
    beta_end: float = 0.0195,
) -> tuple[DDPMScheduler, DDIMScheduler]:
    """Build the DDPM scheduler used for training and the DDIM scheduler used for sampling, on one schedule.

    ``beta_start``/``beta_end`` default to the MONAI latent-diffusion tutorials' values for the scaled-linear
    schedule. Both schedulers have ``clip_sample=False`` (latents are unbounded).
    """
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    common = {
        "num_train_timesteps": num_train_timesteps,
        "schedule": schedule,
        "prediction_type": prediction_type,
        "clip_sample": False,
        "beta_start": beta_start,
        "beta_end": beta_end,
    }
    return DDPMScheduler(**common), DDIMScheduler(**common)


def sample_timesteps(
    batch_size: int, num_train_timesteps: int, device: torch.device, generator: torch.Generator | None = None
) -> Tensor:
    """Uniform timesteps in [0, num_train_timesteps), drawn on the CPU so a seeded draw is device-free."""
    return torch.randint(0, num_train_timesteps, (batch_size,), generator=generator).to(device)


def randn_like_from(reference: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Standard normal noise shaped like ``reference``, drawn on the CPU from ``generator`` then moved.

    Drawing on the CPU makes a seeded result identical on CPU and GPU.
    """
    noise = torch.randn(reference.shape, generator=generator, dtype=torch.float32)
    return noise.to(device=reference.device, dtype=reference.dtype)


def training_target(scheduler: DDPMScheduler, clean: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
    """What the denoiser regresses: the noise, the velocity or the clean sample, by the scheduler's type."""
    if scheduler.prediction_type == "epsilon":
        return noise
    if scheduler.prediction_type == "v_prediction":
        return scheduler.get_velocity(clean, noise, timesteps)
    return clean


def check_loss_weighting(weighting: str, gamma: float) -> None:
    """Refuse an unknown ``loss_weighting`` or a non-positive min-SNR gamma when the model is built."""
    if weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"loss_weighting must be one of {LOSS_WEIGHTINGS}, got {weighting!r}")
    if not gamma > 0:
        raise ValueError(f"min_snr_gamma must be > 0, got {gamma}")


def loss_weights(scheduler: DDPMScheduler, timesteps: Tensor, weighting: str, gamma: float = 5.0) -> Tensor:
    """Per-item loss weights ``(B,)`` at ``timesteps``: ones (``uniform``) or min-SNR-gamma (``min_snr``).

    Min-SNR-gamma (Hang et al., ICCV 2023) caps each timestep's weight at ``gamma`` in units of the x0 loss:
    with SNR = alpha_bar / (1 - alpha_bar) the weight is ``min(SNR, gamma)`` divided by what the regression
    target already carries, ``SNR`` for the noise and ``SNR + 1`` for the velocity (1 for x0 itself).
    """
    check_loss_weighting(weighting, gamma)
    if weighting == "uniform":
        return torch.ones(timesteps.shape[0], device=timesteps.device)
    alphas = scheduler.alphas_cumprod.to(device=timesteps.device, dtype=torch.float32)[timesteps]
    snr = alphas / (1 - alphas)
    capped = snr.clamp(max=gamma)
    if scheduler.prediction_type == "epsilon":
        return capped / snr
    if scheduler.prediction_type == "v_prediction":
        return capped / (snr + 1)
    return capped


def inference_timesteps(num_train_timesteps: int, num_steps: int) -> list[int]:
    """The ``num_steps`` timesteps a DDIM chain visits, "trailing" spacing: T-1, ..., about T/n - 1.

    The first step starts at the noisiest training timestep, so one step is the x0-prediction from pure noise,
    and each step lands exactly on the noise level of the next listed timestep (then on the clean sample).
    MONAI 1.6's ``DDIMScheduler`` lists ``linspace(T-1, 0, n)`` but steps by ``T // n``, which leaves the
    sample at another noise level than the one the model is told next; this list and :func:`ddim_sample`
    avoid its ``set_timesteps``/``step`` pair altogether.
    """
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(f"num_steps must be in [1, {num_train_timesteps}], got {num_steps}")
    return [round(num_train_timesteps - i * num_train_timesteps / num_steps) - 1 for i in range(num_steps)]


def split_prediction(
    prediction_type: str, prediction: Tensor, sample: Tensor, alpha_prod: Tensor
) -> tuple[Tensor, Tensor]:
    """(predicted clean sample, predicted noise) from a model output of ``prediction_type`` at x_t."""
    a, b = alpha_prod.sqrt(), (1 - alpha_prod).sqrt()
    if prediction_type == "epsilon":
        return (sample - b * prediction) / a, prediction
    if prediction_type == "v_prediction":
        return a * sample - b * prediction, a * prediction + b * sample
    return prediction, (sample - a * prediction) / b


@torch.no_grad()
def ddim_sample(
    model_fn: Callable[[Tensor, Tensor], Tensor],
    scheduler: DDIMScheduler,
    noise: Tensor,
    num_steps: int,
) -> Tensor:
    """Run a deterministic DDIM chain (eta = 0) from ``noise``; returns the final clean sample.

    ``model_fn(x_t, t)`` gets the current sample and a (B,) long tensor of timesteps and returns the model
    prediction of the scheduler's ``prediction_type``. Only the scheduler's noise schedule
    (``alphas_cumprod``) and prediction type are used: each step moves to the noise level of the next timestep
    of :func:`inference_timesteps` (the clean sample after the last), so ``num_steps=1`` is the model's
    x0-prediction from pure noise.
    """
    alphas = scheduler.alphas_cumprod.to(device=noise.device, dtype=torch.float32)
    timesteps = inference_timesteps(scheduler.num_train_timesteps, num_steps)
    shape = (-1, *([1] * (noise.ndim - 1)))
    sample = noise.float()
    for i, t in enumerate(timesteps):
        t_batch = torch.full((noise.shape[0],), t, device=noise.device, dtype=torch.long)
        prediction = model_fn(sample.to(noise.dtype), t_batch).float()
        clean, eps = split_prediction(scheduler.prediction_type, prediction, sample, alphas[t].reshape(shape))
        alpha_next = alphas[timesteps[i + 1]] if i + 1 < len(timesteps) else alphas.new_tensor(1.0)
        sample = alpha_next.sqrt() * clean + (1 - alpha_next).sqrt() * eps
    return sample.to(noise.dtype)
