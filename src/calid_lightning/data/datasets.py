"""Map-style torch Datasets for the four tasks, over subjects prepared lazily and cached per worker.

Tasks and their items (intensities float32 in [0, 1]):

- ``"slice"`` (VAE): ``image`` ``(1, H, W)``.
- ``"spatial"`` (CaLID): ``below``, ``above``, ``target`` ``(1, H, W)`` and ``r`` (float).
- ``"cine"`` (2D+T): the same keys with ``(1, T, H, W)`` cines, plus ``frames`` (real frames before padding)
  and ``frame_indices`` ``(T,)`` (the frames of the subject the cine holds, padding included).
- ``"segment"`` (downstream segmenter): ``image`` ``(1, H, W)`` and ``label`` ``(H, W)`` int64 in the internal
  convention, at labelled frames only (see :func:`labelled_frames`).

Every item also carries ``subject_id``, ``z`` (target slice) and ``frame``; spatial and cine items carry
``k`` (the gap in slices), ``gap_mm`` (the same gap in mm: ``k`` x the stack's slice spacing) and
``z_below`` / ``z_above`` (the neighbour slices), so a model can look their
latents up in a cache instead of encoding the images. Map-style, so Lightning's DistributedSampler shards
them under DDP.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchio as tio
from torch import Tensor
from torch.utils.data import Dataset

from calid_lightning.data.augment import augment_slab, single_thread
from calid_lightning.data.preprocess import PreparedSubject
from calid_lightning.data.sampling import Example, cine_frame_indices, sample_train_example, stable_int
from calid_lightning.io_safety import atomic_write_bytes

TASKS = ("slice", "spatial", "cine", "segment")


class SubjectStore:
    """Prepared subjects by id: an in-memory LRU per process (worker), optionally backed by a disk cache.

    ``load`` turns a subject id into a :class:`PreparedSubject`; ``cache_key`` names the preprocessing
    settings so a disk cache never serves subjects prepared differently. The memory cache is not pickled,
    so each DataLoader worker starts empty and fills its own.
    """

    def __init__(
        self,
        load: Callable[[str], PreparedSubject],
        max_items: int = 32,
        cache_dir: str | Path | None = None,
        cache_key: dict[str, Any] | None = None,
    ) -> None:
        self.load = load
        self.max_items = max_items
        self.disk: Path | None = None
        if cache_dir is not None:
            digest = hashlib.sha256(json.dumps(cache_key or {}, sort_keys=True, default=str).encode())
            self.disk = Path(cache_dir) / digest.hexdigest()[:16]
        self._memory: OrderedDict[str, PreparedSubject] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_memory": OrderedDict()}

    def get(self, subject_id: str) -> PreparedSubject:
        """The prepared subject, from memory, then disk, then ``load``."""
        if subject_id in self._memory:
            self._memory.move_to_end(subject_id)
            return self._memory[subject_id]
        prepared = self._read_disk(subject_id)
        if prepared is None:
            prepared = self.load(subject_id)
            self._write_disk(subject_id, prepared)
        self._memory[subject_id] = prepared
        while len(self._memory) > self.max_items:
            self._memory.popitem(last=False)
        return prepared

    def _path(self, subject_id: str) -> Path | None:
        return None if self.disk is None else self.disk / f"{subject_id}.pkl"

    def _read_disk(self, subject_id: str) -> PreparedSubject | None:
        path = self._path(subject_id)
        if path is None or not path.is_file():
            return None
        with path.open("rb") as handle:
            return pickle.load(handle)

    def _write_disk(self, subject_id: str, prepared: PreparedSubject) -> None:
        path = self._path(subject_id)
        if path is None:
            return
        atomic_write_bytes(path, pickle.dumps(prepared, protocol=pickle.HIGHEST_PROTOCOL))


def task_frames(prepared: PreparedSubject, frames: str) -> list[int]:
    """The frames a slice/spatial example may use: ``"all"`` or ``"ed_es"``."""
    if frames == "all":
        return list(range(prepared.num_frames))
    if frames == "ed_es":
        return sorted({prepared.ed_frame, prepared.es_frame})
    raise ValueError(f"frames must be 'all' or 'ed_es', got {frames!r}")


def labelled_frames(prepared: PreparedSubject) -> list[int]:
    """Frames whose label maps are real: every frame of a labelled dense stack (the phantom's dense truth
    labels the whole cycle), otherwise the reader's ``labelled_frames`` (ED and ES for ACDC / M&Ms)."""
    if prepared.labels is None:
        return []
    if prepared.dense:
        return list(range(prepared.num_frames))
    return sorted(set(prepared.labelled_frames))


def segment_frames(prepared: PreparedSubject, frames: str) -> list[int]:
    """The frames a segment example may use: :func:`task_frames` restricted to :func:`labelled_frames`."""
    labelled = set(labelled_frames(prepared))
    return [f for f in task_frames(prepared, frames) if f in labelled]


