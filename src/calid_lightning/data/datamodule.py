"""``CardiacDataModule``: any supported data source as VAE, spatial, 2D+T or segmentation batches.

Subjects come from a reader (``layout``: phantom, acdc, mnms, ukbb, nifti_folder), are prepared once
(resampling, heart-centred crop, intensities in [0, 1]) and cached per worker (optionally on disk). Splits are
subject-level; validation and test use the fixed held-out slices of :func:`~.sampling.heldout_plan`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from calid_lightning.data.augment import build_augmentation
from calid_lightning.data.datasets import (
    TASKS,
    EvalDataset,
    ExampleBuilder,
    SubjectStore,
    TrainDataset,
    segment_frames,
    task_frames,
)
from calid_lightning.data.preprocess import (
    DEFAULT_PERCENTILES,
    PreparedSubject,
    check_percentiles,
    prepare_subject,
)
from calid_lightning.data.sampling import (
    Example,
    cap_examples,
    eval_examples,
    heldout_plan,
    split_subjects,
    usable_factors,
)
from calid_lightning.data.subject import CardiacSubject, DataError
from calid_lightning.distributed import eval_sampler
from calid_lightning.fault_tolerance import ResumableDataLoader

log = logging.getLogger(__name__)
STACKS = ("auto", "acquired", "dense")
SPLITS = ("train", "val", "test")
CACHE_VERSION = 2  # bump when preprocessing changes, so disk caches of older preparations are not reused


class SubjectLoader:
    """Reads a subject with the layout's reader and prepares the chosen stack (picklable for workers)."""

    def __init__(
        self,
        layout: str,
        root: str,
        reader_options: dict[str, Any],
        stack: str,
        crop_size: int,
        pixel_spacing: float | None,
        percentiles: tuple[float, float],
    ) -> None:
        self.layout = layout
        self.root = root
        self.reader_options = reader_options
        self.stack = stack
        self.crop_size = crop_size
        self.pixel_spacing = pixel_spacing
        self.percentiles = percentiles
        self._reader: Any = None

    @property
    def reader(self) -> Any:
        if self._reader is None:
            from calid_lightning.data.readers.registry import make_reader

            self._reader = make_reader(self.layout, self.root, **self.reader_options)
        return self._reader

    def read(self, subject_id: str) -> CardiacSubject:
        return self.reader.read(subject_id)

    def use_dense(self, subject: CardiacSubject) -> bool:
        """Whether the ``stack`` setting selects the subject's dense truth."""
        return self.stack == "dense" or (self.stack == "auto" and subject.dense_image is not None)

    def __call__(self, subject_id: str) -> PreparedSubject:
        subject = self.read(subject_id)
        return prepare_subject(
            subject, self.use_dense(subject), self.crop_size, self.pixel_spacing, self.percentiles
        )


