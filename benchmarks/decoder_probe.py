"""Score a VAE decoder variant without retraining CaLID: train the decoder alone, put it into a CaLID model.

The VAE of ``--vae`` trains with its encoder frozen from the first step (``freeze_encoder_at=0``: the decoded
posterior means, L1, plus the patch-GAN when ``--adv-weight`` > 0) for ``--batches`` batches of the VAE
config's training data at a constant ``--lr``. The encoder is untouched, so the latents a CaLID model was
trained on stay valid: the new decoder weights replace those inside ``--calid``'s checkpoint (its scale factor
kept), and ``calid evaluate --checkpoint OUT`` scores the pair (docs/ablations.md section 15).

    .venv/bin/python benchmarks/decoder_probe.py --vae RUN/vae/checkpoints/last.ckpt \\
        --calid RUN/calid_spatial/checkpoints/last.ckpt --batches 600 --adv-weight 0.01 --out /tmp/gan.ckpt
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from lightning.pytorch import Trainer, seed_everything

from calid_lightning.benchmarking.train_throughput import build_experiment, quiet
from calid_lightning.checkpoint_file import read_checkpoint
from calid_lightning.io_safety import atomic_save
from calid_lightning.models.checkpoints import load_model
from calid_lightning.models.vae import VAEModule

DECODER_KEYS = ("decoder.", "post_quant_conv.")
"""The autoencoder's state-dict prefixes that decode: everything else (encoder, quant convs) stays."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--vae", required=True, help="the VAE checkpoint the CaLID model was trained on")
    parser.add_argument("--calid", required=True, help="CaLID checkpoint to receive the new decoder")
    parser.add_argument("--out", required=True, help="the CaLID checkpoint to write (must not exist)")
    parser.add_argument("--batches", type=int, default=600, help="decoder training batches")
    parser.add_argument("--lr", type=float, default=1e-4, help="decoder (and discriminator) learning rate")
    parser.add_argument("--adv-weight", type=float, default=0.0, help="patch-GAN weight; 0 = L1 only")
    parser.add_argument("--disc-channels", type=int, default=64)
    parser.add_argument(
        "--data", default="data_modules/phantom.yaml", help="data config of the VAE's training"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="overrides of the VAE config (calid fit's --KEY=VALUE), e.g. data.init_args.batch_size=16",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"{out} exists: choose a new --out (this tool writes only files it creates)")
    quiet()
    seed_everything(args.seed, workers=True)
    vae = load_model(
        args.vae,
        VAEModule,
        strict=False,  # the discriminator is new
        freeze_encoder_at=0,
        adv_weight=args.adv_weight,
        adv_warmup_steps=0,
        disc_channels=args.disc_channels,
        lr=args.lr,
        lr_warmup_steps=0,
        lr_decay="constant",
    )
    vae.requires_grad_(True).train()
    datamodule = build_experiment("vae", args.data, overrides=args.set).datamodule
    steps = args.batches * (2 if args.adv_weight > 0 else 1)  # two optimizer steps a batch with the GAN
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as root:
        trainer = Trainer(
            accelerator="cpu",
            max_steps=steps,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            default_root_dir=root,
        )
        trainer.fit(vae, datamodule=datamodule)
    decoder = {k: v for k, v in vae.autoencoder.state_dict().items() if k.startswith(DECODER_KEYS)}
    checkpoint = read_checkpoint(args.calid)
    state = checkpoint["state_dict"]
    missing = [k for k in decoder if f"vae.autoencoder.{k}" not in state]
    if missing:
        raise SystemExit(
            f"{args.calid}: no VAE decoder weights named like {missing[0]!r}; is it a CaLID checkpoint?"
        )
    state.update({f"vae.autoencoder.{k}": v.detach().clone() for k, v in decoder.items()})
    atomic_save(out, lambda path: torch.save(checkpoint, path))
    seconds = time.perf_counter() - start
    print(f"wrote {out}: {len(decoder)} decoder tensors after {args.batches} batches ({seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
