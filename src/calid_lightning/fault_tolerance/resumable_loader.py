"""Mid-epoch resume: :class:`ResumableDataLoader` lets Lightning resume a map-style training DataLoader inside
an epoch (a plain one restarts the epoch's sampler at index 0), so a resume from a periodic checkpoint inside
an epoch sees the batches of the uninterrupted run too (with ``num_workers=0``; worker processes have RNG
states of their own).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from typing import Any

from torch.utils.data import DataLoader


class _SkipFirst:
    """An index sampler whose first iteration leaves out its first ``skip`` entries (later ones are whole)."""

    def __init__(self, sampler: Any, skip: int) -> None:
        self.sampler, self.skip = sampler, skip

    def __iter__(self) -> Iterator[Any]:
        skip, self.skip = self.skip, 0
        return itertools.islice(iter(self.sampler), skip, None)

    def __len__(self) -> int:
        return max(len(self.sampler) - self.skip, 0)


class _Counted:
    """An iterator that counts the batches it hands out in ``loader._served``."""

    def __init__(self, iterator: Iterator[Any], loader: ResumableDataLoader) -> None:
        self.iterator, self.loader = iterator, loader

    def __iter__(self) -> _Counted:
        return self

    def __next__(self) -> Any:
        batch = next(self.iterator)
        self.loader._served += 1
        return batch


class ResumableDataLoader(DataLoader):
    """A map-style DataLoader that Lightning resumes mid-epoch: it continues after the batches already served.

    Lightning saves the ``state_dict`` of a training DataLoader that has one (the batches served in the
    current epoch) and, on resume, loads it before building the iterator; the next iterator then skips that
    many batches of indices without loading them. A plain DataLoader restarts the epoch's sampler at index 0
    instead. With :class:`.rng_state.RNGStateCheckpoint`, ``num_workers=0`` and a dataset whose randomness
    comes from the global torch RNG (``TrainDataset``), a mid-epoch resume then sees the batches of the
    uninterrupted run.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._served = 0
        self._resume_at = 0

    @property
    def _index_sampler(self) -> Any:
        base = DataLoader._index_sampler.fget(self)  # type: ignore[attr-defined]
        if not self._resume_at:
            return base
        skip, self._resume_at = self._resume_at, 0
        return _SkipFirst(base, skip)

    def __len__(self) -> int:
        return len(DataLoader._index_sampler.fget(self))  # type: ignore[attr-defined]

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        self._served = self._resume_at
        return _Counted(super().__iter__(), self)  # built now: its base-seed draw happens here, as usual

    def state_dict(self) -> dict[str, int]:
        """The batches served so far in the current epoch."""
        return {"batches_served": self._served}

    def load_state_dict(self, state_dict: Mapping[str, int]) -> None:
        """Make the next iterator start after ``batches_served`` batches."""
        self._resume_at = int(state_dict.get("batches_served", 0))
