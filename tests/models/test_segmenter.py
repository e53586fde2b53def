"""The downstream segmenter (shapes, a short training on synthetic discs, configs) and the segment task."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torchio as tio
from lightning.pytorch import seed_everything
from torch.utils.data import DataLoader

from calid_lightning.data.datamodule import CardiacDataModule
from calid_lightning.data.datasets import ExampleBuilder
from calid_lightning.data.preprocess import prepare_subject
from calid_lightning.data.sampling import Example
from calid_lightning.data.subject import DataError
from calid_lightning.evaluation.segmentation import aggregate_segmentation, segmentation_metrics
from calid_lightning.models.checkpoints import MODEL_CLASS_KEY, checkpoint_class, load_model
from calid_lightning.models.segmenter import SegmenterModule, slice_dice
from calid_lightning.models.vae import VAEModule
from checkpoints import quiet_trainer
from memory_data import MemoryReader, make_dm, make_subject, parse_cli

ROOT = Path(__file__).parents[2]
TINY = dict(channels=(8, 16, 32), strides=(2, 2), num_res_units=1, lr=3e-3)


def synthetic_hearts(count: int, size: int = 32, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Noisy slices of a bright LV disc in a dark myocardial ring with a medium RV disc beside it."""
    rng = np.random.default_rng(seed)
    ys, xs = np.indices((size, size))
    items = []
    for _ in range(count):
        cy, cx = rng.uniform(12, size - 12, 2)
        radius = rng.uniform(3, 5)
        dist = np.hypot(ys - cy, xs - cx)
        label = np.zeros((size, size), np.int64)
        rv = np.hypot(ys - cy, xs - (cx + radius + 4)) <= radius + 1
        label[rv] = 3
        label[dist <= radius + 2] = 2
        label[dist <= radius] = 1
        image = np.choose(label, [0.15, 1.0, 0.35, 0.7]) + rng.normal(0, 0.05, label.shape)
        image = torch.tensor(image[None], dtype=torch.float32)
        items.append({"image": image, "label": torch.from_numpy(label)})
    return items


def test_shapes_and_predict():
    model = SegmenterModule(**TINY)
    images = torch.rand(5, 1, 32, 32)
    assert model(images).shape == (5, 4, 32, 32)
    model.train()
    labels = model.predict(images, batch_size=2)
    assert labels.shape == (5, 32, 32) and labels.dtype == torch.int64
    assert labels.min() >= 0 and labels.max() <= 3
    assert model.training, "predict restores the training mode"
    assert torch.equal(model.predict_step({"image": images}, 0), model.eval()(images).argmax(1))
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        model.predict(images[:, 0])
    with pytest.raises(KeyError, match="task: segment"):
        model.training_step({"image": images}, 0)
    with pytest.raises(ValueError, match=r"model\.strides"):
        SegmenterModule(channels=(8, 16, 32), strides=(2,))


def test_slice_dice_ignores_slices_without_the_class():
    truth = torch.zeros(2, 8, 8, dtype=torch.long)
    truth[0, 2:6, 2:6] = 1
    pred = truth.clone()
    pred[1, 0, 0] = 1  # a false positive where the truth has no LV
    dice = slice_dice(pred, truth)
    assert dice.shape == (2, 3)
    assert dice[0, 0] == pytest.approx(1.0) and torch.isnan(dice[1, 0])
    assert torch.isnan(dice[:, 1:]).all()


def test_short_training_lowers_loss_and_raises_dice(tmp_path):
    seed_everything(0)
    train, val = synthetic_hearts(64, seed=0), synthetic_hearts(16, seed=1)
    model = SegmenterModule(**TINY)
    images = torch.stack([item["image"] for item in val])
    truth = torch.stack([item["label"] for item in val])

    def mean_dice() -> float:
        per_slice = segmentation_metrics(model.predict(images), truth, (1.5, 1.5))
        return aggregate_segmentation(per_slice)["dice_mean"]

    def val_loss() -> float:
        with torch.no_grad():
            return float(model.loss(model(images), truth[:, None]))

    before_dice, before_loss = mean_dice(), val_loss()
    trainer = quiet_trainer(tmp_path, max_steps=100)
    trainer.fit(model, DataLoader(train, batch_size=8, shuffle=True), DataLoader(val, batch_size=8))
    after_dice, after_loss = mean_dice(), val_loss()
    print(f"val loss {before_loss:.3f} -> {after_loss:.3f}, mean Dice {before_dice:.3f} -> {after_dice:.3f}")
    assert after_loss < 0.6 * before_loss, (before_loss, after_loss)
    assert after_dice > before_dice + 0.3 and after_dice > 0.6, (before_dice, after_dice)
    logged = trainer.callback_metrics
    assert {"val/loss", "val/dice_lv", "val/dice_myo", "val/dice_rv", "val/dice_mean"} <= set(logged)
    assert float(logged["val/dice_mean"]) == pytest.approx(
        np.mean([float(logged[f"val/dice_{k}"]) for k in ("lv", "myo", "rv")]), abs=1e-5
    )

    path = tmp_path / "segmenter.ckpt"
    trainer.save_checkpoint(path)
    loaded = load_model(path, SegmenterModule)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert torch.equal(loaded.predict(images), model.predict(images))
    with pytest.raises(DataError, match=r"missing\.ckpt: checkpoint file not found"):
        load_model(tmp_path / "missing.ckpt", SegmenterModule)
    with pytest.raises(DataError, match="holds a SegmenterModule checkpoint, expected a VAEModule"):
        load_model(path, VAEModule)
    legacy = torch.load(path, weights_only=True)
    del legacy[MODEL_CLASS_KEY]
    assert checkpoint_class(legacy, path) is SegmenterModule


