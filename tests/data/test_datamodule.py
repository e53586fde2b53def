"""CardiacDataModule, its datasets, preprocessing and augmentation on small in-memory subjects."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torchio as tio

from calid_lightning.data.augment import augment_slab, build_augmentation
from calid_lightning.data.datamodule import CardiacDataModule
from calid_lightning.data.datasets import ExampleBuilder
from calid_lightning.data.preprocess import motion_center, prepare_subject
from calid_lightning.data.sampling import Example, heldout_plan
from calid_lightning.data.subject import CardiacSubject, DataError
from memory_data import MemoryReader, make_dm, make_subject, parse_cli


@pytest.fixture
def subjects() -> list[CardiacSubject]:
    return [make_subject(f"s{i:02d}", seed=i) for i in range(6)]


def first_batch(loader) -> dict:
    return next(iter(loader))


def check_common(batch: dict, size: int) -> None:
    assert isinstance(batch["subject_id"], list) and isinstance(batch["subject_id"][0], str)
    assert len(batch["subject_id"]) == size
    assert batch["z"].dtype == torch.int64 and batch["frame"].shape == (size,)


def check_images(batch: dict, keys: tuple[str, ...], shape: tuple[int, ...]) -> None:
    for key in keys:
        assert batch[key].shape == shape, key
        assert batch[key].dtype == torch.float32
        assert batch[key].min() >= 0.0 and batch[key].max() <= 1.0
        assert batch[key].std() > 0.05, f"{key} looks empty"


@pytest.mark.parametrize("split", ["train", "val"])
def test_slice_batches(subjects, tmp_path, split):
    dm = make_dm(subjects, tmp_path, task="slice")
    dm.setup("fit")
    batch = first_batch(dm.train_dataloader() if split == "train" else dm.val_dataloader())
    check_common(batch, 4)
    check_images(batch, ("image",), (4, 1, 16, 16))


@pytest.mark.parametrize("augment", [False, True])
def test_spatial_batches(subjects, tmp_path, augment):
    dm = make_dm(subjects, tmp_path, task="spatial", gap_factor=3, train_factors=[2, 3, 4], augment=augment)
    dm.setup("fit")
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        batch = first_batch(loader)
        check_common(batch, 4)
        check_images(batch, ("below", "target", "above"), (4, 1, 16, 16))
        assert batch["r"].shape == (4,) and batch["r"].dtype == torch.float32
        assert torch.all((batch["r"] > 0) & (batch["r"] < 1))


def test_eval_items_are_the_heldout_slices(subjects, tmp_path):
    dm = make_dm(subjects, tmp_path, task="spatial", gap_factor=3, heldout_seed=5, frames="ed_es")
    dm.setup("fit")
    dataset = dm.val_dataloader().dataset
    for index, example in enumerate(dm.examples("val")):
        kept, heldout = heldout_plan(12, 3, 5, example.subject_id)
        plan = dm.heldout(example.subject_id)
        assert np.array_equal(plan[0], kept) and np.array_equal(plan[1], heldout)
        assert example.below in kept and example.above in kept and example.target in heldout
        assert example.frame in (0, 3)
        item = dataset[index]
        image = dm.prepared_subject(example.subject_id).image
        assert torch.equal(item["below"][0], torch.from_numpy(image[example.below, example.frame]))
        assert torch.equal(item["target"][0], torch.from_numpy(image[example.target, example.frame]))
        assert torch.equal(item["above"][0], torch.from_numpy(image[example.above, example.frame]))
        assert item["r"] == pytest.approx(example.r)
        dz = dm.prepared_subject(example.subject_id).spacing[2]
        assert item["gap_mm"] == pytest.approx(example.k * dz) and item["k"] == 3  # 3 slices apart, in mm


def test_eval_examples_and_splits_are_fixed_across_setups(subjects, tmp_path):
    first, second = (make_dm(subjects, tmp_path, task="spatial", max_eval_examples=5) for _ in range(2))
    for dm in (first, second):
        dm.setup("fit")
    splits = {name: first.subjects(name) for name in ("train", "val", "test")}
    assert splits == {name: second.subjects(name) for name in ("train", "val", "test")}
    assert sorted(s for members in splits.values() for s in members) == [s.subject_id for s in subjects]
    assert all(splits.values())
    assert first.examples("val") == second.examples("val") and len(first.examples("val")) == 5
    a, b = first_batch(first.val_dataloader()), first_batch(second.val_dataloader())
    assert torch.equal(a["target"], b["target"]) and a["subject_id"] == b["subject_id"]


def test_train_batches_are_reproducible_by_seed(subjects, tmp_path):
    dm = make_dm(subjects, tmp_path, task="spatial", gap_factor=2, train_factors=[2, 3], augment=True)
    dm.setup("fit")

    def batch(seed: int) -> dict:
        torch.manual_seed(seed)
        return first_batch(dm.train_dataloader())

    a, b, c = batch(0), batch(0), batch(1)
    assert torch.equal(a["target"], b["target"]) and torch.equal(a["r"], b["r"])
    assert not torch.equal(a["target"], c["target"])


@pytest.mark.parametrize(("num_frames", "real", "padded"), [(None, 6, 8), (4, 4, 8), (20, 6, 8)])
def test_cine_batches_pad_time_by_wrapping(subjects, tmp_path, num_frames, real, padded):
    dm = make_dm(subjects, tmp_path, task="cine", gap_factor=3, num_frames=num_frames, batch_size=2)
    dm.setup("fit")
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        batch = first_batch(loader)
        check_images(batch, ("below", "target", "above"), (2, 1, padded, 16, 16))
        assert batch["frames"].tolist() == [real, real]
        target = batch["target"][:, 0]
        assert torch.equal(target[:, real:], target[:, : padded - real]), "padding wraps to the cycle start"
        assert not torch.equal(target[:, 0], target[:, 1]), "real frames differ (the heart moves)"


def test_dense_stack_is_used_when_present(tmp_path):
    subjects = [make_subject(f"d{i}", seed=i, dense_factor=4) for i in range(3)]
    dm = make_dm(subjects, tmp_path, task="spatial", gap_factor=4)
    dm.setup("fit")
    assert dm.prepared_subject("d0").num_slices == 45 and dm.prepared_subject("d0").dense
    assert all(e.k == 4 for e in dm.examples("val"))
    acquired = make_dm(subjects, tmp_path, task="spatial", gap_factor=4, stack="acquired")
    acquired.setup("fit")
    assert acquired.prepared_subject("d0").num_slices == 12 and not acquired.prepared_subject("d0").dense


def test_too_few_subjects_and_bad_settings_fail_clearly(subjects, tmp_path):
    with pytest.raises(ValueError, match="need >= 3 subjects"):
        make_dm(subjects[:2], tmp_path).setup("fit")
    with pytest.raises(DataError, match=r"/memory/s00: .*needs >= 13 slices.*data\.gap_factor is 12"):
        make_dm(subjects, tmp_path, gap_factor=12).setup("fit")
    with pytest.raises(ValueError, match=r"data\.train_factors must all be >= 2"):
        CardiacDataModule(train_factors=[1, 2])
    with pytest.raises(ValueError, match=r"data\.task must be one of"):
        CardiacDataModule(task="volume")
    with pytest.raises(ValueError, match=r"data\.stack must be one of"):
        CardiacDataModule(stack="sparse")


def test_lenient_skips_bad_subjects(subjects, tmp_path):
    reader = MemoryReader(subjects, broken=("s03",))
    with pytest.raises(DataError, match=r"s03_4d\.nii\.gz: NaN voxels"):
        make_dm(subjects, tmp_path, reader=reader).setup("fit")
    dm = make_dm(subjects, tmp_path, reader=MemoryReader(subjects, broken=("s03",)), lenient=True)
    dm.setup("fit")
    remaining = [s for name in ("train", "val", "test") for s in dm.subjects(name)]
    assert "s03" not in remaining and len(remaining) == 5


def test_disk_cache_serves_prepared_subjects(subjects, tmp_path):
    make_dm(subjects, tmp_path, cache_dir=str(tmp_path / "cache")).setup("fit")
    written = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert len(written) == len(subjects) and all(p.suffix == ".pkl" for p in written)
    reader = MemoryReader(subjects)
    dm = make_dm(subjects, tmp_path, cache_dir=str(tmp_path / "cache"), reader=reader)
    dm.setup("fit")
    first_batch(dm.val_dataloader())
    assert reader.reads == 0
    other = MemoryReader(subjects)
    make_dm(subjects, tmp_path, cache_dir=str(tmp_path / "cache"), crop_size=24, reader=other).setup("fit")
    assert other.reads == len(subjects), "other preprocessing settings must not reuse the cache"


def test_heart_centred_crop_puts_label_centroid_at_centre():
    subject = make_subject("c", shape=(48, 40, 4, 4), center=(12, 27))
    prepared = prepare_subject(subject, dense=False, crop_size=24)
    lv = prepared.labels[:, 0] == 1
    xs, ys = np.nonzero(lv.any(axis=0))
    assert abs(xs.mean() - 12) <= 0.5 and abs(ys.mean() - 12) <= 0.5
    assert prepared.image.shape == (4, 4, 24, 24) and prepared.image.dtype == np.float32
    assert prepared.image.min() >= 0 and prepared.image.max() <= 1


def test_crop_pads_at_the_border_and_resampling_changes_size():
    subject = make_subject("b", shape=(40, 36, 3, 4), center=(4, 30))
    prepared = prepare_subject(subject, dense=False, crop_size=32)
    assert prepared.crop_origin[0] < 0 and prepared.image.shape[2:] == (32, 32)
    resampled = prepare_subject(subject, dense=False, crop_size=32, pixel_spacing=3.0)
    assert resampled.spacing[:2] == (3.0, 3.0) and resampled.spacing[2] == 10.0
    lv = resampled.labels[:, 0] == 1
    assert lv.sum() < (prepared.labels[:, 0] == 1).sum() / 2, "3 mm pixels hold fewer label voxels"


def test_temporal_std_centring_finds_the_moving_blob():
    subject = make_subject("m", shape=(64, 64, 3, 8), center=(40, 15), labels=False)
    cx, cy = motion_center(subject.image)
    assert abs(cx - 40) < 1.5 and abs(cy - 15) < 1.5
    prepared = prepare_subject(subject, dense=False, crop_size=32)
    assert prepared.meta["center"] == (cx, cy)


def test_augmentation_applies_one_transform_to_the_whole_slab():
    slice_ = torch.rand(1, 20, 20, 1)
    slab = slice_.repeat(3, 1, 1, 5)
    transform = tio.Compose(
        [tio.RandomAffine(scales=0, degrees=(0, 0, 0, 0, -30, 30)), tio.RandomNoise(std=0)]
    )
    out = augment_slab(slab, transform, seed=3)
    assert not torch.allclose(out, slab)
    assert all(torch.equal(out[..., 0], out[..., d]) for d in range(5))
    assert torch.equal(out, augment_slab(slab, transform, seed=3))
    flipped = augment_slab(slab, tio.RandomFlip(axes=(0,), flip_probability=1.0), seed=0)
    assert torch.equal(flipped, torch.flip(slab, dims=(1,)))


def test_builder_flips_below_target_and_above_together(subjects):
    prepared = prepare_subject(subjects[0], dense=False, crop_size=16)
    builder = ExampleBuilder("spatial", transform=tio.RandomFlip(axes=(1,), flip_probability=1.0))
    item = builder(prepared, Example("s00", z0=2, k=4, j=1, frame=1), seed=0)
    for key, z in (("below", 2), ("target", 3), ("above", 6)):
        assert torch.equal(item[key][0], torch.from_numpy(prepared.image[z, 1]).flip(1))


def test_default_augmentation_stays_in_unit_range():
    transform = build_augmentation(flip=True, artefact_p=1.0)
    slab = torch.rand(4, 16, 16, 3)
    original = slab.clone()
    outputs = [augment_slab(slab, transform, seed=s) for s in range(4)]
    assert torch.equal(slab, original), "the cached subject must never change"
    assert all(o.shape == slab.shape and o.min() >= 0 and o.max() <= 1 for o in outputs)
    assert not torch.equal(outputs[0], outputs[1])


def test_blur_is_optional_and_in_plane_only():
    assert not any(isinstance(t, tio.RandomBlur) for t in build_augmentation().transforms)
    transforms = build_augmentation(blur_std_px=1.5, blur_p=1.0).transforms
    blur = next(t for t in transforms if isinstance(t, tio.RandomBlur))
    slab = torch.zeros(1, 15, 15, 3)
    slab[0, 7, 7, 1] = 1.0  # a point in the middle slice of the slab
    out = augment_slab(slab, blur, seed=0)
    assert out[..., 0].abs().max() == 0 and out[..., 2].abs().max() == 0, "no blur across slices"
    assert out[0, 7, 7, 1] < 1 and out[0, 6, 7, 1] > 0 and out[0, 7, 6, 1] > 0, "blurred in-plane"
    assert out.sum() == pytest.approx(1.0, abs=1e-3)


def test_dataloader_with_two_workers(subjects, tmp_path):
    dm = make_dm(
        subjects, tmp_path, task="spatial", gap_factor=3, num_workers=2, batch_size=2, samples_per_epoch=4
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.persistent_workers
    batches = list(loader)
    assert len(batches) == 2 and all(b["target"].shape == (2, 1, 16, 16) for b in batches)
    assert not torch.equal(batches[0]["target"], batches[1]["target"])


BORING = "lightning.pytorch.demos.boring_classes.BoringModel"
EXPERIMENT = f"""
seed_everything: 0
model:
  class_path: {BORING}
