"""Latent cache and residual-over-lerp target of the latent interpolators: exact, keyed, invertible."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from calid_lightning.data.preprocess import PreparedSubject
from calid_lightning.models.calid_spatial import CaLIDSpatial
from calid_lightning.models.conditioning import lerp
from calid_lightning.models.latent_cache import LatentCache, module_digest
from checkpoints import TINY_UNET, tiny_vae_checkpoint

SIZE = 16


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> CaLIDSpatial:
    images = torch.rand(16, 1, SIZE, SIZE)
    vae = tiny_vae_checkpoint(tmp_path_factory.mktemp("vae") / "vae.ckpt", images)
    torch.manual_seed(0)
    return CaLIDSpatial(vae_checkpoint=str(vae), **TINY_UNET, num_inference_steps=2)


def prepared(subject_id: str, seed: int) -> PreparedSubject:
    image = np.random.default_rng(seed).random((6, 3, SIZE, SIZE), dtype=np.float32)
    return PreparedSubject(subject_id, image, (1.0, 1.0, 2.5), (0, 0), 0, 1, True)


def batch_of(subject: PreparedSubject, rows: list[tuple[int, int, int, int]]) -> dict[str, object]:
    """A spatial batch of (z_below, z, z_above, frame) rows: images and indices, collated."""
    image = torch.from_numpy(subject.image)
    pick = {key: torch.tensor([row[i] for row in rows]) for i, key in enumerate(("z_below", "z", "z_above"))}
    frame = torch.tensor([row[3] for row in rows])
    return {
        "subject_id": [subject.subject_id] * len(rows),
        **pick,
        "frame": frame,
        "below": image[pick["z_below"], frame][:, None],
        "target": image[pick["z"], frame][:, None],
        "above": image[pick["z_above"], frame][:, None],
        "r": (pick["z"] - pick["z_below"]).float() / (pick["z_above"] - pick["z_below"]).float(),
    }


def test_training_batches_read_the_cache_and_equal_encoding(model: CaLIDSpatial, tmp_path: Path) -> None:
    subject = prepared("s0", 0)
    model._latent_cache = LatentCache.build(
        model.encode, [subject], module_digest(model.vae), "cpu", tmp_path
    )
    batch = batch_of(subject, [(0, 1, 2, 0), (2, 4, 5, 2), (1, 3, 5, 1)])
    try:
        model.train()
        cached = model._encode_batch(batch)
        model.eval()
        encoded = model._encode_batch(batch)
    finally:
        model._latent_cache = None
    for got, want in zip(cached[:3], encoded[:3], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.equal(cached[0], cached[1])  # below and above are different slices


def test_disk_cache_is_reused_and_keyed_by_the_vae(model: CaLIDSpatial, tmp_path: Path) -> None:
    subject = prepared("s0", 0)
    digest = module_digest(model.vae)
    first = LatentCache.build(model.encode, [subject], digest, "cpu", tmp_path)
    (written,) = tmp_path.iterdir()

    def refuse(x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("a cached subject must not be encoded again")

    again = LatentCache.build(refuse, [subject], digest, "cpu", tmp_path)
    assert torch.equal(again.latents["s0"], first.latents["s0"])
    assert again.latents["s0"].shape == (6, 3, model.latent_channels, SIZE // 4, SIZE // 4)
    changed = SimpleNamespace(**{k: v for k, v in vars(subject).items()})
    changed.image = subject.image + 0.01
    LatentCache.build(model.encode, [changed], digest, "cpu", tmp_path)
    other_vae = torch.nn.Linear(2, 2)
    LatentCache.build(model.encode, [subject], module_digest(other_vae), "cpu", tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 3 and written.name in names  # new data or a new VAE never reuse a file
    assert not any(name.endswith(".tmp") for name in names)


def test_uncached_subjects_and_validation_batches_are_encoded(model: CaLIDSpatial) -> None:
    model._latent_cache = LatentCache({"other": torch.zeros(6, 3, model.latent_channels, 4, 4)})
    try:
        model.train()
        assert model._cached_latents(batch_of(prepared("s0", 0), [(0, 1, 2, 0)])) is None
    finally:
        model._latent_cache = None
        model.eval()


def test_residual_target_is_invertible_and_starts_at_lerp(model: CaLIDSpatial, monkeypatch) -> None:
    """With residual=True a zero network output gives lerp plus the tiny leftover of the 1-step chain."""
    below, above = torch.randn(2, model.latent_channels, 4, 4), torch.randn(2, model.latent_channels, 4, 4)
    target, r = torch.randn_like(below), torch.tensor([0.25, 0.5])
    monkeypatch.setattr(model, "residual", True)
    model.residual_scale.fill_(2.0)
    try:
        diffused = model.to_diffused(target, below, above, r)
        torch.testing.assert_close(diffused, (target - lerp(below, above, r)) * 2.0)
        torch.testing.assert_close(model.from_diffused(diffused, below, above, r), target)
        monkeypatch.setattr(model, "_predict", lambda *args: torch.zeros_like(args[1]))
        noise_gen = torch.Generator().manual_seed(3)
        out = model.interpolate(below, above, r, num_steps=1, generator=torch.Generator().manual_seed(3))
        noise = torch.randn(below.shape, generator=noise_gen)
        leftover = model.ddim.alphas_cumprod[999].sqrt() * noise / 2.0  # x0 = sqrt(a) x_T for v = 0
        torch.testing.assert_close(out, lerp(below, above, r) + leftover, rtol=1e-5, atol=1e-5)
    finally:
        model.residual_scale.fill_(0.0)


def test_residual_without_a_scale_is_a_clear_error(model: CaLIDSpatial, monkeypatch) -> None:
    monkeypatch.setattr(model, "residual", True)
    z = torch.zeros(1, model.latent_channels, 4, 4)
    with pytest.raises(RuntimeError, match="residual_scale"):
        model.to_diffused(z, z, z, torch.tensor([0.5]))


def test_residual_scale_is_one_over_the_residual_std(model: CaLIDSpatial) -> None:
    subjects = {"a": prepared("a", 1), "b": prepared("b", 2)}
    datamodule = SimpleNamespace(
        subjects=lambda split: sorted(subjects),
        prepared_subject=subjects.__getitem__,
        train_factors=[2, 4],
        hparams=SimpleNamespace(frames="all"),
    )
    model.fit_residual_scale(datamodule, examples=64)
    first = float(model.residual_scale)
    model.fit_residual_scale(datamodule, examples=64)
    assert float(model.residual_scale) == first > 0  # fixed seed: the same scale every time
    rng = np.random.default_rng(0)
    from calid_lightning.data.sampling import sample_train_example

    residuals = []
    for _ in range(64):
        prep = subjects[sorted(subjects)[int(rng.integers(2))]]
        ex = sample_train_example(prep.subject_id, prep.num_slices, [2, 4], list(range(3)), rng)
        z = model.encode(
            torch.from_numpy(prep.image[[ex.below, ex.above, ex.target], ex.frame].copy())[:, None]
        )
        residuals.append(z[2] - lerp(z[:1], z[1:2], torch.tensor([ex.r]))[0])
    assert first == pytest.approx(1 / float(torch.stack(residuals).std()), rel=1e-5)
    model.residual_scale.fill_(0.0)


def test_cine_batches_read_the_cache_and_equal_encoding(tmp_path: Path) -> None:
    """A 2D+T model's cine items (``frame_indices`` (B, T), wrap padding included) read the same cache."""
    from calid_lightning.models.calid_inflated import CaLIDInflated
    from checkpoints import save_checkpoint

    vae = tiny_vae_checkpoint(tmp_path / "vae.ckpt", torch.rand(16, 1, SIZE, SIZE))
    torch.manual_seed(0)
    spatial = save_checkpoint(CaLIDSpatial(vae_checkpoint=str(vae), **TINY_UNET), tmp_path / "spatial.ckpt")
    model = CaLIDInflated(spatial_checkpoint=str(spatial), latent_cache=True)
    subject = prepared("s0", 0)
    model.build_latent_cache(
        SimpleNamespace(
            hparams=SimpleNamespace(cache_dir=None),
            subjects=lambda split: ["s0"],
            prepared_subject=lambda s: subject,
        )
    )
    image = torch.from_numpy(subject.image)
    frames = torch.tensor([[0, 2, 1, 0], [1, 2, 1, 2]])  # the second cine wraps: frames 1, 2 then 1, 2 again
    z = {"z_below": torch.tensor([0, 2]), "z": torch.tensor([1, 4]), "z_above": torch.tensor([2, 5])}
    cines = {
        key: torch.stack([image[z[k][b], frames[b]] for b in range(2)])[:, None]
        for key, k in (("below", "z_below"), ("target", "z"), ("above", "z_above"))
    }
    batch = {
        "subject_id": ["s0", "s0"],
        **z,
        "frame": frames[:, 0],
        "frame_indices": frames,
        **cines,
        "r": torch.tensor([0.5, 2 / 3]),
    }
    model.train()
    cached = model._encode_batch(batch)
    model.eval()
    encoded = model._encode_batch(batch)
    for got, want in zip(cached[:3], encoded[:3], strict=True):
        assert got.shape == (2, 4, 4, SIZE // 4, SIZE // 4)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
