"""Held-out plans, example enumeration, splits and cine frame padding (pure functions)."""

import re

import numpy as np
import pytest

from calid_lightning.data.sampling import (
    cap_examples,
    cine_frame_indices,
    eval_examples,
    heldout_plan,
    sample_train_example,
    split_subjects,
    stable_int,
)


@pytest.mark.parametrize("num_slices", [5, 9, 10, 13, 40])
@pytest.mark.parametrize("factor", [2, 3, 4])
def test_heldout_plan_keeps_every_factor_th_slice(num_slices, factor):
    if num_slices < factor + 1:
        pytest.skip("too short")
    kept, heldout = heldout_plan(num_slices, factor, seed=0, subject_id="s1")
    assert len(kept) >= 2
    assert 0 <= kept[0] < factor
    assert np.all(np.diff(kept) == factor)
    assert kept[-1] < num_slices
    assert not set(kept) & set(heldout)
    assert set(kept) | set(heldout) == set(range(kept[0], kept[-1] + 1))


def test_heldout_plan_is_fixed_by_seed_and_subject():
    def offsets():
        return {(seed, sid): heldout_plan(40, 4, seed, sid)[0][0] for seed in range(5) for sid in "abc"}

    plans = offsets()
    assert plans == offsets()
    assert len(set(plans.values())) > 1, "the offset must vary with seed / subject"


def test_stable_int_does_not_depend_on_python_hash():
    assert stable_int("heldout", 0, "patient001", 4) == stable_int("heldout", 0, "patient001", 4)
    assert stable_int("heldout", 0, "patient001", 4) != stable_int("heldout", 1, "patient001", 4)


def test_heldout_plan_needs_two_kept_slices():
    with pytest.raises(ValueError, match="needs >= 5 slices"):
        heldout_plan(4, 4, 0, "short")
    with pytest.raises(ValueError, match="gap factor must be >= 2"):
        heldout_plan(10, 1, 0, "s")
    kept, _ = heldout_plan(5, 4, 3, "edge")
    assert kept.tolist() == [0, 4]


def test_eval_examples_bracket_heldout_targets_with_kept_slices():
    kept, heldout = heldout_plan(23, 3, 7, "p")
    examples = eval_examples("p", 23, 3, 7, frames=(0, 5))
    assert len(examples) == 2 * len(heldout)
    assert sorted({e.target for e in examples}) == heldout.tolist()
    for e in examples:
        assert e.below in kept and e.above in kept
        assert e.below not in heldout and e.above not in heldout
        assert e.below < e.target < e.above
        assert e.k == 3 and 0 < e.r < 1
        assert e.frame in (0, 5)


def test_train_examples_are_valid_and_deterministic_by_seed():
    def draw(seed):
        rng = np.random.default_rng(seed)
        return [sample_train_example("s", 12, [2, 3, 4, 20], [0, 3, 7], rng) for _ in range(200)]

    examples = draw(1)
    assert examples == draw(1)
    assert examples != draw(2)
    for e in examples:
        assert e.k in (2, 3, 4), "factor 20 does not fit 12 slices"
        assert e.below >= 0 and e.above <= 11
        assert 1 <= e.j <= e.k - 1 and 0 < e.r < 1
        assert e.frame in (0, 3, 7)
    assert {e.k for e in examples} == {2, 3, 4}
    with pytest.raises(ValueError, match="none of the train factors"):
        sample_train_example("s", 3, [4], [0], np.random.default_rng(0))


def test_splits_are_disjoint_stable_and_non_empty():
    ids = [f"patient{i:03d}" for i in range(20)]
    splits = split_subjects(ids, [0.7, 0.15, 0.15], seed=0)
    assert splits == split_subjects(list(reversed(ids)), [0.7, 0.15, 0.15], seed=0)
    assert splits != split_subjects(ids, [0.7, 0.15, 0.15], seed=1)
    assert sorted(s for members in splits.values() for s in members) == ids
    assert [len(splits[k]) for k in ("train", "val", "test")] == [14, 3, 3]
    small = split_subjects(["a", "b", "c"], [0.7, 0.15, 0.15], seed=0)
    assert all(len(v) == 1 for v in small.values())
    with pytest.raises(ValueError, match="need >= 3 subjects"):
        split_subjects(["a", "b"], [0.7, 0.15, 0.15], seed=0)