trainer:
  logger: false
  enable_checkpointing: false
data:
  class_path: calid_lightning.data.datamodule.CardiacDataModule
  init_args:
    task: slice
    crop_size: 32
    batch_size: 8
"""
DATA_CONFIGS = sorted(Path(__file__).parents[2].joinpath("data_modules").glob("*.yaml"))


def test_all_data_configs_instantiate():
    assert {p.stem for p in DATA_CONFIGS} == {"phantom", "acdc", "mnms", "ukbb", "nifti_folder"}
    for config in DATA_CONFIGS:
        dm = parse_cli(
            [str(config)],
            ("--model=lightning.pytorch.demos.boring_classes.BoringModel", "--trainer.logger=false"),
        )
        assert isinstance(dm, CardiacDataModule)
        assert dm.hparams.layout == config.stem


@pytest.mark.parametrize("experiment_first", [True, False])
def test_experiment_and_data_configs_merge(tmp_path, experiment_first):
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text(EXPERIMENT)
    data = str(DATA_CONFIGS[[p.stem for p in DATA_CONFIGS].index("acdc")])
    configs = [str(experiment), data] if experiment_first else [data, str(experiment)]
    dm = parse_cli(configs, ("--data.init_args.batch_size=4",))
    assert (dm.hparams.task, dm.hparams.crop_size, dm.hparams.batch_size) == ("slice", 32, 4)
    assert (dm.hparams.layout, dm.hparams.stack, dm.hparams.gap_factor) == ("acdc", "acquired", 2)
    assert dm.hparams.pixel_spacing == 1.5 and dm.hparams.root == "data/ACDC/database/training"


def test_phantom_end_to_end(tmp_path):
    phantom = {"subjects": 3, "seed": 0, "size": [48, 48], "frames": 6}
    root = tmp_path / "phantom"
    dm = CardiacDataModule(root=str(root), phantom=phantom, task="spatial", crop_size=32, batch_size=2)
    dm.prepare_data()
    dm.setup("fit")
    assert len(list(root.glob("patient*/patient*_dense_4d.nii.gz"))) == 3
    assert [len(dm.subjects(s)) for s in ("train", "val", "test")] == [1, 1, 1]
    prepared = dm.prepared_subject(dm.subjects("val")[0])
    assert prepared.dense and prepared.num_slices > 12
    cavities = np.isin(prepared.labels[:, prepared.ed_frame], (1, 3))
    xs, ys = np.nonzero(cavities.any(axis=0))
    assert abs(np.average(xs) - 16) < 6 and abs(np.average(ys) - 16) < 6, "the heart is near the crop centre"
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        check_images(first_batch(loader), ("below", "target", "above"), (2, 1, 32, 32))
    cine = CardiacDataModule(
        root=str(root), task="cine", crop_size=32, batch_size=1, stack="acquired", gap_factor=2
    )
    cine.setup("fit")
    batch = first_batch(cine.val_dataloader())
    check_images(batch, ("below", "target", "above"), (1, 1, 8, 32, 32))
    assert batch["frames"].tolist() == [6]