def check_segment_batch(batch: dict, size: int, crop: int) -> None:
    assert batch["image"].shape == (size, 1, crop, crop) and batch["image"].dtype == torch.float32
    assert batch["label"].shape == (size, crop, crop) and batch["label"].dtype == torch.int64
    assert batch["image"].min() >= 0 and batch["image"].max() <= 1
    assert set(torch.unique(batch["label"]).tolist()) <= {0, 1, 2, 3}


@pytest.mark.parametrize(("stack", "frames"), [("acquired", {0, 3}), ("auto", set(range(6)))])
def test_segment_batches_use_labelled_frames_only(tmp_path, stack, frames):
    subjects = [make_subject(f"s{i:02d}", seed=i, dense_factor=2) for i in range(4)]
    dm = make_dm(subjects, tmp_path, task="segment", stack=stack, batch_size=8, samples_per_epoch=64)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    for batch in [*batches, next(iter(dm.val_dataloader()))]:
        check_segment_batch(batch, 8, 16)
    train_frames = {int(f) for batch in batches for f in batch["frame"]}
    assert train_frames <= frames and len(train_frames) > 1
    val = dm.examples("val")
    prepared = dm.prepared_subject(val[0].subject_id)
    assert {e.frame for e in val} == frames, "every labelled frame, no other"
    assert len(val) == len(frames) * prepared.num_slices * len(dm.subjects("val"))
    item = dm.val_dataloader().dataset[0]
    example = val[0]
    assert torch.equal(item["label"], torch.from_numpy(prepared.labels[example.target, example.frame]).long())
    assert torch.equal(item["image"][0], torch.from_numpy(prepared.image[example.target, example.frame]))
    assert (item["label"] > 0).any() or example.target in (0, prepared.num_slices - 1)


def test_segment_task_needs_labels(tmp_path):
    subjects = [make_subject(f"s{i:02d}", seed=i) for i in range(4)]
    subjects.append(make_subject("nolabel", seed=9, labels=False))
    with pytest.raises(DataError, match=r"/memory/nolabel: no labelled frames.*data\.lenient"):
        make_dm(subjects, tmp_path, task="segment").setup("fit")
    dm = make_dm(subjects, tmp_path, task="segment", reader=MemoryReader(subjects), lenient=True)
    dm.setup("fit")
    assert "nolabel" not in [s for split in ("train", "val", "test") for s in dm.subjects(split)]


def test_segment_augmentation_moves_image_and_label_together():
    prepared = prepare_subject(make_subject("a", center=(14, 18)), dense=False, crop_size=16)
    example = Example("a", z0=5, k=1, j=0, frame=3)
    flip = ExampleBuilder("segment", transform=tio.RandomFlip(axes=(0,), flip_probability=1.0))
    item = flip(prepared, example, seed=0)
    assert torch.equal(item["label"], torch.from_numpy(prepared.labels[5, 3]).long().flip(0))
    assert torch.equal(item["image"][0], torch.from_numpy(prepared.image[5, 3]).flip(0))
    affine = ExampleBuilder("segment", transform=tio.RandomAffine(degrees=(0, 0, 0, 0, 40, 40), scales=0))
    item = affine(prepared, example, seed=1)
    assert item["label"].dtype == torch.int64 and set(item["label"].unique().tolist()) <= {0, 1, 2}
    assert not torch.equal(item["label"], torch.from_numpy(prepared.labels[5, 3]).long())
    lv = item["label"] == 1
    image = item["image"][0]
    assert image[lv].mean() > image[~lv].mean() + 0.3, "the bright LV stays under label 1"


def test_experiment_configs_instantiate():
    configs = [str(ROOT / "experiments/segmenter.yaml"), str(ROOT / "data_modules/phantom.yaml")]
    dm = parse_cli(configs)
    assert isinstance(dm, CardiacDataModule)
    assert (dm.hparams.task, dm.hparams.crop_size, dm.hparams.layout) == ("segment", 64, "phantom")
    blur = parse_cli(configs, ("--data.init_args.augment_options.blur_std_px=1.5",))
    options = blur.hparams.augment_options
    assert options["blur_std_px"] == 1.5 and isinstance(options["blur_std_px"], float), "a number, not '1.5'"
    assert options["flip"] is False, "the config's other options are kept"
    paper_profile = str(ROOT / "experiments/profiles/paper/segmenter.yaml")
    cpu = ("--trainer.accelerator=cpu", "--trainer.strategy=auto", "--trainer.devices=1")
    paper = parse_cli([*configs, paper_profile], cpu)
    assert (paper.hparams.task, paper.hparams.crop_size) == ("segment", 128)


def test_cosine_decay_ends_at_a_tenth_of_the_rate_at_max_steps(tmp_path):
    seed_everything(0)
    model = SegmenterModule(**TINY, lr_warmup_steps=2, lr_decay="cosine")
    quiet_trainer(tmp_path, max_steps=6).fit(model, DataLoader(synthetic_hearts(8), batch_size=4))
    assert model.optimizers().param_groups[0]["lr"] == pytest.approx(TINY["lr"] / 10)
    constant = SegmenterModule(**TINY)
    assert constant.configure_optimizers()["lr_scheduler"]["scheduler"].get_last_lr() == [TINY["lr"]]
    with pytest.raises(ValueError, match="lr_decay must be one of"):
        SegmenterModule(**TINY, lr_decay="step")
