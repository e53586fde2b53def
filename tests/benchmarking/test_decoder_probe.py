"""benchmarks/decoder_probe.py: a decoder trained alone lands in a CaLID checkpoint, nothing else changes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmark_scripts import load_benchmark
from calid_lightning.benchmarking import train_throughput as bench

ROOT = Path(__file__).resolve().parents[2]


def test_probe_replaces_only_the_decoder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the tool reads experiments/ from the repository root, as the other benchmarks
    tiny = [
        f"data.init_args.root={tmp_path / 'phantom'}",
        'data.init_args.phantom={"subjects": 3, "seed": 0, "size": [48, 48], "frames": 6}',
        "data.init_args.cache_dir=null",
        "data.init_args.crop_size=32",
        "data.init_args.batch_size=2",
    ]
    vae_path = bench.untrained_vae_checkpoint(tmp_path / "vae.ckpt", overrides=tiny)
    calid = bench.build_experiment(
        "calid_spatial", overrides=[*tiny, f"model.init_args.vae_checkpoint={vae_path}"]
    )
    before = {k: v.clone() for k, v in calid.model.state_dict().items()}
    torch.save({"state_dict": before}, tmp_path / "calid.ckpt")
    out = tmp_path / "gan.ckpt"
    argv = ["--vae", str(vae_path), "--calid", str(tmp_path / "calid.ckpt"), "--out", str(out)]
    argv += ["--batches", "2", "--adv-weight", "0.01", "--disc-channels", "8", "--lr", "1e-2", "--set", *tiny]
    assert load_benchmark("decoder_probe").main(argv) == 0

    after = torch.load(out, map_location="cpu", weights_only=True)["state_dict"]
    assert after.keys() == before.keys()
    decoder = [
        k for k in before if k.startswith(("vae.autoencoder.decoder.", "vae.autoencoder.post_quant_conv."))
    ]
    assert decoder and any(not torch.equal(after[k], before[k]) for k in decoder)
    for key in before.keys() - set(decoder):  # encoder, scale factor, denoiser, EMA: as they were
        assert torch.equal(after[key], before[key]), key
    with pytest.raises(SystemExit, match="exists"):
        load_benchmark("decoder_probe").main(argv)
