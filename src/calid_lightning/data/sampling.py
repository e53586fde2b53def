"""Sparse-to-dense sampling: which slices are kept, which are held out, and the examples drawn from them.

Pure functions over slice and frame counts, so evaluation, the whole-volume upsampler and the datasets share
one definition of the held-out positions. A subject's plan keeps every ``factor``-th slice from an offset
fixed by ``(seed, subject_id)``; the held-out targets are the dropped slices between the first and last kept.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Example:
    """One interpolation example: the target at ``z0 + j`` between known slices at ``z0`` and ``z0 + k``.

    ``frame`` is the cardiac frame (the start frame of a cine for the 2D+T task).
    """

    subject_id: str
    z0: int
    k: int
    j: int
    frame: int = 0

    @property
    def below(self) -> int:
        return self.z0

    @property
    def above(self) -> int:
        return self.z0 + self.k

    @property
    def target(self) -> int:
        return self.z0 + self.j

    @property
    def r(self) -> float:
        """Relative position of the target between ``below`` (0) and ``above`` (1)."""
        return self.j / self.k


def stable_int(*parts: object) -> int:
    """A 63-bit integer determined by ``parts`` alone (unlike ``hash()``, stable across processes)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def heldout_plan(num_slices: int, factor: int, seed: int, subject_id: str) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(kept, heldout)`` slice indices of a subject's sparse stack at gap ``factor``.

    ``kept = offset + factor * j`` with ``offset`` in ``[0, factor)`` fixed by ``(seed, subject_id)`` and
    restricted so that at least two slices are kept; ``heldout`` is every other index strictly between the
    first and last kept slice. Raises ``ValueError`` when the stack is too short for two kept slices.
    """
    if factor < 2:
        raise ValueError(f"gap factor must be >= 2 (one slice held out between kept ones), got {factor}")
    if num_slices < factor + 1:
        raise ValueError(
            f"subject {subject_id!r}: {num_slices} slices cannot keep 2 slices at gap factor {factor} "
            f"(needs >= {factor + 1} slices); lower the gap factor or use the dense stack"
        )
    offset = stable_int("heldout", seed, subject_id, factor) % min(factor, num_slices - factor)
    kept = np.arange(offset, num_slices, factor)
    between = np.arange(kept[0], kept[-1] + 1)
    heldout = np.setdiff1d(between, kept)
    return kept, heldout


def bracket(kept: np.ndarray, z: int) -> tuple[int, int]:
    """The nearest kept slices strictly below and above ``z`` (``z`` must lie between two kept slices)."""
    below = kept[kept < z]
    above = kept[kept > z]
    if below.size == 0 or above.size == 0:
        raise ValueError(f"slice {z} is not between two kept slices {kept.tolist()}")
    return int(below[-1]), int(above[0])


def eval_examples(
    subject_id: str, num_slices: int, factor: int, seed: int, frames: Sequence[int] = (0,)
) -> list[Example]:
    """Every held-out target of a subject with its bracketing kept slices, for each frame in ``frames``."""
    kept, heldout = heldout_plan(num_slices, factor, seed, subject_id)
    examples = []
    for z in heldout.tolist():
        below, above = bracket(kept, z)
        examples += [Example(subject_id, below, above - below, z - below, int(f)) for f in frames]
    return examples


def usable_factors(num_slices: int, factors: Sequence[int]) -> list[int]:
    """The gap factors (>= 2) that fit a stack of ``num_slices`` slices."""
    return [k for k in factors if 2 <= k <= num_slices - 1]


def sample_train_example(
    subject_id: str, num_slices: int, factors: Sequence[int], frames: Sequence[int], rng: np.random.Generator
) -> Example:
    """A random example: gap ``k`` from ``factors``, ``z0`` anywhere it fits, ``j`` in ``1..k-1``, a frame.

    Raises ``ValueError`` when no factor fits the stack.
    """
    fitting = usable_factors(num_slices, factors)
    if not fitting:
        raise ValueError(
            f"subject {subject_id!r}: none of the train factors {list(factors)} fits {num_slices} slices"
        )
    k = int(rng.choice(fitting))
    z0 = int(rng.integers(0, num_slices - k))
    j = int(rng.integers(1, k))
    return Example(subject_id, z0, k, j, int(rng.choice(np.asarray(frames))))


def cine_frame_indices(
    num_frames: int, count: int | None, multiple: int, start: int = 0
) -> tuple[list[int], int]:
    """Frame indices of a cine subsampled to ``count`` frames over the whole cycle, padded to ``multiple``.

    The cycle is periodic, so padding wraps around to the first chosen frames. Returns ``(indices, real)``
    where ``real`` is the number of frames before padding.
    """
    real = num_frames if count is None else min(count, num_frames)
    chosen = [(start + (i * num_frames) // real) % num_frames for i in range(real)]
    padded = -(-real // multiple) * multiple
    return [chosen[i % real] for i in range(padded)], real


def cap_examples(examples: list[Example], limit: int | None) -> list[Example]:
    """At most ``limit`` examples, evenly spread over the ordered list so every subject stays in."""
    if limit is None or len(examples) <= limit:
        return examples
    picks = np.unique(np.linspace(0, len(examples) - 1, limit).round().astype(int))
    return [examples[i] for i in picks]


def split_subjects(subject_ids: Sequence[str], fractions: Sequence[float], seed: int) -> dict[str, list[str]]:
    """Deterministic, disjoint subject-level ``train`` / ``val`` / ``test`` splits, each non-empty.

    Shuffles the sorted ids with ``seed``; val and test get ``round(fraction * n)`` subjects (at least one),
    train the rest. Raises ``ValueError`` with fewer than 3 subjects or bad fractions.
    """
    ids = sorted(subject_ids)
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(f"split must be 3 non-negative fractions [train, val, test], got {list(fractions)}")
    if len(ids) < 3:
        raise ValueError(f"need >= 3 subjects for train/val/test splits, found {len(ids)}: {ids}")
    total = float(sum(fractions))
    n_val = max(1, round(len(ids) * fractions[1] / total))
    n_test = max(1, round(len(ids) * fractions[2] / total))
    while n_val + n_test > len(ids) - 1:
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    order = np.random.default_rng(seed).permutation(len(ids))
    shuffled = [ids[i] for i in order]
    return {
        "val": sorted(shuffled[:n_val]),
        "test": sorted(shuffled[n_val : n_val + n_test]),
        "train": sorted(shuffled[n_val + n_test :]),
    }