class CardiacDataModule(LightningDataModule):
    """Cardiac cine data as batches for one ``task``: ``"slice"`` (VAE), ``"spatial"``, ``"cine"`` (2D+T) or
    ``"segment"`` (downstream segmenter).

    Args:
        layout: reader layout: phantom, acdc, mnms, ukbb or nifti_folder.
        root: data folder of that layout.
        task: "slice" (VAE), "spatial" (CaLID), "cine" (2D+T) or "segment" (slices with their labels, at
            labelled frames only: every frame of the phantom's dense truth, ED/ES of ACDC and M&Ms).
        reader_options: extra reader options (mnms: info_csv, include_unlabeled; nifti_folder: label_suffix,
            label_map).
        phantom: generate the phantom into root in prepare_data, e.g. {subjects: 20, seed: 0, size: [96, 96],
            frames: 25}; keys other than subjects/seed are PhantomConfig fields.
        stack: "acquired" slices, the phantom's "dense" truth, or "auto" (dense when present).
        gap_factor: val/test keep every gap_factor-th slice; the slices between are the held-out targets.
        train_factors: gaps sampled for training (default [gap_factor]).
        split: train/val/test fractions over subjects.
        split_seed: seed of the subject split.
        heldout_seed: seed of each subject's held-out offset.
        crop_size: in-plane size of the heart-centred crop (H = W).
        pixel_spacing: resample in-plane to this spacing in mm first (null: keep).
        num_frames: cine task: subsample the cycle to this many frames (null: all).
        time_multiple: cine task: pad time to a multiple of this by wrapping the cycle.
        frames: slice/spatial/segment tasks: frames to use, "all" or "ed_es".
        augment: TorchIO augmentation of training examples.
        augment_options: keyword arguments of build_augmentation (e.g. flip: true, artefact_p: 0.1).
        batch_size: examples per batch.
        num_workers: DataLoader workers (persistent when > 0).
        samples_per_epoch: random training examples per epoch.
        pin_memory: pin batches (null: when CUDA is available).
        cache_dir: keep prepared subjects on disk here (keyed by the preprocessing settings).
        cache_subjects: prepared subjects kept in memory per process.
        intensity_percentiles: subject percentiles mapped to 0 and 1 (over all voxels of the resampled
            stack). Saved in every checkpoint (``datamodule_hyper_parameters``), so ``calid upsample``
            normalises its input the same way.
        lenient: log and skip subjects whose files are bad instead of failing.
        max_eval_examples: cap on val/test examples (an even, deterministic subset).
    """

    def __init__(
        self,
        layout: str = "phantom",
        root: str = "data/phantom",
        task: str = "spatial",
        reader_options: dict | None = None,
        phantom: dict | None = None,
        stack: str = "auto",
        gap_factor: int = 4,
        train_factors: list[int] | None = None,
        split: Sequence[float] = (0.7, 0.15, 0.15),
        split_seed: int = 0,
        heldout_seed: int = 0,
        crop_size: int = 64,
        pixel_spacing: float | None = None,
        num_frames: int | None = None,
        time_multiple: int = 8,
        frames: str = "all",
        augment: bool = False,
        augment_options: dict[str, bool | float] | None = None,
        batch_size: int = 16,
        num_workers: int = 0,
        samples_per_epoch: int = 2048,
        pin_memory: bool | None = None,
        cache_dir: str | None = None,
        cache_subjects: int = 32,
        intensity_percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
        lenient: bool = False,
        max_eval_examples: int | None = None,
    ) -> None:
        super().__init__()
        self.prepare_data_per_node = False  # one writer of the phantom per job, not per node
        self.save_hyperparameters()
        if task not in TASKS:
            raise ValueError(f"data.task must be one of {TASKS}, got {task!r}")
        if stack not in STACKS:
            raise ValueError(f"data.stack must be one of {STACKS}, got {stack!r}")
        if frames not in ("all", "ed_es"):
            raise ValueError(f"data.frames must be 'all' or 'ed_es', got {frames!r}")
        if gap_factor < 2:
            raise ValueError(f"data.gap_factor must be >= 2, got {gap_factor}")
        self.task = task
        self.gap_factor = gap_factor
        self.train_factors = list(train_factors or [gap_factor])
        if any(k < 2 for k in self.train_factors):
            raise ValueError(f"data.train_factors must all be >= 2, got {self.train_factors}")
        self.split = list(split)
        self.heldout_seed = heldout_seed
        self.frames = frames
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.loader = SubjectLoader(
            layout,
            root,
            {"lenient": lenient, **(reader_options or {})},
            stack,
            crop_size,
            pixel_spacing,
            check_percentiles(intensity_percentiles),
        )
        cache_key = {k: v for k, v in self.hparams.items() if k in _CACHE_FIELDS}
        cache_key.update(root=str(Path(root).resolve()), version=CACHE_VERSION)
        self.store = SubjectStore(self.loader, cache_subjects, cache_dir, cache_key)
        self._splits: dict[str, list[str]] | None = None
        self._examples: dict[str, list[Example]] = {}

    def prepare_data(self) -> None:
        """Generate the phantom into ``root`` when ``phantom`` settings are given (the generator caches)."""
        if not self.hparams.phantom:
            return
        from calid_lightning.data.phantom import PhantomConfig, write_dataset

        options = dict(self.hparams.phantom)
        subjects, seed = int(options.pop("subjects", 20)), int(options.pop("seed", 0))
        write_dataset(Path(self.hparams.root), subjects=subjects, seed=seed, config=PhantomConfig(**options))

    def setup(self, stage: str | None = None) -> None:
        """Split subjects, prepare each once (errors surface here, not in a worker), list eval examples."""
        if self._splits is not None:
            return
        ids = list(self.loader.reader.list_subjects())
        if not ids:
            raise DataError(self.hparams.root, f"no subjects found for layout {self.hparams.layout!r}")
        usable = [s for s in ids if self._check(s)]
        self._splits = split_subjects(usable, self.split, self.hparams.split_seed)
        for name in ("val", "test"):
            examples = [e for s in self._splits[name] for e in self._subject_examples(s)]
            order = np.random.default_rng(self.heldout_seed).permutation(len(examples))
            shuffled = [examples[i] for i in order]  # any prefix (limit_val_batches) spans the subjects
            self._examples[name] = cap_examples(shuffled, self.hparams.max_eval_examples)

    def _check(self, subject_id: str) -> bool:
        """Prepare a subject once and check its stack fits the gaps; with ``lenient``, log and drop a bad one.

        Bad subjects are dropped before splitting, so every split keeps at least one subject.
        """
        try:
            prepared = self.store.get(subject_id)
            source = prepared.meta.get("source", subject_id)
            try:
                heldout_plan(prepared.num_slices, self.gap_factor, self.heldout_seed, subject_id)
            except ValueError as error:
                raise DataError(source, f"{error} (data.gap_factor is {self.gap_factor})") from error
            if self.task == "segment" and not segment_frames(prepared, self.frames):
                raise DataError(
                    source,
                    f"no labelled frames among data.frames={self.frames!r} (the segment task needs labels; "
                    "data.lenient: true skips such subjects)",
                )
            interpolates = self.task in ("spatial", "cine")
            if interpolates and not usable_factors(prepared.num_slices, self.train_factors):
                raise DataError(
                    source, f"{prepared.num_slices} slices: no data.train_factors {self.train_factors} fits"
                )
        except (DataError, ValueError) as error:
            if not self.hparams.lenient:
                raise
            log.warning("skipping subject %s: %s", subject_id, error)
            return False
        return True

    def _subject_examples(self, subject_id: str) -> list[Example]:
        prepared = self.store.get(subject_id)
        if self.task in ("slice", "segment"):
            frames = (task_frames if self.task == "slice" else segment_frames)(prepared, self.frames)
            return [Example(subject_id, z, 1, 0, f) for z in range(prepared.num_slices) for f in frames]
        frames = [prepared.ed_frame] if self.task == "cine" else task_frames(prepared, self.frames)
        return eval_examples(subject_id, prepared.num_slices, self.gap_factor, self.heldout_seed, frames)

    def subjects(self, split: str) -> list[str]:
        """Subject ids of ``split`` (``train``, ``val`` or ``test``)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.setup()
        assert self._splits is not None
        return list(self._splits[split])

    def examples(self, split: str) -> list[Example]:
        """The fixed evaluation examples of ``val`` or ``test``."""
        self.setup()
        return list(self._examples[split])

    def heldout(self, subject_id: str) -> tuple[np.ndarray, np.ndarray]:
        """``(kept, heldout)`` slice indices of the subject's stack as this DataModule uses it (``stack``)."""
        prepared = self.store.get(subject_id)
        return heldout_plan(prepared.num_slices, self.gap_factor, self.heldout_seed, subject_id)

    def load_subject(self, subject_id: str) -> CardiacSubject:
        """The raw subject record from the reader (no preprocessing)."""
        return self.loader.read(subject_id)

    def prepared_subject(self, subject_id: str) -> PreparedSubject:
        """The preprocessed subject as the datasets see it (cropped, [0, 1], ``(Z, T, H, W)``)."""
        return self.store.get(subject_id)

    def _builder(self, train: bool) -> ExampleBuilder:
        transform = None
        if train and self.hparams.augment:
            transform = build_augmentation(**(self.hparams.augment_options or {}))
        return ExampleBuilder(self.task, self.hparams.num_frames, self.hparams.time_multiple, transform)

    def _loader(
        self, dataset: Any, shuffle: bool, sampler: Any = None, loader: type[DataLoader] = DataLoader
    ) -> DataLoader:
        return loader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
        )

    def train_dataloader(self) -> DataLoader:
        dataset = TrainDataset(
            self.store,
            self.subjects("train"),
            self._builder(train=True),
            self.hparams.samples_per_epoch,
            self.train_factors,
            self.frames,
        )
        return self._loader(dataset, shuffle=False, loader=ResumableDataLoader)  # exact mid-epoch resume

    def _eval_loader(self, split: str) -> DataLoader:
        """The fixed examples of ``split``; under DDP each rank gets a disjoint share, none repeated.

        Lightning's default ``DistributedSampler`` would pad the last round with repeated examples, which
        the synced metrics would then count twice (see :mod:`calid_lightning.distributed`).
        """
        dataset = EvalDataset(self.store, self.examples(split), self._builder(False))
        return self._loader(dataset, shuffle=False, sampler=eval_sampler(dataset, self.trainer, split))

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")


_CACHE_FIELDS = (
    "layout",
    "reader_options",
    "phantom",
    "stack",
    "crop_size",
    "pixel_spacing",
    "intensity_percentiles",
)