def test_cine_frames_cover_the_cycle_and_pad_by_wrapping():
    indices, real = cine_frame_indices(30, 10, 8)
    assert real == 10 and len(indices) == 16
    assert indices[:10] == [0, 3, 6, 9, 12, 15, 18, 21, 24, 27]
    assert indices[10:] == indices[:6]
    indices, real = cine_frame_indices(6, None, 8, start=4)
    assert real == 6 and indices == [4, 5, 0, 1, 2, 3, 4, 5]
    assert cine_frame_indices(8, 20, 8) == (list(range(8)), 8)


def test_cap_examples_is_deterministic_and_spread():
    examples = eval_examples("a", 40, 4, 0) + eval_examples("b", 40, 4, 0)
    capped = cap_examples(examples, 10)
    assert len(capped) == 10 and capped == cap_examples(examples, 10)
    assert {e.subject_id for e in capped} == {"a", "b"}
    assert cap_examples(examples, None) == examples


def test_stable_int_and_the_heldout_offsets_are_pinned() -> None:
    """The held-out slices decide every number of the results table: pin them for fixed seeds."""
    assert stable_int("heldout", 0, "patient001", 4) == 8412539487184770372
    assert stable_int("a", 1) == 6861350103018950465 and stable_int("a", 1) < 2**63
    kept = {s: heldout_plan(12, 4, 0, s)[0].tolist() for s in ("patient001", "patient002", "patient003")}
    assert kept == {"patient001": [0, 4, 8], "patient002": [1, 5, 9], "patient003": [2, 6, 10]}
    assert heldout_plan(12, 4, 1, "patient001")[0].tolist() == [1, 5, 9]
    assert heldout_plan(12, 3, 0, "patient001")[0].tolist() == [2, 5, 8, 11]


@pytest.mark.parametrize(
    ("n", "fractions", "sizes"),
    [
        (10, (0.6, 0.2, 0.2), (6, 2, 2)),
        (10, (0.8, 0.1, 0.1), (8, 1, 1)),
        (10, (0.4, 0.3, 0.3), (4, 3, 3)),
        (10, (3, 1, 1), (6, 2, 2)),  # weights, not fractions: divided by their sum
        (10, (1, 0, 1), (4, 1, 5)),  # at least one subject each
        (4, (0.0, 0.5, 0.5), (1, 1, 2)),  # train keeps one: val gives up a subject first on a tie
        (4, (0.0, 0.3, 0.7), (1, 1, 2)),
        (4, (0.0, 0.7, 0.3), (1, 2, 1)),
        (3, (0.0, 0.5, 0.5), (1, 1, 1)),
    ],
)
def test_split_sizes(n: int, fractions: tuple[float, ...], sizes: tuple[int, int, int]) -> None:
    splits = split_subjects([f"p{i:02d}" for i in range(n)], fractions, seed=0)
    assert (len(splits["train"]), len(splits["val"]), len(splits["test"])) == sizes


@pytest.mark.parametrize("fractions", [(0.5, -0.1, 0.6), (0, 0, 0), (0.5, 0.5)])
def test_split_rejects_bad_fractions_naming_them(fractions: tuple[float, ...]) -> None:
    expected = f"split must be 3 non-negative fractions [train, val, test], got {list(fractions)}"
    with pytest.raises(ValueError, match=re.escape(expected)):
        split_subjects(["a", "b", "c"], fractions, seed=0)
    with pytest.raises(
        ValueError, match=r"need >= 3 subjects for train/val/test splits, found 2: \['a', 'b'\]"
    ):
        split_subjects(["b", "a"], (0.6, 0.2, 0.2), seed=0)