class ExampleBuilder:
    """Turns an :class:`Example` of a prepared subject into a batch item of one task.

    ``num_frames`` subsamples cines over the cycle and ``time_multiple`` pads them (wrapping) for 3D U-Nets.
    ``transform`` (TorchIO, training only) is applied to the whole slab ``z0 .. z0 + k`` at once.
    """

    def __init__(
        self,
        task: str,
        num_frames: int | None = None,
        time_multiple: int = 8,
        transform: tio.Transform | None = None,
    ) -> None:
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        self.task = task
        self.num_frames = num_frames
        self.time_multiple = time_multiple
        self.transform = transform

    def __call__(self, prepared: PreparedSubject, example: Example, seed: int = 0) -> dict[str, Any]:
        item: dict[str, Any] = {
            "subject_id": prepared.subject_id,
            "z": example.target,
            "frame": example.frame,
        }
        if self.task == "slice":
            slab = torch.from_numpy(prepared.image[example.target, example.frame])[None, :, :, None]
            item["image"] = self._augment(slab, seed)[..., 0]
            return item
        if self.task == "segment":
            return {**item, **self._segment_item(prepared, example, seed)}
        if self.task == "spatial":
            block = prepared.image[example.below : example.above + 1, example.frame]
            slab = self._augment(torch.from_numpy(np.moveaxis(block, 0, -1))[None], seed)
        else:
            indices, real = cine_frame_indices(
                prepared.num_frames, self.num_frames, self.time_multiple, example.frame
            )
            block = prepared.image[example.below : example.above + 1][:, indices[:real]]
            slab = self._augment(torch.from_numpy(np.moveaxis(block, 0, -1)), seed)
            slab = slab[[i % real for i in range(len(indices))]][None]
            item["frames"] = real
            item["frame_indices"] = torch.tensor(indices)
        item.update(
            below=slab[..., 0].contiguous(),
            target=slab[..., example.j].contiguous(),
            above=slab[..., example.k].contiguous(),
            r=torch.tensor(example.r, dtype=torch.float32),
            k=example.k,
            gap_mm=torch.tensor(example.k * prepared.spacing[2], dtype=torch.float32),
            z_below=example.below,
            z_above=example.above,
        )
        return item

    def _segment_item(self, prepared: PreparedSubject, example: Example, seed: int) -> dict[str, Tensor]:
        """``image`` ``(1, H, W)`` and ``label`` ``(H, W)``; spatial transforms move both (labels nearest)."""
        if prepared.labels is None:
            raise ValueError(f"subject {prepared.subject_id!r} has no labels; the segment task needs them")
        image = torch.from_numpy(prepared.image[example.target, example.frame])[None, :, :, None]
        label = torch.from_numpy(prepared.labels[example.target, example.frame])[None, :, :, None]
        if self.transform is None:
            return {"image": image[..., 0].to(torch.float32, copy=True), "label": label[0, ..., 0].long()}
        with torch.random.fork_rng(devices=[]), single_thread():
            torch.manual_seed(seed)
            subject = tio.Subject(
                image=tio.ScalarImage(tensor=image.to(torch.float32, copy=True)),
                label=tio.LabelMap(tensor=label.to(torch.int64, copy=True)),
            )
            out = self.transform(subject)
        image, label = out["image"].data, out["label"].data
        return {"image": image[..., 0].clamp_(0.0, 1.0), "label": label[0, ..., 0].long()}

    def _augment(self, slab: torch.Tensor, seed: int) -> torch.Tensor:
        """The transformed slab, or a copy (items never share memory with the subject cache)."""
        if self.transform is None:
            return slab.to(torch.float32, copy=True)
        return augment_slab(slab, self.transform, seed)


class EvalDataset(Dataset):
    """The fixed held-out examples of validation or test subjects."""

    def __init__(self, store: SubjectStore, examples: Sequence[Example], builder: ExampleBuilder) -> None:
        self.store = store
        self.examples = list(examples)
        self.builder = builder

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        example = self.examples[index]
        return self.builder(self.store.get(example.subject_id), example)


class TrainDataset(Dataset):
    """``length`` random examples per epoch from the training subjects.

    Each item's randomness comes from one draw of the process's torch RNG mixed with the index: new examples
    every epoch, reproducible under ``seed_everything(workers=True)``, and distinct across DDP ranks.
    ``factors`` are the gap factors to train on; ``frames`` is ``"all"`` or ``"ed_es"`` (all but cine).
    """

    def __init__(
        self,
        store: SubjectStore,
        subject_ids: Sequence[str],
        builder: ExampleBuilder,
        length: int,
        factors: Sequence[int],
        frames: str = "all",
    ) -> None:
        if not subject_ids:
            raise ValueError("the training split has no subjects")
        self.store = store
        self.subject_ids = list(subject_ids)
        self.builder = builder
        self.length = length
        self.factors = list(factors)
        self.frames = frames

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        draw = int(torch.randint(0, 2**62, ()).item())
        rng = np.random.default_rng([draw, index])
        prepared = self.store.get(self.subject_ids[int(rng.integers(len(self.subject_ids)))])
        if self.builder.task in ("slice", "segment"):
            choices = task_frames if self.builder.task == "slice" else segment_frames
            frame = int(rng.choice(choices(prepared, self.frames)))
            example = Example(prepared.subject_id, int(rng.integers(prepared.num_slices)), 1, 0, frame)
        else:
            frames = range(prepared.num_frames) if self.builder.task == "cine" else None
            example = sample_train_example(
                prepared.subject_id,
                prepared.num_slices,
                self.factors,
                list(frames) if frames is not None else task_frames(prepared, self.frames),
                rng,
            )
        return self.builder(prepared, example, seed=stable_int("augment", draw, index))
